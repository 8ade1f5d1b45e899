"""The embedded demo: ExCEL end to end on synthetic shapes with the tiny CLIP in assets/.

    python tools/demo.py [--quick] [--root data/synthetic] [--work-dir work_dirs/demo] [section.key=value ...]

Steps: draw the dataset if it is missing → training-free pseudo labels on val (and the same without
SVC) → training (static, then dynamic CAMs) → multi-scale (+CRF) segmentation of val → a summary table
with the all-background baseline, also written to <work_dir>/demo_summary.json. `--quick` runs a few
iterations on a handful of images (a smoke test of every stage).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from excel.cli import USER_ERRORS
from excel.config import load_config
from excel.data.dataset import SegmentationDataset
from excel.engine.trainer import train
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.evaluation.metrics import ConfusionMeter, scores
from excel.evaluation.segment import run_segmentation
from excel.prep.synthetic import write_synthetic_dataset

QUICK = ["train.max_iters=6", "train.eval_interval=6", "train.log_interval=3", "lvc.start_iter=3",
         "train.aff_switch_iter=4", "train.batch_size=2", "train.num_workers=0", "crf.workers=0"]


def background_baseline(cfg) -> float:
    """mIoU of predicting background everywhere on the val split."""
    dataset = SegmentationDataset(cfg.dataset.root, cfg.dataset.val_split, cfg.dataset.split_dir, cfg.dataset.name,
                                  cfg.dataset.num_classes, with_mask=True)
    meter = ConfusionMeter(cfg.dataset.num_classes + 1)
    for index in range(len(dataset)):
        mask = dataset[index]["mask"]
        meter.update(mask.new_zeros(mask.shape), mask)
    return scores(meter.matrix)["miou"]


def run_demo(args: argparse.Namespace) -> dict[str, float]:
    overrides = [f"dataset.root={args.root}", f"work_dir={args.work_dir}", *(QUICK if args.quick else []),
                 *args.overrides]
    cfg = load_config(args.config, overrides)
    if not (Path(args.root) / "splits" / "train.txt").is_file():
        print(f"drawing the synthetic dataset into {args.root}")
        write_synthetic_dataset(args.root, args.num_train, args.num_val, seed=0)
    work = Path(args.work_dir)
    started = time.time()
    summary = {"all-background baseline": background_baseline(cfg)}
    val = [f"dataset.split={cfg.dataset.val_split}"]
    summary["training-free pseudo labels"] = run_pseudo_labels(
        load_config(args.config, overrides + val), out_dir=work / "pseudo_labels_val")["miou"]
    if not args.quick:
        no_svc = load_config(args.config, overrides + val + ["svc.enabled=false", "lvc.enabled=false"])
        summary["training-free pseudo labels, SVC off"] = run_pseudo_labels(no_svc, out_dir=work / "pseudo_labels_val_no_svc")["miou"]
    trainer = train(cfg)
    result = run_segmentation(cfg, trainer.last_checkpoint, cfg.dataset.val_split, work / "segment_val")
    summary["decoder, multi-scale"] = result["raw"]["miou"]
    if result.get("crf") is not None:
        summary["decoder, multi-scale + CRF"] = result["crf"]["miou"]
    summary["minutes"] = (time.time() - started) / 60
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\nExCEL demo, synthetic val split (mIoU %)")
    for name, value in summary.items():
        print(f"  {name:<40s} {value:6.2f}" if name == "minutes" else f"  {name:<40s} {100 * value:6.2f}")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Run the ExCEL demo on synthetic shapes with the tiny CLIP.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--root", default=str(ROOT / "data" / "synthetic"), help="synthetic dataset folder")
    parser.add_argument("--work-dir", default=str(ROOT / "work_dirs" / "demo"))
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="a few iterations on a few images (smoke test)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_intermixed_args(argv)
    if args.quick:
        args.num_train, args.num_val = min(args.num_train, 8), min(args.num_val, 4)
    try:
        run_demo(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
