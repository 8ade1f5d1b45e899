"""Datasets, image and mask I/O, split lists and image-level labels.

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

import json
import os
import tempfile
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from excel.config import VOC_CATEGORIES
from excel.transforms import IGNORE_INDEX

LABELS_FILE = "labels.json"
DEFAULT_NUM_CLASSES = {"voc": 20, "coco": 80}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VOC_MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")
COCO_SUBSETS = ("train2014", "val2014")
DatasetName = Literal["voc", "coco", "custom"]


class DatasetError(ValueError):
    """A dataset file exists but its content is unusable (corrupt, wrong values, wrong size)."""


# ----------------------------------------------------------------------------------------------
# Reading and writing single files
# ----------------------------------------------------------------------------------------------

def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB; grayscale images are stacked to 3 channels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot decode image {path} ({error}); replace the file with a valid "
                           "image") from error


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-index PNG (palette or grayscale) as an H×W uint8 array of indices."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as mask:
            mask.load()
            mode = mask.mode
            array = np.asarray(mask)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(f"cannot decode mask {path} ({error}); replace the file with a valid "
                           "class-index PNG") from error
    if mode not in ("P", "L"):
        raise DatasetError(f"mask {path} has PIL mode {mode}; masks must be single-channel "
                           "class-index PNGs (palette 'P' or grayscale 'L'), not colour images")
    return np.ascontiguousarray(array, dtype=np.uint8)


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: 256×3 uint8, entry i is the colour of class index i."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> channel) & 1) << (7 - bit)
        index = index >> 3
    return palette.astype(np.uint8)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an H×W class-index array as a palette PNG with the VOC colours (atomically)."""
    if mask.ndim != 2 or mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"mask for {path} must be H×W with values in 0..255, got shape "
                         f"{mask.shape}")
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.putpalette(voc_palette().tobytes())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


# ----------------------------------------------------------------------------------------------
# Image-level labels
# ----------------------------------------------------------------------------------------------

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


def labels_from_voc_xml(path: str | os.PathLike, class_names: Sequence[str]) -> list[int]:
    """Sorted class indices (1-based position in ``class_names``) of the objects in a VOC XML."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DatasetError(f"cannot parse annotation {path} ({error})") from error
    index = {name: i + 1 for i, name in enumerate(class_names)}
    names = {(obj.findtext("name") or "").strip() for obj in root.iter("object")}
    unknown = sorted(names - set(index))
    if unknown:
        raise DatasetError(f"annotation {path} names unknown classes {unknown}; expected one of "
                           f"{list(class_names)}")
    return sorted(index[name] for name in names)


def multi_hot(classes: Iterable[int], num_classes: int) -> torch.Tensor:
    """Float32 vector of length num_classes with 1 at index c−1 for every foreground class c."""
    label = torch.zeros(num_classes, dtype=torch.float32)
    indices = [c - 1 for c in classes]
    if indices:
        label[torch.tensor(indices)] = 1.0
    return label


def read_labels(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read a ``labels.json`` file: {image id: [foreground class indices]}."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"cannot parse label file {path} ({error}); regenerate it with "
                           "tools/make_splits.py") from error
    if not isinstance(labels, dict) or not all(isinstance(v, list) for v in labels.values()):
        raise DatasetError(f"label file {path} must be a JSON object {{image id: [classes]}}")
    return labels


def write_labels(path: str | os.PathLike, labels: dict[str, list[int]]) -> None:
    """Write a ``labels.json`` file, one image per line, ids sorted."""
    lines = [f"{json.dumps(key)}: {json.dumps(labels[key])}" for key in sorted(labels)]
    write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


# ----------------------------------------------------------------------------------------------
# Split lists and dataset layout
# ----------------------------------------------------------------------------------------------

def prepare_hint(dataset: str, root: str | os.PathLike) -> str:
    """How to create the split lists of a dataset."""
    masks = " (COCO masks: tools/make_coco_masks.py)" if dataset == "coco" else ""
    return (f"prepare the dataset as described in the README{masks}, then run "
            f"`python tools/make_splits.py --dataset {dataset} --root {root}`")


def read_split(path: str | os.PathLike, hint: str = "") -> list[str]:
    """Read a split list (one image id per line, blank lines skipped); raise if missing/empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found; {hint or 'create it'}")
    ids = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"split list {path} is empty; list one image id per line")
    return ids


def write_split(path: str | os.PathLike, ids: Sequence[str]) -> None:
    """Write a split list, one image id per line."""
    write_text(path, "".join(f"{image_id}\n" for image_id in ids))


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


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

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
# ----------------------------------------------------------------------------------------------

def parallel_map(function: Callable[[Any], Any], items: Sequence[Any], workers: int,
                 desc: str) -> list[Any]:
    """``[function(x) for x in items]`` with a progress bar, over ``workers`` processes if > 1."""
    if workers <= 1 or len(items) < 2:
        return [function(item) for item in tqdm(items, desc=desc)]
    with Pool(workers) as pool:
        chunksize = max(1, min(64, len(items) // (4 * workers)))
        return list(tqdm(pool.imap(function, items, chunksize=chunksize), total=len(items),
                         desc=desc))


def check_images_exist(root: Path, dataset: str, ids: Sequence[str], split: str,
                       source: Path) -> None:
    """Raise naming the first id (from ``source``) whose image file is missing."""
    missing = [i for i in ids if find_image(root, dataset, i, split) is None]
    if missing:
        expected = image_folder(root, dataset, missing[0], split) / f"{missing[0]}.jpg"
        raise FileNotFoundError(f"{len(missing)} images listed by {source} are missing, e.g. "
                                f"{expected}")


def choose_subset(ids: Sequence[str], size: int, seed: int) -> list[str]:
    """A sorted, seeded random subset of ``min(size, len(ids))`` ids (independent of input order)."""
    pool = sorted(ids)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
    return sorted(pool[i] for i in picked)


def collect_labels(root: Path, dataset: str, splits: dict[str, list[str]], num_classes: int,
                   class_names: Sequence[str] | None, workers: int) -> dict[str, list[int]]:
    """Labels of every listed image: from its mask, else its VOC XML (if class_names), else none."""
    mask_ids, mask_paths, xml_ids = [], [], []
    seen = set()
    for split, ids in splits.items():
        for image_id in ids:
            if image_id in seen:
                continue
            seen.add(image_id)
            mask_path = find_mask(root, dataset, image_id, split)
            xml_path = root / "Annotations" / f"{image_id}.xml"
            if mask_path is not None:
                mask_ids.append(image_id)
                mask_paths.append(mask_path)
            elif class_names is not None and xml_path.is_file():
                xml_ids.append(image_id)
    read = partial(labels_from_mask_file, num_classes=num_classes)
    labels = dict(zip(mask_ids, parallel_map(read, mask_paths, workers, "labels from masks")))
    for image_id in xml_ids:
        labels[image_id] = labels_from_voc_xml(root / "Annotations" / f"{image_id}.xml", class_names)
    return labels


def write_splits(out_dir: Path, splits: dict[str, list[str]], labels: dict[str, list[int]]) -> None:
    """Write ``<split>.txt`` for every split and ``labels.json``."""
    for split, ids in splits.items():
        write_split(out_dir / f"{split}.txt", ids)
    write_labels(out_dir / LABELS_FILE, labels)


def make_voc_splits(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    num_classes: int = 20, class_names: Sequence[str] | None = VOC_CATEGORIES,
                    dataset: DatasetName = "voc", workers: int = 1) -> dict[str, list[str]]:
    """Split lists and labels.json for a VOC-layout dataset.

    train/val/test are copied from ImageSets/Segmentation (those present); train_aug is every
    image with a mask in SegmentationClassAug minus val (10,582 images for the standard release).
    Labels come from SegmentationClassAug, else SegmentationClass masks, else (when class_names
    is given) Annotations/<id>.xml object names; ids with none of these get no entry (e.g. test).
    """
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else default_split_dir(root)
    check_dataset_root(root, dataset)
    list_dir = root / "ImageSets" / "Segmentation"
    splits = {name: read_split(list_dir / f"{name}.txt") for name in ("train", "val", "test")
              if (list_dir / f"{name}.txt").is_file()}
    aug_dir = root / "SegmentationClassAug"
    if aug_dir.is_dir():
        val_ids = set(splits.get("val", []))
        splits["train_aug"] = sorted(p.stem for p in aug_dir.glob("*.png") if p.stem not in val_ids)
    if not splits or not any(splits.values()):
        raise FileNotFoundError(f"no split lists in {list_dir} and no masks in {aug_dir}; "
                                "provide ImageSets/Segmentation/{train,val}.txt")
    for split, ids in splits.items():
        check_images_exist(root, dataset, ids, split, list_dir / f"{split}.txt")
    labels = collect_labels(root, dataset, splits, num_classes, class_names, workers)
    write_splits(out_dir, splits, labels)
    return splits


def coco_ids_from_masks(mask_dir: Path, subset: str) -> list[str]:
    """Sorted image ids of the masks in a COCO subset folder (bare numbers get the prefix)."""
    stems = [p.stem for p in mask_dir.glob("*.png")]
    return sorted(f"COCO_{subset}_{s}" if s.isdigit() else s for s in stems)


def make_coco_splits(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     num_classes: int = 80, val_subset_size: int = 5000, seed: int = 0,
                     workers: int = 1) -> dict[str, list[str]]:
    """Split lists and labels.json for the COCO layout.

    train and val list every mask of SegmentationClass/train2014 and val2014;
    ``val_<val_subset_size>`` is a seeded random subset of val (sorted). Labels come from masks.
    """
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else default_split_dir(root)
    check_dataset_root(root, "coco")
    splits = {}
    for subset in COCO_SUBSETS:
        mask_dir = root / "SegmentationClass" / subset
        ids = coco_ids_from_masks(mask_dir, subset) if mask_dir.is_dir() else []
        if not ids:
            raise FileNotFoundError(
                f"no masks in {mask_dir}; create them with `python tools/make_coco_masks.py "
                f"--annotations annotations/instances_{subset}.json --out {mask_dir}`")
        check_images_exist(root, "coco", ids, subset, mask_dir)
        splits[subset[:-4]] = ids
    splits[f"val_{val_subset_size}"] = choose_subset(splits["val"], val_subset_size, seed)
    labels = collect_labels(root, "coco", splits, num_classes, None, workers)
    write_splits(out_dir, splits, labels)
    return splits


# ----------------------------------------------------------------------------------------------
# COCO instance annotations to class-index masks
# ----------------------------------------------------------------------------------------------

def coco_category_index(categories: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Map COCO category ids to class indices 1..C in ascending category-id order."""
    ids = sorted(int(c["id"]) for c in categories)
    if len(ids) >= IGNORE_INDEX:
        raise ValueError(f"{len(ids)} categories do not fit class indices 1..254")
    return {category_id: index + 1 for index, category_id in enumerate(ids)}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary H×W uint8 mask of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    with warnings.catch_warnings():
        # pycocotools' decoder trips NumPy 2's copy-keyword deprecation; the result is unaffected.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        return coco_mask.decode(rle)


def rasterize_coco_annotations(annotations: Sequence[dict[str, Any]], height: int, width: int,
                               category_index: dict[int, int],
                               crowd: Literal["ignore", "label"] = "ignore") -> np.ndarray:
    """H×W uint8 class-index mask of one image's instance annotations.

    Overlaps: instances are painted from the largest to the smallest pixel area (ties: lower
    annotation id first), so a smaller instance stays visible on top of a larger one.
    Crowd regions (iscrowd=1): with ``crowd='ignore'`` pixels covered only by crowd regions become
    255; with ``crowd='label'`` crowd regions are painted like ordinary instances.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd_area = np.zeros((height, width), dtype=bool)
    instance_area = np.zeros((height, width), dtype=bool)
    instances = []
    for annotation in annotations:
        binary = decode_segmentation(annotation["segmentation"], height, width).astype(bool)
        if annotation.get("iscrowd", 0) and crowd == "ignore":
            crowd_area |= binary
            continue
        instance_area |= binary
        instances.append((-int(binary.sum()), int(annotation.get("id", 0)),
                          category_index[int(annotation["category_id"])], binary))
    instances.sort(key=lambda instance: instance[:2])
    for _, _, class_index, binary in instances:
        mask[binary] = class_index
    mask[crowd_area & ~instance_area] = IGNORE_INDEX
    return mask


def _write_coco_image_mask(job: tuple[dict[str, Any], list[dict[str, Any]]], out_dir: Path,
                           category_index: dict[int, int], crowd: str) -> None:
    image, annotations = job
    mask = rasterize_coco_annotations(annotations, int(image["height"]), int(image["width"]),
                                      category_index, crowd)
    write_mask(out_dir / f"{Path(image['file_name']).stem}.png", mask)


def write_coco_masks(annotation_file: str | os.PathLike, out_dir: str | os.PathLike,
                     crowd: Literal["ignore", "label"] = "ignore", workers: int = 1) -> int:
    """Write ``<out_dir>/<image file stem>.png`` class-index masks from a COCO instances JSON.

    Class indices follow :func:`coco_category_index`; images without any annotation get no
    mask (so they are left out of the split lists). Returns the number of masks written.
    """
    annotation_file, out_dir = Path(annotation_file), Path(out_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} not found; download the "
                                "2014 train/val annotations from cocodataset.org")
    data = json.loads(annotation_file.read_text())
    category_index = coco_category_index(data["categories"])
    per_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in data["annotations"]:
        per_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    jobs = [(image, per_image[int(image["id"])]) for image in data["images"]
            if int(image["id"]) in per_image]
    out_dir.mkdir(parents=True, exist_ok=True)
    write = partial(_write_coco_image_mask, out_dir=out_dir, category_index=category_index,
                    crowd=crowd)
    parallel_map(write, jobs, workers, f"masks → {out_dir.name}")
    return len(jobs)
