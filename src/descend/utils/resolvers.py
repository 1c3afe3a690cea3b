"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register ``${run_uid:}``: six hex digits drawn once per process.

    Run directories end with it, so two runs started in the same second never share one.
    """
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: secrets.token_hex(3), use_cache=True)
