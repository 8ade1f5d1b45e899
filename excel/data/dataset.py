"""The dataset: images of one split with their image-level labels and, where available, masks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from excel.classes import IGNORE_INDEX
from excel.data.layout import (
    LABELS_FILE,
    DatasetName,
    check_dataset_root,
    check_mask_values,
    default_split_dir,
    find_image,
    find_mask,
    image_folder,
    labels_from_mask,
    mask_candidates,
    multi_hot,
    prepare_hint,
    resolve_num_classes,
)
from excel.io import (
    DatasetError,
    check_split_name,
    read_image,
    read_labels,
    read_mask,
    read_split,
)


class SampleTransform(Protocol):
    """Maps (H×W×3 uint8 image, H×W uint8 mask or None, generator) to a dict holding at least
    'image' and 'mask' (int64 tensor, 255 where unknown); extra keys are copied to the sample."""

    def __call__(self, image: np.ndarray, mask: np.ndarray | None,
                 rng: np.random.Generator) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SampleFiles:
    """Files of one image: its image and (if it exists) its mask."""

    image_id: str
    image_path: Path
    mask_path: Path | None


class SegmentationDataset(Dataset):
    """Images of one split with image-level labels and, where available, ground-truth masks.

    Construction only checks that files exist; images and masks are decoded in ``__getitem__``.
    Image-level labels come from ``<split_dir>/labels.json``, or, when that file is absent, from
    the masks. A sample is a dict:

    * ``id``: image id (str); ``size``: int64 tensor (H, W) of the original image.
    * ``image``: H×W×3 uint8 numpy array, or whatever ``image_transform`` returns (e.g. a
      normalised 3×H×W float tensor).
    * ``mask``: int64 tensor H×W (after the transform: its geometry), 255 where no mask exists.
    * ``cls_label``: float32 tensor (num_classes,), 1 at index c−1 for each foreground class c.
    * any extra keys of the transform output (e.g. ``valid_box``).

    Args: ``split_dir`` defaults to ``<root>/splits``; ``num_classes`` (foreground classes) to
    20 for voc and 80 for coco. ``with_mask``: True requires a mask for every image, False never
    reads masks for the model (``mask`` all 255), 'auto' uses them when every image has one
    (see :attr:`has_masks`). ``with_labels=False`` skips image-level labels (``cls_label`` all
    zeros), e.g. for unlabelled test images.

    Randomness: the transform of sample ``i`` gets ``np.random.default_rng((seed, epoch, i))``,
    so augmentations depend only on (seed, epoch, index), not on worker count or process; call
    :meth:`set_epoch` before iterating each epoch (and after resuming) to reproduce a run exactly.
    """

    def __init__(self, root: str | os.PathLike, split: str,
                 split_dir: str | os.PathLike | None = None, dataset: DatasetName = "voc",
                 num_classes: int | None = None, image_transform: SampleTransform | None = None,
                 with_mask: bool | Literal["auto"] = "auto", with_labels: bool = True,
                 seed: int = 0) -> None:
        self.root = Path(root)
        self.split = split
        self.dataset = dataset
        self.num_classes = resolve_num_classes(dataset, num_classes)
        self.split_dir = Path(split_dir) if split_dir is not None else default_split_dir(root)
        self.image_transform = image_transform
        self.seed = seed
        self.epoch = 0
        check_dataset_root(self.root, dataset)
        check_split_name(split)
        ids = read_split(self.split_dir / f"{split}.txt", prepare_hint(dataset, self.root))
        self.items = self._locate_files(ids)
        self.has_masks = self._decide_has_masks(with_mask)
        self.labels: dict[str, list[int]] | None = None
        self.labels_from_masks = False
        if with_labels:
            self._load_labels()

    def _locate_files(self, ids: list[str]) -> list[SampleFiles]:
        items = []
        for image_id in ids:
            image_path = find_image(self.root, self.dataset, image_id, self.split)
            if image_path is None:
                expected = image_folder(self.root, self.dataset, image_id, self.split)
                raise FileNotFoundError(
                    f"image {expected / (image_id + '.jpg')} listed in "
                    f"{self.split_dir / (self.split + '.txt')} does not exist; fix the split list "
                    f"or the dataset folder")
            mask_path = find_mask(self.root, self.dataset, image_id, self.split)
            items.append(SampleFiles(image_id, image_path, mask_path))
        return items

    def _decide_has_masks(self, with_mask: bool | Literal["auto"]) -> bool:
        if with_mask not in (True, False, "auto"):
            raise ValueError(f"with_mask must be True, False or 'auto', got {with_mask!r}")
        missing = [item.image_id for item in self.items if item.mask_path is None]
        if with_mask is True and missing:
            candidates = mask_candidates(self.root, self.dataset, missing[0], self.split)
            raise FileNotFoundError(
                f"mask of image {missing[0]!r} (split {self.split!r}) not found: looked for "
                f"{', '.join(map(str, candidates))}; {len(missing)} of {len(self.items)} masks "
                "are missing")
        return with_mask is not False and not missing

    def _load_labels(self) -> None:
        """Read labels.json, or else check that every image has a mask to derive labels from."""
        path = self.split_dir / LABELS_FILE
        if path.is_file():
            self.labels = read_labels(path)
            for item in self.items:
                self._check_label_entry(self.labels, item.image_id, path)
            return
        without_mask = [item.image_id for item in self.items if item.mask_path is None]
        if without_mask:
            raise FileNotFoundError(
                f"no image-level labels for split {self.split!r}: {path} does not exist and image "
                f"{without_mask[0]!r} has no mask to derive them from; "
                f"{prepare_hint(self.dataset, self.root)}")
        self.labels_from_masks = True

    def _check_label_entry(self, labels: dict[str, list[int]], image_id: str, path: Path) -> None:
        if image_id not in labels:
            raise DatasetError(f"image {image_id!r} of split {self.split!r} has no entry in {path}; "
                               f"regenerate it: {prepare_hint(self.dataset, self.root)}")
        bad = [c for c in labels[image_id] if not (isinstance(c, int) and 1 <= c <= self.num_classes)]
        if bad:
            raise DatasetError(f"{path}: image {image_id!r} has classes {bad} outside "
                               f"1..{self.num_classes}")

    @property
    def ids(self) -> list[str]:
        """Image ids in split order."""
        return [item.image_id for item in self.items]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that seeds the per-sample augmentation generators."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _read_mask(self, item: SampleFiles, image_size: tuple[int, int]) -> np.ndarray:
        mask = read_mask(item.mask_path)
        if mask.shape != image_size:
            raise DatasetError(f"mask {item.mask_path} is {mask.shape[0]}×{mask.shape[1]} but image "
                               f"{item.image_path} is {image_size[0]}×{image_size[1]}")
        check_mask_values(mask, self.num_classes, item.mask_path)
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = read_image(item.image_path)
        size = image.shape[:2]
        mask = self._read_mask(item, size) if self.has_masks or self.labels_from_masks else None
        if self.labels is not None:
            classes = self.labels[item.image_id]
        elif self.labels_from_masks:
            classes = labels_from_mask(mask, self.num_classes, item.mask_path)
        else:
            classes = []
        model_mask = mask if self.has_masks else None
        sample: dict[str, Any] = {"id": item.image_id, "size": torch.tensor(size, dtype=torch.int64)}
        if self.image_transform is None:
            sample["image"] = image
            sample["mask"] = mask_tensor(model_mask, size)
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            sample.update(self.image_transform(image, model_mask, rng))
        sample["cls_label"] = multi_hot(classes, self.num_classes)
        return sample


def mask_tensor(mask: np.ndarray | None, size: tuple[int, int]) -> torch.Tensor:
    """H×W int64 tensor of a mask, or all 255 (ignore) when there is none."""
    if mask is None:
        return torch.full(tuple(size), IGNORE_INDEX, dtype=torch.int64)
    return torch.from_numpy(mask.astype(np.int64))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: strings become lists, arrays/tensors are stacked along a new first axis.

    Training crops share one size; evaluation images differ in size and need batch size 1.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], str):
            batch[key] = values
            continue
        tensors = [torch.as_tensor(np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v)
                   for v in values]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch '{key}' of different shapes {sorted(shapes)}; use "
                             "batch_size=1 for full-size images")
        batch[key] = torch.stack(tensors)
    return batch


# ----------------------------------------------------------------------------------------------
# Building split lists and labels.json
