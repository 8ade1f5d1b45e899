"""Where a dataset keeps its files, and the image-level labels derived from them.

Dataset layouts (``root`` is the dataset folder):

* ``voc`` and ``custom``: ``<root>/JPEGImages/<id>.jpg``, class-index masks in
  ``<root>/SegmentationClassAug/<id>.png`` or ``<root>/SegmentationClass/<id>.png`` (looked up in
  that order), split lists in ``<root>/ImageSets/Segmentation/<split>.txt`` and object annotations
  in ``<root>/Annotations/<id>.xml``.
* ``coco``: ``<root>/JPEGImages/{train2014,val2014}/<id>.jpg`` and class-index masks in
  ``<root>/SegmentationClass/{train2014,val2014}/<id>.png``. Ids are image file stems such as
  ``COCO_train2014_000000000009``; the subset folder follows from the id prefix (or, for other
  ids, from the split name). A mask named by the number alone (``000000000009.png``) is also found.

Split directory (default ``<root>/splits``, written by ``tools/make_splits.py``):

* ``<split>.txt``: one image id per line.
* ``labels.json``: image-level labels, ``{"<image id>": [c1, c2, ...]}`` with the sorted foreground
  class indices (1..C) present in the image; background (0) and ignore (255) never appear.

Masks hold class indices: 0 background, 1..C foreground classes, 255 ignore.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch

from excel.classes import IGNORE_INDEX
from excel.io import DATASET_FOLDER_NAMES, DatasetError, read_mask

LABELS_FILE = "labels.json"
DEFAULT_NUM_CLASSES = {"voc": 20, "coco": 80}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VOC_MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")
COCO_SUBSETS = ("train2014", "val2014")
DatasetName = Literal["voc", "coco", "custom"]


def mask_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a uint8 mask."""
    return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))


def check_mask_values(mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Raise if the mask holds a value other than 0..num_classes or 255."""
    values = mask_values(mask)
    bad = values[(values > num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetError(f"mask {path} contains values {bad.tolist()} outside the class range "
                           f"0..{num_classes} (255 = ignore); fix the mask or num_classes")


def labels_from_mask(mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> list[int]:
    """Sorted foreground classes present in a mask (0 and 255 excluded); values are checked."""
    check_mask_values(mask, num_classes, path)
    return [int(v) for v in mask_values(mask) if 0 < v <= num_classes]


def labels_from_mask_file(path: str | os.PathLike, num_classes: int) -> list[int]:
    """Read a mask file and return its foreground classes."""
    return labels_from_mask(read_mask(path), num_classes, path)


def labels_from_voc_xml(path: str | os.PathLike, categories: Sequence[str]) -> list[int]:
    """Sorted class indices (1-based position in ``categories``) of the objects in a VOC XML."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DatasetError(f"cannot parse annotation {path} ({error})") from error
    index = {name: i + 1 for i, name in enumerate(categories)}
    names = {(obj.findtext("name") or "").strip() for obj in root.iter("object")}
    unknown = sorted(names - set(index))
    if unknown:
        raise DatasetError(f"annotation {path} names unknown classes {unknown}; expected one of "
                           f"{list(categories)}")
    return sorted(index[name] for name in names)


def multi_hot(classes: Iterable[int], num_classes: int) -> torch.Tensor:
    """Float32 vector of length num_classes with 1 at index c−1 for every foreground class c."""
    label = torch.zeros(num_classes, dtype=torch.float32)
    indices = [c - 1 for c in classes]
    if indices:
        label[torch.tensor(indices)] = 1.0
    return label



def prepare_hint(dataset: str, root: str | os.PathLike) -> str:
    """How to create the split lists of a dataset."""
    masks = " (COCO masks: tools/make_coco_masks.py)" if dataset == "coco" else ""
    return (f"prepare the dataset as described in the README{masks}, then run "
            f"`python tools/make_splits.py --dataset {dataset} --root {root}`")



def coco_subset(image_id: str, split: str) -> str:
    """COCO subset folder (train2014 / val2014) of an id, from its prefix or else the split name."""
    for subset in COCO_SUBSETS:
        if image_id.startswith(f"COCO_{subset}_"):
            return subset
    for subset in COCO_SUBSETS:
        if subset[:-4] in split:
            return subset
    raise DatasetError(f"cannot tell whether COCO image {image_id!r} (split {split!r}) belongs to "
                       "train2014 or val2014; use ids like COCO_val2014_000000000042")


def image_folder(root: Path, dataset: str, image_id: str, split: str) -> Path:
    """Folder holding the image of ``image_id``."""
    if dataset == "coco":
        return root / "JPEGImages" / coco_subset(image_id, split)
    return root / "JPEGImages"


def mask_candidates(root: Path, dataset: str, image_id: str, split: str) -> list[Path]:
    """Possible mask files of ``image_id``, in lookup order."""
    if dataset == "coco":
        folder = root / "SegmentationClass" / coco_subset(image_id, split)
        number = image_id.rsplit("_", 1)[-1]
        names = [image_id] if number == image_id else [image_id, number]
        return [folder / f"{name}.png" for name in names]
    return [root / folder / f"{image_id}.png" for folder in VOC_MASK_FOLDERS]


def find_image(root: Path, dataset: str, image_id: str, split: str) -> Path | None:
    """Existing image file of ``image_id`` (any of IMAGE_EXTENSIONS), or None."""
    folder = image_folder(root, dataset, image_id, split)
    for extension in IMAGE_EXTENSIONS:
        candidate = folder / f"{image_id}{extension}"
        if candidate.is_file():
            return candidate
    return None


def find_mask(root: Path, dataset: str, image_id: str, split: str) -> Path | None:
    """Existing mask file of ``image_id``, or None."""
    for candidate in mask_candidates(root, dataset, image_id, split):
        if candidate.is_file():
            return candidate
    return None


def dataset_folders(root: Path) -> list[Path]:
    """The folders holding a dataset's images, masks and annotations (never written by a run)."""
    return [root / folder for folder in DATASET_FOLDER_NAMES]


def check_dataset_root(root: Path, dataset: str) -> None:
    """Raise a helpful error if the dataset folder or its image folder is missing."""
    if not (root / "JPEGImages").is_dir():
        raise FileNotFoundError(f"dataset folder {root} has no JPEGImages/ folder (dataset "
                                f"{dataset!r}); {prepare_hint(dataset, root)}")


def resolve_num_classes(dataset: str, num_classes: int | None) -> int:
    """Number of foreground classes: given, or the dataset's default."""
    if dataset not in ("voc", "coco", "custom"):
        raise ValueError(f"unknown dataset {dataset!r}; expected voc, coco or custom")
    if num_classes is None:
        if dataset == "custom":
            raise ValueError("a custom dataset needs num_classes (number of foreground classes)")
        return DEFAULT_NUM_CLASSES[dataset]
    if not 0 < num_classes < IGNORE_INDEX:
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
    return num_classes


def default_split_dir(root: str | os.PathLike) -> Path:
    """Default folder of split lists and labels.json: ``<root>/splits``."""
    return Path(root) / "splits"

