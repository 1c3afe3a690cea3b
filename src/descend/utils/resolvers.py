"""OmegaConf resolvers used by the configs."""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register the resolvers the configs use.

    * ``${run_uid:}``: six hex digits drawn once per process. Run directories end with it, so two
      runs started in the same second never share one.
    * ``${cwd:}``: the working directory the command started in. Unlike
      ``${hydra:runtime.cwd}`` it also resolves while Hydra computes a multirun's sweep directory.
    """
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd, use_cache=True)
