"""Every option of every config group composes, and the options that build objects build them."""

import hydra
import pytest
from conftest import CONFIG_DIR
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

# Groups whose options are chosen on the command line; hydra/ and local/ are not a user's menu.
SKIPPED_GROUPS = {"hydra", "local"}


def group_options() -> list[tuple[str, str]]:
    options = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONFIG_DIR).as_posix()
        if group == "." or group.split("/")[0] in SKIPPED_GROUPS:
            continue
        options.append((group, path.stem))
    return options


def test_group_walk_finds_the_menu():
    groups = {group for group, _ in group_options()}
    for expected in (
        "data",
        "model/net",
        "model/optimizer",
        "callbacks",
        "logger",
        "trainer",
        "debug",
        "experiment",
        "paths",
        "extras",
    ):
        assert expected in groups


# Options that only make sense together with another choice.
REQUIRED_OPTIONS = {("data", "tanh_regression"): ["model=regressor"]}


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_composes(make_config, group, option):
    required = REQUIRED_OPTIONS.get((group, option), [])
    cfg = make_config(f"{group}={option}", *required, quiet=False)
    # Resolving every interpolation catches references to keys that do not exist.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["_target_"].startswith("descend.data.")
    assert resolved["model"]["_target_"].startswith("descend.models.")


LOGGER_CLASSES = {
    "default": ["CSVLogger", "WandbLogger"],
    "csv": ["CSVLogger"],
    "wandb": ["WandbLogger"],
    "tensorboard": ["TensorBoardLogger"],
    "none": [],
}


def test_logger_table_covers_options():
    assert set(LOGGER_CLASSES) == {p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml")}


@pytest.mark.parametrize(("option", "classes"), sorted(LOGGER_CLASSES.items()))
def test_logger_options_instantiate(make_config, option, classes):
    cfg = make_config(f"logger={option}", quiet=False)
    loggers = [hydra.utils.instantiate(entry) for entry in (cfg.logger or {}).values()]
    assert [type(logger).__name__ for logger in loggers] == classes


def test_misspelled_override_names_key(make_config):
    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):
        make_config("trainer.max_epoch=1")
