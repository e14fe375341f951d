"""Seed streams of the generated tasks (copy, adding, chars windows): the generator seeds of training batches,
validation sets and test sets come from three disjoint ranges, so no evaluation sequence is drawn from a seed that
a training batch used, and validation (what a run may stop on) never shares a seed with test (what is reported).

torch's CPU generator (MT19937) keeps only the low 32 bits of a seed (manual_seed(5) and manual_seed(5 + 2**32)
draw the same numbers), so the ranges split the 32-bit seed space:

    training batch of (seed, rank, step):  (seed * 1_000_003 + rank * 7_919 + step) mod 2**31         in [0, 2**31)
    validation set (index, length):        2**31 + (index * 1_000_003 + length) mod 2**30            in [2**31, 3 * 2**30)
    test set (index, length):              2**31 + 2**30 + (index * 1_000_003 + length) mod 2**30    in [3 * 2**30, 2**32)

The training formula is the one sab-train always used (then taken mod 2**63, which the generator cut to 32 bits
anyway): for seed * 1_000_003 + step < 2**31 (every run seed below 2,000 or so) each batch is the one it was.
`length` is the task's sequence length (the copy delay T), so every transfer length has its own independent test
set. `index` numbers independent sets of one split: 0 is the standard one (sab-train's logged metrics, the
README's rows); other indices draw fresh sets of the same distribution.
"""

from __future__ import annotations

import torch

TRAIN_RANGE = 2**31
SPLIT_BASE = {"valid": 2**31, "test": 2**31 + 2**30}
SET_RANGE = 2**30


def train_seed(seed: int, rank: int, step: int) -> int:
    """The generator seed of training batch `step` of process `rank` in a run with --seed `seed`."""
    return (seed * 1_000_003 + rank * 7_919 + step) % TRAIN_RANGE


def eval_seed(split: str, index: int = 0, length: int = 0) -> int:
    """The generator seed of evaluation set `index` of `split` ("valid" or "test") at sequence length `length`."""
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {tuple(SPLIT_BASE)}, got {split!r}")
    if index < 0 or length < 0:
        raise ValueError(f"index and length must be >= 0, got {index} and {length}")
    return SPLIT_BASE[split] + (index * 1_000_003 + length) % SET_RANGE


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
