"""Build lists of callbacks and loggers from their config groups."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.errors import InstantiationException
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
        objects.append(instantiate_node(entry, f"{group_name}.{name}"))
    return objects


def instantiate_node(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Call ``hydra.utils.instantiate(node, **kwargs)``, turning an import failure into an
    ``ImportError`` that names the config key and the module that could not be imported.

    Hydra 1.3 reports a failed import of a ``_target_`` only as "Error locating target", with
    the real cause in the exception chain; a missing optional dependency is then hard to spot.
    """
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = _innermost_import_error(error)
        if cause is None:
            raise
        missing = f" (module {cause.name!r})" if getattr(cause, "name", None) else ""
        raise ImportError(
            f"{key}: {type(cause).__name__}: {cause}{missing}. The class it names needs a module "
            "that is not installed or fails to import: install it, or choose another option "
            "for this config entry"
        ) from error


def _innermost_import_error(error: BaseException) -> ImportError | None:
    found = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            found = current
        current = current.__cause__ or current.__context__
    return found
