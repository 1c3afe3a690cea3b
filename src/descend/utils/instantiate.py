"""Build lists of callbacks and loggers from their config groups."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None, group_name: str) -> list[Any]:
    """Instantiate every entry of ``group`` that has a ``_target_``, in config order.

    ``group`` maps names to configs (``callbacks.model_checkpoint``, ``logger.csv``), so
    ``~callbacks.<name>`` on the command line removes one entry. Entries set to ``null`` are
    skipped.
    """
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"{group_name} must be a mapping of names to configs, got {type(group)}")

    objects = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(
                f"{group_name}.{name} has no _target_: each entry of {group_name} must name the "
                "class to build"
            )
        log.debug("Instantiating %s.%s <%s>", group_name, name, entry._target_)
        objects.append(hydra.utils.instantiate(entry))
    return objects
