"""Per-sample randomness of the training sets: every random choice of sample `index` in epoch
`epoch` comes from a generator seeded by (seed, epoch, index), so an augmentation does not depend
on the worker count, the batch order or where a run was resumed."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class EpochAugmented(Dataset):
    """Base of the training sets: each sample's random choices come from (seed, epoch, index),
    the epoch set by the loop, so a resumed run draws exactly the samples it would have drawn."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample_rng(self, index: int) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index)
