"""The embedded demo: the paper's ablation, module by module, on synthetic shapes with the tiny CLIP in
assets/ (tools/demo.py; the README's quick start).

Steps: draw the dataset if it is missing (refusing one drawn by an older generator or with other
sizes) → training-free pseudo labels on val with CLIP alone, with SVC, with SVC and TSE (they do not
depend on the seed) → for each of ``--seeds`` seeds, through the ablation runner (one cell each in
<work_dir>/seeds/full/seed_<n>, resumable): training (static, then dynamic CAMs), the trained
checkpoint's pseudo labels on val with static and with dynamic (LVC) CAMs, multi-scale (+CRF)
segmentation of val → the table of :data:`ROWS` (seed rows as mean ± sample sd) and the method's claims
(:mod:`excel.apps.demo_claims`), also written to <work_dir>/demo_summary.json (mIoU as fractions: the
flat keys are means, ``seeds`` holds every seed's value; wall time in minutes).
``--quick`` runs a few iterations on a handful of images with two seeds (a smoke test of every stage),
in folders of its own (data/synthetic_quick, work_dirs/demo_quick) unless --root / --work-dir say otherwise.
"""
from __future__ import annotations

import os

# On a shared CPU, OpenMP threads that busy-wait for each other burn several times the useful work;
# let them sleep instead (effective when this module is the first to load torch: its commands).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Sequence

import cv2
import torch
from omegaconf import DictConfig

from excel.apps.ablate import run_sweep
from excel.apps.ablation.sweep import Sweep
from excel.apps.demo_claims import check_claims, claims_table
from excel.builders import build_dataset
from excel.cli import run_command
from excel.config import ConfigError, load_config
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.io import DatasetError, write_json
from excel.metrics import ConfusionMeter, scores
from excel.prep.synthetic_dataset import read_scene_stamp, scene_stamp, write_synthetic_dataset

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
# The rows that depend on the training seed: one ablation-runner cell per seed.
SEED_ROWS = ("trained_static", "trained_lvc", "decoder", "decoder_crf")
# Overrides selecting the training-free rows (TSE, SVC and LVC are on in configs/demo.yaml).
TRAINING_FREE: dict[str, list[str]] = {
    "clip": ["svc.enabled=false", "lvc.enabled=false", "tse.enabled=false"],
    "svc": ["tse.enabled=false"],
    "svc_tse": [],
}


def prepare_dataset(root: Path, num_train: int, num_val: int) -> None:
    """Draw the synthetic dataset into an empty or missing ``root``; accept one drawn with the same
    generator version and sizes; refuse anything else (an older drawing, other sizes, other files)."""
    wanted = scene_stamp(num_train, num_val, seed=0)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        print(f"drawing the synthetic dataset into {root}")
        write_synthetic_dataset(root, num_train, num_val, seed=0)
        return
    found = read_scene_stamp(root)
    if found != wanted:
        what = "has no record of being drawn by this generator" if found is None else \
            f"was drawn with {found}, the demo needs {wanted}"
        raise DatasetError(f"{root} {what}; delete that folder to have the demo draw it again, "
                           f"or give another --root")


def background_baseline(cfg: DictConfig) -> float:
    """mIoU of predicting background everywhere on the val split."""
    dataset = build_dataset(cfg, cfg.dataset.val_split, with_mask=True)
    meter = ConfusionMeter(cfg.dataset.num_classes + 1)
    for index in range(len(dataset)):
        mask = dataset[index]["mask"]
        meter.update(mask.new_zeros(mask.shape), mask)
    return scores(meter.matrix)["miou"]


def print_table(summary: dict, threads: int) -> None:
    """The summary as the README's quick-start table (mIoU in %; seed rows as mean ± sd) and the claims."""
    n = len(summary["seeds"][SEED_ROWS[0]])
    plural = {1: ""}
    print(f"\nExCEL demo, synthetic val split ({summary['minutes']:.1f} minutes on {threads} CPU "
          f"thread{plural.get(threads, 's')}; {n} seed{plural.get(n, 's')}, mean ± sample sd)\n")
    print("| | mIoU (%) |\n| --- | --- |")
    for key, name in ROWS.items():
        value = f"{100 * summary[key]:.1f}"
        if key in SEED_ROWS and n > 1:
            value += f" ± {100 * summary['std'][key]:.1f} (n = {n})"
        print(f"| {name} | {value} |")
    print("\nThe method's claims, as paired per-seed differences:\n")
    print(claims_table(summary["claims"]))


def run_seed_rows(config: str, overrides: list[str], root: Path, seeds: int, jobs: int,
                  threads: int) -> dict[str, list[float]]:
    """Train and evaluate the demo config for seeds 0 … ``seeds`` − 1 through the ablation runner (cells
    in ``root``, ``jobs`` at once with ``threads`` threads each; finished ones are read back); returns
    {row: per-seed values} for :data:`SEED_ROWS`."""
    sweep = Sweep(path=Path(config), base=Path(config), variants={"full": ()}, baseline="full", metrics=SEED_ROWS)
    summary = run_sweep(sweep, root, tuple(range(seeds)), overrides, echo=False, jobs=jobs, threads=threads)
    metrics = summary["variants"]["full"]["metrics"]
    return {row: metrics[row]["values"] for row in SEED_ROWS}


def run_demo(args: argparse.Namespace) -> dict:
    """Every stage of the demo; returns the summary written to demo_summary.json."""
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: give the number of training seeds, at least 1 (default 3)")
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give the CPU threads to use, at least 1")
    jobs = min(args.threads, args.seeds)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    overrides = [f"dataset.root={args.root}", f"work_dir={args.work_dir}", "device=cpu",
                 *(QUICK if args.quick else []), *args.overrides]
    cfg = load_config(args.config, overrides)
    started = time.time()
    prepare_dataset(Path(args.root), args.num_train, args.num_val)
    work = Path(args.work_dir)
    summary: dict = {"background": background_baseline(cfg)}
    for key, switches in TRAINING_FREE.items():
        variant = load_config(args.config, overrides + [f"dataset.split={cfg.dataset.val_split}", *switches])
        summary[key] = run_pseudo_labels(variant, out_dir=work / f"pseudo_labels_val_{key}")["miou"]
    per_seed = run_seed_rows(args.config, overrides, work / "seeds", args.seeds, jobs, args.threads // jobs)
    for row, values in per_seed.items():
        summary[row] = math.fsum(values) / len(values)
    summary["std"] = {row: statistics.stdev(values) if len(values) > 1 else None for row, values in per_seed.items()}
    summary["seeds"] = per_seed
    summary["claims"] = check_claims({**{key: summary[key] for key in TRAINING_FREE}, **per_seed})
    summary["minutes"] = (time.time() - started) / 60
    write_json(work / "demo_summary.json", summary)
    print_table(summary, args.threads)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-demo`` and tools/demo.py (folders relative to the current one)."""
    parser = argparse.ArgumentParser(description="Run the ExCEL demo on synthetic shapes with the tiny CLIP.")
    parser.add_argument("--config", default="configs/demo.yaml", help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("--root", help="synthetic dataset folder (default: data/synthetic, with --quick "
                                       "data/synthetic_quick)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/demo, with --quick work_dirs/demo_quick)")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="CPU threads in all: the training-free rows use them in the demo process; the "
                             "seeds run min(threads, seeds) at once, each in a process with the threads shared out "
                             "(the data loader and CRF workers of configs/demo.yaml come on top)")
    parser.add_argument("--seeds", type=int, help="training seeds 0 … N−1 for the seed-dependent rows (default 3, "
                                                   "with --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a few iterations on a few images (smoke test)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_intermixed_args(argv)
    suffix = "_quick" if args.quick else ""
    args.root = args.root or f"data/synthetic{suffix}"
    args.work_dir = args.work_dir or f"work_dirs/demo{suffix}"
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.quick:
        args.num_train, args.num_val = min(args.num_train, 8), min(args.num_val, 4)
    run_command(lambda: run_demo(args), lambda: args.work_dir)
