"""Segment image files with a trained ExCEL head: a class-index PNG and a colour overlay with a legend per image
(``excel-predict``, tools/predict.py).

    excel-predict IMAGE_OR_FOLDER ... --checkpoint CKPT --out DIR [--config CFG] [section.key=value ...]
    excel-predict photos/ --checkpoint work_dirs/voc/checkpoints/latest.pth --out preds crf.enabled=false

Folders are read one level deep (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp). Per image with stem S:
``DIR/labels/S.png`` (palette PNG, pixel value = class index, 0 background) and ``DIR/overlays/S.png``
(the prediction over the image, a legend of the classes present below it). The config is the one
stored in the checkpoint unless --config is given (a checkpoint of the authors' code needs it);
inference follows infer.* and crf.* (e.g. infer.scales=[1.0] infer.flip=false for one fast pass).
An image whose longer side exceeds --max-side (default 2048) is segmented resized to that side: its label
PNG is brought back to the image's size (nearest neighbour), its overlay stays at the resized size.
DIR never lies inside a dataset, and no sub-folder of it may link elsewhere.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from excel.cli import run_command
from excel.data.layout import dataset_folders
from excel.io import check_output_folder, read_image, write_image, write_mask
from excel.utils.logging import setup_logging
from excel.utils.visualize import legend_overlay

OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")      # section.key=value (an existing path is an input)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_FOLDERS = ("labels", "overlays")
DEFAULT_MAX_SIDE = 2048         # (C+1)×H×W float32 probabilities of a 2048² image: 0.35 GB for VOC's 21 classes


class InputError(ValueError):
    """Inputs that cannot be predicted as given (missing, unreadable, clashing names)."""


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files from files and folders (one level), in the given order, folders sorted."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {item} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise InputError(f"input not found: {item}")
    return images


def output_stems(images: list[Path], out: Path) -> list[str]:
    """File stems for the outputs; refuses stems that would leave ``out`` or that two inputs share."""
    stems, seen = [], {}
    for image in images:
        stem = image.stem
        target = (out / "labels" / f"{stem}.png").resolve()
        if (stem in ("", ".", "..") or os.sep in stem or (os.altsep and os.altsep in stem)
                or target.parent != (out / "labels").resolve()):
            raise InputError(f"image {image}: its name would write outside {out}; rename the file")
        if stem in seen:
            raise InputError(f"images {seen[stem]} and {image} share the name {stem!r}, so their outputs would "
                             "overwrite each other; predict them into different --out folders")
        seen[stem] = image
        stems.append(stem)
    return stems


def bounded(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (H×W×3 uint8) resized (bilinear) so that its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An h×w label map brought to H×W = ``size`` by nearest neighbour (pixel centres)."""
    rows = ((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]


def run(args: argparse.Namespace) -> None:
    from excel.evaluation.predictor import Predictor

    out = check_output_folder(args.out, inside=OUTPUT_FOLDERS)
    images = collect_images(args.inputs)
    stems = output_stems(images, out)
    for image in images:                       # every input decodes before anything is written
        read_image(image)
    predictor = Predictor.from_checkpoint(args.checkpoint, args.config, args.overrides, device=None)
    if predictor.cfg.dataset.root is not None:
        check_output_folder(out, dataset_folders(Path(predictor.cfg.dataset.root)), inside=OUTPUT_FOLDERS)
    for path, stem in zip(images, stems):
        image = read_image(path)
        small = bounded(image, args.max_side)
        result = predictor.predict(small)
        labels = result.labels if small is image else resize_nearest(result.labels, image.shape[:2])
        write_mask(out / "labels" / f"{stem}.png", labels)
        write_image(out / "overlays" / f"{stem}.png", legend_overlay(small, result.labels, result.label_names))
        resized = "" if small is image else (f" (segmented resized from {image.shape[1]}×{image.shape[0]} to "
                                             f"{small.shape[1]}×{small.shape[0]}, --max-side {args.max_side})")
        print(f"{path}: {', '.join(result.present())}{resized}")
    print(f"wrote {len(images)} predictions to {out}/labels and {out}/overlays")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-predict`` and tools/predict.py."""
    parser = argparse.ArgumentParser(description="Segment images with a trained ExCEL head.")
    parser.add_argument("items", nargs="+", metavar="IMAGE_OR_FOLDER | section.key=value",
                        help="images, folders of images, and config overrides")
    parser.add_argument("--checkpoint", required=True, help="trained head checkpoint (.pth)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="config (default: the one stored in the checkpoint)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"longest image side segmented; larger images are resized (default {DEFAULT_MAX_SIDE})")
    args = parser.parse_intermixed_args(argv)
    if args.max_side < 32:
        parser.error("--max-side must be at least 32")
    is_override = [bool(OVERRIDE.match(item)) and not os.path.exists(item) for item in args.items]
    args.overrides = [item for item, flag in zip(args.items, is_override) if flag]
    args.inputs = [item for item, flag in zip(args.items, is_override) if not flag]
    setup_logging()
    run_command(lambda: run(args), lambda: args.out, user_errors=(InputError,))


if __name__ == "__main__":
    main()
