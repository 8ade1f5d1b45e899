"""The training data order: endless, per-epoch permutations that make a resumed run exact."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from excel.data.dataset import SegmentationDataset


class EpochIndexSampler(Sampler):
    """Endless (index, epoch) pairs for this rank, starting at iteration `start_iter`.

    Epoch e visits a permutation seeded by seed + e, split across ranks by stride; each rank takes
    whole batches of it (the tail that does not fill a batch is dropped).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.iters_per_epoch = size // world_size // batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(f"the training split has {size} images, fewer than train.batch_size={batch_size} "
                             f"× {world_size} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start_iter, self.iters_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            mine = order[self.rank::self.world_size][: self.iters_per_epoch * self.batch_size]
            for index in mine[offset * self.batch_size:].tolist():
                yield index, epoch
            epoch, offset = epoch + 1, 0


class EpochAwareDataset(Dataset):
    """Routes the epoch of each (index, epoch) pair to the dataset's augmentation seed."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
