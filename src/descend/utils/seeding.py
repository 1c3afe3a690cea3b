"""Choose the run's seed."""

from __future__ import annotations

import os
import secrets

import numpy as np
from omegaconf import DictConfig, open_dict

SEED_ENV = "PL_GLOBAL_SEED"


def resolve_seed(seed: int | None) -> int:
    """Return ``seed``, or draw one when it is ``None``.

    A drawn seed comes from the operating system's random source. Processes that Lightning starts
    for DDP inherit ``PL_GLOBAL_SEED`` from rank 0 (``seed_everything`` sets it), so every rank
    reuses rank 0's draw. ``0`` is a seed like any other.
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed >= 2**32:
            raise ValueError(f"seed={seed!r} is invalid: it must be an integer in [0, 2**32)")
        return seed
    inherited = os.environ.get(SEED_ENV)
    if inherited is not None and os.environ.get("LOCAL_RANK", "0") != "0":
        return int(inherited)
    return secrets.randbelow(2**31)


def fix_config_seed(cfg: DictConfig) -> int:
    """Replace ``cfg.seed`` by :func:`resolve_seed` of it and return the seed, so every later
    reader of the config (the printed tree, W&B, checkpoints) gets the seed actually used."""
    seed = resolve_seed(cfg.get("seed"))
    with open_dict(cfg):
        cfg.seed = seed
    return seed


def derive_seed(seed: int, *keys: int) -> int:
    """Return a 32-bit seed derived from ``seed`` and ``keys`` (a rank, a worker id, an epoch).

    NumPy's ``SeedSequence`` hashes the entropy, so nearby inputs (seed 0 rank 1, seed 1 rank 0)
    give unrelated streams, unlike ``seed + rank``.
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
