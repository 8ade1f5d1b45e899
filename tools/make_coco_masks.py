"""Write VOC-style class-index masks from a COCO instances annotation file.

Each image with at least one annotation gets ``<out>/<image file stem>.png``, a palette PNG
whose pixel values are class indices: 0 background, 1..80 the COCO categories in ascending
category-id order (1 person ... 80 toothbrush), 255 ignore. Images without annotations get no
mask and are therefore left out of the split lists made by tools/make_splits.py.

Rules: overlapping instances are painted from the largest to the smallest area, so smaller
objects stay on top; crowd regions (iscrowd=1) become 255 where no ordinary instance covers them
(``--crowd ignore``, default) or are painted with their class like any instance
(``--crowd label``). Each file is written to a temporary name and renamed.

Example::

    python tools/make_coco_masks.py --annotations data/COCO/annotations/instances_train2014.json \\
        --out data/COCO/SegmentationClass/train2014
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from excel.cli import run_command
from excel.prep.coco_masks import write_coco_masks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, type=Path,
                        help="COCO instances JSON, e.g. instances_train2014.json")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder, e.g. <root>/SegmentationClass/train2014")
    parser.add_argument("--crowd", choices=("ignore", "label"), default="ignore",
                        help="crowd regions: 255 (ignore) or their class index")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    count = run_command(lambda: write_coco_masks(args.annotations, args.out, args.crowd, args.workers),
                        lambda: args.out)
    print(f"wrote {count} masks to {args.out}")


if __name__ == "__main__":
    main()
