"""Per-sample random streams that depend only on (seed, epoch, sample key).

The augmentation and the CP mask of a sample are drawn from generators seeded by
``(seed, epoch, stable_hash(key))``, never from process state, so they are the same whatever the
number of ranks, workers or the micro-batch size, and a run can be replayed sample by sample.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Sub-stream tags: the augmentation and the CP pair draw from separate generators, so changing a
# patch setting does not change the crops (and vice versa).
AUGMENT_STREAM = 0
PATCH_STREAM = 1
ORDER_STREAM = 2  # the epoch's sample/shard order (no key)


def stable_hash(key: str) -> int:
    """A 64-bit hash of a sample key that is the same in every process and Python run
    (unlike ``hash()``, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def sample_rngs(seed: int, epoch: int, key: str) -> tuple[np.random.Generator, np.random.Generator]:
    """(augmentation generator, patch generator) of one sample in one epoch."""
    h = stable_hash(key)
    return (
        np.random.default_rng([seed, epoch, h, AUGMENT_STREAM]),
        np.random.default_rng([seed, epoch, h, PATCH_STREAM]),
    )


def order_rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    """The generator of an epoch's order (shard order, sample permutation, shuffle buffer)."""
    return np.random.default_rng([seed, epoch, ORDER_STREAM, *extra])
