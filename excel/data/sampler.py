"""The data order: endless, per-epoch permutations that make a resumed run exact; each process's share of the
global batch; the validation samples of a process."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from excel.config_rules import ConfigError
from excel.data.dataset import SegmentationDataset
from excel.io import DatasetError


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


class ValidationSamples(Dataset):
    """The validation samples at ``indices``; a sample that cannot be read is returned as its error, so that
    a DataLoader worker hands it to the main process as the one-line error it is (not a worker traceback)."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict | Exception:
        try:
            return self.dataset[self.indices[item]]
        except (DatasetError, FileNotFoundError) as err:
            return err


def per_process_batch(batch_size: int, processes: int, images: int, split: str) -> int:
    """Each process's share of train.batch_size, the global batch; refused when the share is not whole or the
    split (``images`` images) is smaller than one batch."""
    if batch_size % processes:
        raise ConfigError(f"train.batch_size={batch_size} is the batch over all processes and must be divisible "
                          f"by the {processes} processes of this job; use a multiple of {processes}, or start a "
                          f"number of processes that divides {batch_size}")
    if images < batch_size:
        raise ConfigError(f"train.batch_size={batch_size} needs at least that many images, but split {split!r} has "
                          f"{images}; lower train.batch_size or use a larger split")
    return batch_size // processes
