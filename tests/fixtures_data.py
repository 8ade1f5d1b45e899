"""Tiny VOC- and COCO-layout datasets generated on disk for the tests.

Images show flat coloured shapes on a plain background, one colour per class, drawn where the
masks (or COCO polygons) put them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from excel.prep.coco_masks import write_coco_masks
from excel.prep.splits import make_coco_splits, make_voc_splits

__all__ = ["tiny_voc", "tiny_coco"]

BACKGROUND_COLOUR = (96, 112, 88)

# id: (height, width, [(class, "rect" | "ellipse", (x0, y0, x1, y1)), ...], grayscale)
VOC_TRAIN = {
    "2007_000032": (64, 80, [(1, "rect", (5, 8, 40, 50)), (15, "ellipse", (30, 20, 75, 60))], False),
    "2007_000039": (96, 64, [(20, "rect", (10, 10, 50, 80))], False),
    "2007_000063": (72, 100, [(8, "ellipse", (20, 5, 90, 60)), (12, "rect", (0, 40, 30, 71))], False),
    "2007_000068": (50, 90, [(3, "rect", (30, 10, 70, 45))], True),
    "2007_000121": (81, 67, [(7, "rect", (5, 5, 60, 40)), (19, "rect", (40, 30, 66, 80))], False),
    "2007_000129": (60, 60, [(15, "ellipse", (10, 10, 50, 50))], False),
}
VOC_VAL = {
    "2007_000033": (70, 90, [(1, "rect", (10, 20, 80, 60))], False),
    "2007_000042": (64, 64, [(19, "ellipse", (8, 8, 56, 56))], False),
    "2007_000061": (90, 70, [(4, "rect", (0, 0, 30, 40)), (5, "ellipse", (25, 35, 69, 89))], False),
    "2007_000123": (55, 77, [(11, "rect", (20, 10, 60, 45))], False),
}
VOC_AUG_ONLY = {
    "2008_000002": (66, 74, [(2, "rect", (10, 10, 60, 50))], False),
    "2008_000003": (58, 88, [(13, "ellipse", (5, 5, 80, 50)), (15, "rect", (40, 30, 70, 57))], False),
}
VOC_TEST = {
    "2008_000006": (62, 84, [(6, "rect", (20, 10, 60, 50))], False),
    "2008_000010": (77, 59, [(9, "ellipse", (5, 5, 50, 70))], False),
}

# All 80 COCO category ids (non-contiguous, 1..90).
COCO_CATEGORY_IDS = [i for i in range(1, 91)
                     if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# image number: (height, width, [(category id, polygon [x0, y0, x1, y1, ...], iscrowd)], grayscale)
COCO_TRAIN = {
    9: (48, 64, [(18, [4, 4, 30, 4, 30, 40, 4, 40], 0), (90, [34, 10, 60, 10, 47, 44], 0)], False),
    25: (60, 40, [(1, [5, 5, 35, 5, 35, 55, 5, 55], 0), (44, [10, 20, 25, 20, 25, 45, 10, 45], 0)],
         True),
    30: (52, 52, [(62, [0, 0, 52, 0, 52, 20, 0, 20], 0), (1, [10, 30, 40, 30, 40, 50, 10, 50], 1)],
         False),
    34: (40, 70, [(3, [5, 5, 65, 5, 65, 35, 5, 35], 0)], False),
    36: (44, 44, [], False),
}
COCO_VAL = {
    42: (50, 66, [(18, [10, 10, 50, 10, 50, 45, 10, 45], 0)], False),
    73: (64, 48, [(90, [4, 4, 44, 4, 44, 30, 4, 30], 0), (3, [4, 34, 44, 34, 44, 60, 4, 60], 0)],
         False),
    74: (46, 58, [(27, [8, 6, 50, 6, 50, 40, 8, 40], 0)], False),
}


def class_colour(class_index: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class index."""
    return ((class_index * 67 + 30) % 256, (class_index * 131 + 40) % 256,
            (class_index * 29 + 150) % 256)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple, fill) -> None:
    if kind == "rect":
        draw.rectangle(box, fill=fill)
    else:
        draw.ellipse(box, fill=fill)


def save_image(path: Path, image: Image.Image, grayscale: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert("L") if grayscale else image).save(path, quality=95)


def write_voc_sample(root: Path, image_id: str, spec: tuple, mask_folders: list[str]) -> None:
    """Draw one image and its class-index mask (object outlines marked 255)."""
    height, width, shapes, grayscale = spec
    image = Image.new("RGB", (width, height), BACKGROUND_COLOUR)
    mask = Image.new("L", (width, height), 0)
    image_draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for class_index, kind, box in shapes:
        draw_shape(image_draw, kind, box, class_colour(class_index))
        draw_shape(mask_draw, kind, box, class_index)
    for class_index, kind, box in shapes:
        if kind == "rect":
            mask_draw.rectangle(box, outline=255, width=1)
        else:
            mask_draw.ellipse(box, outline=255, width=1)
    save_image(root / "JPEGImages" / f"{image_id}.jpg", image, grayscale)
    for folder in mask_folders:
        path = root / folder / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder == "SegmentationClass":
            palette_mask = mask.copy()
            palette_mask.putpalette([v for c in range(256) for v in class_colour(c)])
            palette_mask.save(path)
        else:
            mask.save(path)


def build_tiny_voc(root: Path) -> Path:
    """VOC 2012 layout: 6 train, 4 val, 2 augmented-only and 2 test images; splits made."""
    for image_id, spec in {**VOC_TRAIN, **VOC_VAL}.items():
        write_voc_sample(root, image_id, spec, ["SegmentationClass", "SegmentationClassAug"])
    for image_id, spec in VOC_AUG_ONLY.items():
        write_voc_sample(root, image_id, spec, ["SegmentationClassAug"])
    for image_id, spec in VOC_TEST.items():
        write_voc_sample(root, image_id, spec, [])
    list_dir = root / "ImageSets" / "Segmentation"
    list_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", VOC_TRAIN), ("val", VOC_VAL), ("test", VOC_TEST)):
        (list_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    make_voc_splits(root)
    return root


def coco_subset_json(subset: str, specs: dict) -> dict:
    """A COCO instances JSON for the given images: polygons, and crowd regions (axis-aligned
    rectangles given as polygons in the spec) as uncompressed RLE."""
    images, annotations = [], []
    for number, (height, width, objects, _) in specs.items():
        images.append({"id": number, "file_name": f"COCO_{subset}_{number:012d}.jpg",
                       "height": height, "width": width})
        for category_id, polygon, iscrowd in objects:
            segmentation = [polygon]
            if iscrowd:
                x0, y0, x1, y1 = polygon[0], polygon[1], polygon[4], polygon[5]
                binary = np.zeros((height, width), np.uint8)
                binary[y0:y1, x0:x1] = 1
                segmentation = rle_counts(binary)
            annotations.append({"id": len(annotations) + 1 + 1000 * (subset == "val2014"),
                                "image_id": number, "category_id": category_id,
                                "segmentation": segmentation, "iscrowd": iscrowd,
                                "area": 0.0, "bbox": [0, 0, 0, 0]})
    categories = [{"id": i, "name": f"category{i}", "supercategory": "thing"}
                  for i in COCO_CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def rle_counts(binary: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a binary H×W mask (column-major runs, starting with zeros)."""
    flat = binary.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(binary.shape), "counts": counts}


def build_tiny_coco(root: Path) -> Path:
    """COCO 2014 layout (4 annotated train, 1 unannotated train, 3 val images); masks and splits."""
    annotation_dir = root / "annotations"
    annotation_dir.mkdir(parents=True, exist_ok=True)
    for subset, specs in (("train2014", COCO_TRAIN), ("val2014", COCO_VAL)):
        for number, (height, width, objects, grayscale) in specs.items():
            image = Image.new("RGB", (width, height), BACKGROUND_COLOUR)
            draw = ImageDraw.Draw(image)
            for category_id, polygon, _ in objects:
                draw.polygon(polygon, fill=class_colour(COCO_CATEGORY_IDS.index(category_id) + 1))
            save_image(root / "JPEGImages" / subset / f"COCO_{subset}_{number:012d}.jpg", image,
                       grayscale)
        json_path = annotation_dir / f"instances_{subset}.json"
        json_path.write_text(json.dumps(coco_subset_json(subset, specs)))
        write_coco_masks(json_path, root / "SegmentationClass" / subset)
    make_coco_splits(root)
    return root


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny VOC 2012-layout dataset with split lists in <root>/splits."""
    return build_tiny_voc(tmp_path_factory.mktemp("tiny_voc") / "VOC2012")


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny COCO 2014-layout dataset with masks and split lists in <root>/splits."""
    return build_tiny_coco(tmp_path_factory.mktemp("tiny_coco") / "COCO")
