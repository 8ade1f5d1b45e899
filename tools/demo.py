"""The embedded demo: the paper's ablation, module by module, on synthetic shapes with the tiny CLIP in assets/.

    python tools/demo.py [--quick] [--threads N] [--root data/synthetic] [--work-dir work_dirs/demo] [section.key=value ...]

Steps: draw the dataset if it is missing → training-free pseudo labels on val with CLIP alone, with SVC,
with SVC and TSE → training (static, then dynamic CAMs) → the trained checkpoint's pseudo labels on val
with static and with dynamic (LVC) CAMs → multi-scale (+CRF) segmentation of val → the table of
:data:`ROWS`, also written to <work_dir>/demo_summary.json (mIoU as fractions, wall time in minutes).
`--quick` runs a few iterations on a handful of images (a smoke test of every stage).
"""
from __future__ import annotations

import os

# On a shared CPU, OpenMP threads that busy-wait for each other burn several times the useful work;
# let them sleep instead (must be set before torch loads its OpenMP runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from excel.checkpoint import load_head_weights  # noqa: E402
from excel.cli import USER_ERRORS  # noqa: E402
from excel.config import load_config  # noqa: E402
from excel.data import SegmentationDataset  # noqa: E402
from excel.engine import train  # noqa: E402
from excel.head import decoder_affinity  # noqa: E402
from excel.metrics import ConfusionMeter, scores  # noqa: E402
from excel.model import ExCEL, build_model  # noqa: E402
from excel.pseudo_label import par_from_config, resize_input, run_pseudo_labels  # noqa: E402
from excel.refine import last_layers_affinity, pseudo_labels  # noqa: E402
from excel.segment import run_segmentation  # noqa: E402
from excel.synthetic import write_synthetic_dataset  # noqa: E402
from excel.transforms import EvalTransform  # noqa: E402

QUICK = ["train.max_iters=6", "train.eval_interval=6", "train.log_interval=3", "lvc.start_iter=3",
         "train.aff_switch_iter=4", "train.batch_size=2", "train.num_workers=0", "crf.workers=0",
         "infer.scales=[1.0]"]

# The summary rows: key of demo_summary.json → what the printed table calls it.
ROWS: dict[str, str] = {
    "background": "all background",
    "clip": "training-free pseudo labels, CLIP alone (SVC and TSE off)",
    "svc": "training-free pseudo labels, + SVC",
    "svc_tse": "training-free pseudo labels, + SVC + TSE",
    "trained_static": "trained model's pseudo labels, static CAMs",
    "trained_lvc": "trained model's pseudo labels, + LVC (dynamic CAMs)",
    "decoder": "decoder, multi-scale",
    "decoder_crf": "decoder, multi-scale + CRF",
}
# Overrides selecting the training-free rows (TSE, SVC and LVC are on in configs/demo.yaml).
TRAINING_FREE: dict[str, list[str]] = {
    "clip": ["svc.enabled=false", "lvc.enabled=false", "tse.enabled=false"],
    "svc": ["tse.enabled=false"],
    "svc_tse": [],
}


def background_baseline(cfg: DictConfig) -> float:
    """mIoU of predicting background everywhere on the val split."""
    dataset = SegmentationDataset(cfg.dataset.root, cfg.dataset.val_split, cfg.dataset.split_dir, cfg.dataset.name,
                                  cfg.dataset.num_classes, with_mask=True)
    meter = ConfusionMeter(cfg.dataset.num_classes + 1)
    for index in range(len(dataset)):
        mask = dataset[index]["mask"]
        meter.update(mask.new_zeros(mask.shape), mask)
    return scores(meter.matrix)["miou"]


def flip_merged(cams: torch.Tensor) -> torch.Tensor:
    """CAMs of [image, flip] 2×C×h×w → 1×C×h×w: max with the flipped-back flip, per-class min–max."""
    merged = torch.maximum(cams[:1], cams[1:].flip(-1))
    merged = merged - merged.amin(dim=(-2, -1), keepdim=True)
    return merged / (merged.amax(dim=(-2, -1), keepdim=True) + 1e-5)


@torch.no_grad()
def checkpoint_label(model: ExCEL, image: torch.Tensor, cls_label: torch.Tensor, label_size: tuple[int, int],
                     cfg: DictConfig, par, dynamic: bool) -> torch.Tensor:
    """Pseudo label H×W of one normalised image 1×3×H×W (cls_label 1×C) with a trained head.

    As infer_lam with a checkpoint (excel.pseudo_label, mode ``checkpoint``): the image and its flip
    in one pass, CAMs merged by an element-wise max, attention affinity weighted by the decoder's Â
    of the unflipped image; ``dynamic`` picks LVC's CAMs, else the static (SVC) CAMs of the same pass.
    """
    inputs = resize_input(image, cfg.cam.input_size)
    out = model(torch.cat([inputs, inputs.flip(-1)]))
    cams = model.dynamic_cams(out.dense, out.features) if dynamic else model.static_cams(out.dense)
    layer_aff = last_layers_affinity(out.dense.attn_maps[:, :1], cfg.cam.affinity_layers)
    decoder_aff = decoder_affinity(out.features[:1], model.head.affinity_scale)
    return pseudo_labels(flip_merged(cams), cls_label, layer_aff, inputs, label_size, cfg.cam.box_threshold, par,
                         decoder_aff)[0]


def checkpoint_pseudo_label_miou(cfg: DictConfig, checkpoint: Path) -> dict[str, float]:
    """mIoU of the trained checkpoint's pseudo labels on the val split, static and dynamic CAMs."""
    model = build_model(cfg, "cpu").eval()
    load_head_weights(model, checkpoint, source=checkpoint)
    par = par_from_config(cfg)
    dataset = SegmentationDataset(cfg.dataset.root, cfg.dataset.val_split, cfg.dataset.split_dir, cfg.dataset.name,
                                  cfg.dataset.num_classes, image_transform=EvalTransform(cfg.dataset.normalize),
                                  with_mask=True)
    meters = {name: ConfusionMeter(cfg.dataset.num_classes + 1) for name in ("trained_static", "trained_lvc")}
    for index in range(len(dataset)):
        sample = dataset[index]
        image, cls_label = sample["image"][None], sample["cls_label"][None]
        size = tuple(sample["size"].tolist())
        for name, meter in meters.items():
            label = checkpoint_label(model, image, cls_label, size, cfg, par, dynamic=name == "trained_lvc")
            meter.update(label, sample["mask"])
    return {name: scores(meter.matrix)["miou"] for name, meter in meters.items()}


def print_table(summary: dict[str, float], threads: int) -> None:
    """The summary as the README's quick-start table (mIoU in %)."""
    print(f"\nExCEL demo, synthetic val split ({summary['minutes']:.1f} minutes on {threads} CPU threads)\n")
    print("| | mIoU (%) |\n| --- | --- |")
    for key, name in ROWS.items():
        print(f"| {name} | {100 * summary[key]:.1f} |")


def run_demo(args: argparse.Namespace) -> dict[str, float]:
    """Every stage of the demo; returns the summary {ROWS key: mIoU, "minutes": wall time}."""
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    overrides = [f"dataset.root={args.root}", f"work_dir={args.work_dir}", "device=cpu",
                 *(QUICK if args.quick else []), *args.overrides]
    cfg = load_config(args.config, overrides)
    started = time.time()
    if not (Path(args.root) / "splits" / "train.txt").is_file():
        print(f"drawing the synthetic dataset into {args.root}")
        write_synthetic_dataset(args.root, args.num_train, args.num_val, seed=0)
    work = Path(args.work_dir)
    summary = {"background": background_baseline(cfg)}
    for key, switches in TRAINING_FREE.items():
        variant = load_config(args.config, overrides + [f"dataset.split={cfg.dataset.val_split}", *switches])
        summary[key] = run_pseudo_labels(variant, out_dir=work / f"pseudo_labels_val_{key}")["miou"]
    trainer = train(cfg)
    torch.set_num_threads(args.threads)
    summary.update(checkpoint_pseudo_label_miou(cfg, trainer.last_checkpoint))
    result = run_segmentation(cfg, trainer.last_checkpoint, cfg.dataset.val_split, work / "segment_val")
    summary["decoder"] = result["raw"]["miou"]
    summary["decoder_crf"] = result["crf"]["miou"] if result.get("crf") is not None else float("nan")
    summary["minutes"] = (time.time() - started) / 60
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary, args.threads)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Run the ExCEL demo on synthetic shapes with the tiny CLIP.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--root", default=str(ROOT / "data" / "synthetic"), help="synthetic dataset folder")
    parser.add_argument("--work-dir", default=str(ROOT / "work_dirs" / "demo"))
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch and OpenCV threads of the demo process (the data loader and CRF "
                             "workers of configs/demo.yaml come on top)")
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
