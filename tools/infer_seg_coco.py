"""Segment MS COCO 2014 images with a trained ExCEL head: multi-scale + flip logits, optional DenseCRF,
mIoU tables and prediction PNGs (see excel/segment.py for the outputs).

    python tools/infer_seg_coco.py --checkpoint CKPT --split val
    python tools/infer_seg_coco.py --checkpoint CKPT crf.enabled=false infer.scales=[1.0]
    bash infer_seg_coco.sh tools/infer_seg_coco.py 0,1 2 val CKPT        # torchrun, one process per GPU
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from excel.segment import segmentation_cli  # noqa: E402

if __name__ == "__main__":
    segmentation_cli(ROOT / "configs" / "coco.yaml")
