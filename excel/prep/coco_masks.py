"""Offline conversion of COCO instance annotations into class-index masks (tools/make_coco_masks.py).

Pixel values: 0 background, 1..80 the COCO categories in ascending category-id order, 255 ignore
(crowd regions); smaller instances are drawn on top of larger ones.
"""
from __future__ import annotations

import json
import os
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from excel.classes import IGNORE_INDEX
from excel.data.layout import VOC_MASK_FOLDERS
from excel.io import DatasetError, check_output_folder, write_mask
from excel.prep.splits import parallel_map


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


def read_annotations(path: Path) -> dict[str, Any]:
    """A COCO instances file, checked to hold the lists ``images``, ``annotations`` and ``categories``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot parse COCO annotation file {path} ({error}); use the official "
                           "instances_*.json") from error
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        raise DatasetError(f"COCO annotation file {path} has no {', '.join(missing)} list; an instances file "
                           "(instances_*.json) holds images, annotations and categories")
    return data


def write_coco_masks(annotation_file: str | os.PathLike, out_dir: str | os.PathLike,
                     crowd: Literal["ignore", "label"] = "ignore", workers: int = 1) -> int:
    """Write ``<out_dir>/<image file stem>.png`` class-index masks from a COCO instances JSON.

    Class indices follow :func:`coco_category_index`; images without any annotation get no
    mask (so they are left out of the split lists). Returns the number of masks written.
    """
    annotation_file, out_dir = Path(annotation_file), Path(out_dir)
    check_output_folder(out_dir, allow=VOC_MASK_FOLDERS)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} not found; download the "
                                "2014 train/val annotations from cocodataset.org")
    data = read_annotations(annotation_file)
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
