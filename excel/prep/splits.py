"""Offline preparation of split lists and ``labels.json`` (tools/make_splits.py).

VOC / custom: train, val, test copied from ``ImageSets/Segmentation`` (those present), and
``train_aug`` = every image with a ``SegmentationClassAug`` mask minus val. COCO: train and val list
the masks of ``SegmentationClass/{train2014,val2014}``; ``val_<size>`` is a seeded random subset of val.
Labels are the foreground classes of each image's mask, or of its VOC XML annotation.
"""
from __future__ import annotations

import os
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from excel.classes import VOC_CATEGORIES
from excel.data.layout import (
    COCO_SUBSETS,
    LABELS_FILE,
    DatasetName,
    check_dataset_root,
    dataset_folders,
    default_split_dir,
    find_image,
    find_mask,
    image_folder,
    labels_from_mask_file,
    labels_from_voc_xml,
)
from excel.io import check_output_folder, read_split, write_labels, write_split


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
                   categories: Sequence[str] | None, workers: int) -> dict[str, list[int]]:
    """Labels of every listed image: from its mask, else its VOC XML (if categories), else none."""
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
            elif categories is not None and xml_path.is_file():
                xml_ids.append(image_id)
    read = partial(labels_from_mask_file, num_classes=num_classes)
    labels = dict(zip(mask_ids, parallel_map(read, mask_paths, workers, "labels from masks")))
    for image_id in xml_ids:
        labels[image_id] = labels_from_voc_xml(root / "Annotations" / f"{image_id}.xml", categories)
    return labels


def write_splits(out_dir: Path, splits: dict[str, list[str]], labels: dict[str, list[int]]) -> None:
    """Write ``<split>.txt`` for every split and ``labels.json``."""
    for split, ids in splits.items():
        write_split(out_dir / f"{split}.txt", ids)
    write_labels(out_dir / LABELS_FILE, labels)


def make_voc_splits(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    num_classes: int = 20, categories: Sequence[str] | None = VOC_CATEGORIES,
                    dataset: DatasetName = "voc", workers: int = 1) -> dict[str, list[str]]:
    """Split lists and labels.json for a VOC-layout dataset.

    train/val/test are copied from ImageSets/Segmentation (those present); train_aug is every
    image with a mask in SegmentationClassAug minus val (10,582 images for the standard release).
    Labels come from SegmentationClassAug, else SegmentationClass masks, else (when categories
    is given) Annotations/<id>.xml object names; ids with none of these get no entry (e.g. test).
    """
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else default_split_dir(root)
    check_output_folder(out_dir, dataset_folders(root), inside=(LABELS_FILE,))
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
    labels = collect_labels(root, dataset, splits, num_classes, categories, workers)
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
    check_output_folder(out_dir, dataset_folders(root), inside=(LABELS_FILE,))
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
