"""A VOC-layout dataset of synthetic scenes (the demo's data), stamped with what decides its content."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from excel.io import DatasetError, check_output_folder, write_image, write_json, write_labels, write_mask, write_split
from excel.prep.synthetic import Scene, render_scene

SPLITS: tuple[str, ...] = ("train", "val")
# Bumped whenever the drawing changes, so that a dataset drawn by an older generator is recognised.
SCENE_VERSION = 1
STAMP_FILE = "splits/scenes.json"
DRAWN_FOLDERS = ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets", "splits")


def image_id(split: str, index: int) -> str:
    """Image id of the index-th scene of a split, e.g. ``train_00042``."""
    return f"{split}_{index:05d}"


def dataset_scene(seed: int, split: str, index: int, min_size: int = 128, max_size: int = 192,
                  ignore_band: int = 1) -> Scene:
    """The scene of one dataset image; depends only on (seed, split, index), not on other images.
    Height and width are drawn independently from [min_size, max_size]."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"image sizes must satisfy 32 ≤ min_size ≤ max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    return render_scene(rng, height, width, ignore_band=ignore_band)


def write_synthetic_dataset(root: str | os.PathLike, num_train: int, num_val: int, seed: int = 0,
                            min_size: int = 128, max_size: int = 192,
                            ignore_band: int = 1) -> dict[str, list[str]]:
    """Write a VOC-layout dataset of synthetic scenes under `root`; returns {split: ids}.

    Layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png and SegmentationClassAug/<id>.png
    (identical palette PNGs of class indices), ImageSets/Segmentation/<split>.txt, and
    splits/<split>.txt with splits/labels.json ({id: sorted class indices 1..5 present}); last,
    splits/scenes.json with :func:`scene_stamp` of the arguments (first, a stamp marked unfinished).
    ``root`` must be missing, empty, or drawn by this generator before (it has a stamp): any other folder,
    such as a real dataset, is refused before anything is written.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train={num_train} and num_val={num_val} must both be at least 1")
    root = Path(root)
    check_drawable(root)
    write_json(root / STAMP_FILE, {**scene_stamp(num_train, num_val, seed, min_size, max_size, ignore_band),
                                   "unfinished": True})
    counts = {"train": num_train, "val": num_val}
    splits: dict[str, list[str]] = {}
    labels: dict[str, list[int]] = {}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    for split, index in tqdm(jobs, desc="synthetic scenes", dynamic_ncols=True):
        name = image_id(split, index)
        scene = dataset_scene(seed, split, index, min_size, max_size, ignore_band)
        write_image(root / "JPEGImages" / f"{name}.jpg", scene.image)
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            write_mask(root / folder / f"{name}.png", scene.mask)
        splits.setdefault(split, []).append(name)
        labels[name] = scene.labels
    for split, ids in splits.items():
        write_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
        write_split(root / "splits" / f"{split}.txt", ids)
    write_labels(root / "splits" / "labels.json", labels)
    write_json(root / STAMP_FILE, scene_stamp(num_train, num_val, seed, min_size, max_size, ignore_band))
    return splits


def check_drawable(root: Path) -> None:
    """Raise unless ``root`` may be drawn into: missing, empty, or stamped by this generator; its folders must
    not lie inside another dataset's image / mask folders nor link out of ``root``."""
    check_output_folder(root, inside=DRAWN_FOLDERS)
    if root.is_dir() and any(root.iterdir()) and not (root / STAMP_FILE).is_file():
        raise DatasetError(f"{root} is not empty and was not drawn by this generator (it has no {STAMP_FILE}); "
                           "the synthetic dataset is drawn only into a new or empty folder: give another --root")


def scene_stamp(num_train: int, num_val: int, seed: int = 0, min_size: int = 128, max_size: int = 192,
                ignore_band: int = 1) -> dict[str, int]:
    """What decides a drawn dataset's content: the generator's version and the drawing arguments."""
    return {"version": SCENE_VERSION, "num_train": num_train, "num_val": num_val, "seed": seed,
            "min_size": min_size, "max_size": max_size, "ignore_band": ignore_band}


def read_scene_stamp(root: str | os.PathLike) -> dict | None:
    """The stamp a dataset under `root` was drawn with; None when it has none (or an unreadable one)."""
    try:
        stamp = json.loads((Path(root) / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None
