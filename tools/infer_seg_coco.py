"""Segment MS COCO 2014 images with a trained ExCEL head: multi-scale + flip logits, optional DenseCRF,
mIoU tables and prediction PNGs (see excel/evaluation/segment.py for the outputs).

    python tools/infer_seg_coco.py --checkpoint CKPT --split val
    python tools/infer_seg_coco.py --checkpoint CKPT crf.enabled=false infer.scales=[1.0]
    bash infer_seg_coco.sh tools/infer_seg_coco.py 0,1 2 val CKPT        # torchrun, one process per GPU
"""
from __future__ import annotations

from pathlib import Path

from excel.apps.pipeline import infer_seg_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "coco.yaml"


def main(argv=None) -> None:
    infer_seg_main(argv, CONFIG)


if __name__ == "__main__":
    main()
