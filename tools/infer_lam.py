"""Pseudo labels (and their mIoU where masks exist) for a dataset split.

    python tools/infer_lam.py --config configs/voc.yaml [--checkpoint CKPT] [--out DIR] [section.key=value ...]
    bash infer_lam.sh tools/infer_lam.py 0,1 2 train [CKPT]        # torchrun, one process per GPU

Without --checkpoint the labels are training-free (frozen CLIP with SVC + TSE); with it they come from
the trained model's dynamic (LVC) CAMs. Output: <out>/pseudo_labels/<id>.png and the metric table.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.apps.pipeline import infer_lam_main


def main(argv=None) -> None:
    infer_lam_main(argv, ROOT / "configs" / "voc.yaml")


if __name__ == "__main__":
    main()
