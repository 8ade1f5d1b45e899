"""A short training run on synthetic VOC-shaped data, timed per iteration, and one table with the benchmark.

    python tools/gpu_check.py --out DIR [--device cuda] [--iters 200] [--lvc-start 100] [--images 64]
                              [--benchmark DIR/benchmark_cuda.json] [section.key=value ...]

Writes a synthetic dataset (excel/prep/synthetic_dataset.py) under ``DIR/data``, trains a random ViT-B/16
(``clip.pretrained=null tse.enabled=false``, batch 4 at 320², AMP on a GPU) for ``--iters`` iterations
with the dynamic phase from ``--lvc-start``, times every iteration and the frozen forward of a
training batch, and prints one Markdown table: static and dynamic iteration time (median after
``WARMUP_ITERS`` iterations of each phase), ratio to the forward and peak memory, with the rows of the
benchmark report when one is given. The table is also written to ``DIR/gpu_check.md``, its rows to
``DIR/gpu_check.json``.
tools/gpu_check.sh runs the test suite on the GPU, the benchmark and this run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from excel.cli import run_command
from excel.config import load_config
from excel.engine.trainer import Trainer
from excel.io import atomic_write
from excel.prep.synthetic_dataset import write_synthetic_dataset
from excel.utils import distributed as dist

WARMUP_ITERS = 5              # iterations of each phase left out of the medians (allocator, autotuning)
FORWARD_REPEATS = 5
VAL_IMAGES = 4
BENCHMARK_ROWS = ("frozen_forward", "par", "static_iteration", "dynamic_iteration", "training_free_label",
                  "multiscale_inference")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def timed_steps(trainer: Trainer, seconds: dict[int, float]) -> Callable[[dict, int], dict]:
    """``trainer.train_step`` that records each iteration's seconds (device work included) in ``seconds``."""
    step = trainer.train_step

    def run(batch: dict, it: int) -> dict:
        _synchronize(trainer.device)
        start = time.perf_counter()
        out = step(batch, it)
        _synchronize(trainer.device)
        seconds[it] = time.perf_counter() - start
        return out

    return run


def forward_seconds(trainer: Trainer) -> float:
    """Median seconds of the frozen forward on a training batch, as the training step runs it (AMP or not)."""
    cfg, device = trainer.cfg, trainer.device
    images = torch.randn(cfg.train.batch_size, 3, cfg.train.crop_size, cfg.train.crop_size, device=device)
    times = []
    for _ in range(1 + FORWARD_REPEATS):
        _synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, enabled=trainer.amp):
            trainer.model.encoder(images)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _after_warmup(times: list[float]) -> list[float]:
    """The iterations after the first WARMUP_ITERS of a phase (all of them when the phase is that short)."""
    return times[WARMUP_ITERS:] if len(times) > WARMUP_ITERS else times


def phase_row(name: str, seconds: Sequence[float], forward: float, peak_mib: float) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"row": name, "seconds": median, "ratio": median / forward, "peak_mib": peak_mib, "count": len(seconds)}


def training_check(cfg, iters: int, lvc_start: int) -> list[dict[str, Any]]:
    """Train for ``iters`` iterations; rows for the forward and the static and dynamic phases."""
    trainer = Trainer(cfg)
    seconds: dict[int, float] = {}
    trainer.train_step = timed_steps(trainer, seconds)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        trainer.run()
    finally:
        dist.cleanup()
    peak = _peak_mib(trainer.device)
    forward = forward_seconds(trainer)
    static = _after_warmup([s for it, s in sorted(seconds.items()) if it < lvc_start])
    dynamic = _after_warmup([s for it, s in sorted(seconds.items()) if it >= lvc_start])
    rows = [phase_row("training run: frozen forward", [forward], forward, float("nan"))]
    rows += [phase_row(f"training run: {name} iteration", times, forward, peak)
             for name, times in (("static", static), ("dynamic", dynamic)) if times]
    return rows


def benchmark_rows(path: Path) -> list[dict[str, Any]]:
    """The benchmark report's main rows (ratios to each stage's own reference)."""
    stages = json.loads(path.read_text())["stages"]
    return [{"row": f"benchmark: {name}", "seconds": stages[name]["median_s"], "ratio": stages[name]["ratio"],
             "peak_mib": stages[name]["peak_memory_mib"], "count": len(stages[name]["times_s"]),
             "reference": stages[name]["reference"]} for name in BENCHMARK_ROWS if name in stages]


def table(rows: Sequence[dict[str, Any]], device: str) -> str:
    lines = [f"| {device} | median (s) | × reference | reference | peak memory (MiB) | samples |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        reference = row.get("reference", "training run: frozen forward")
        lines.append(f"| {row['row']} | {row['seconds']:.3f} | {row['ratio']:.2f} | {reference} | "
                     f"{row['peak_mib']:.0f} | {row['count']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-gpu-check`` and tools/gpu_check.py."""
    parser = argparse.ArgumentParser(description="Timed synthetic training run (and the benchmark) in one table.")
    parser.add_argument("--out", required=True, help="output folder (dataset, run, table)")
    parser.add_argument("--config", default="configs/voc.yaml", help="YAML config (default: configs/voc.yaml)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--iters", type=int, default=200, help="training iterations (default 200)")
    parser.add_argument("--lvc-start", type=int, default=100, help="first dynamic iteration (default 100)")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (default 64)")
    parser.add_argument("--benchmark", help="benchmark_<device>.json whose rows join the table")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.iters < 1 or not 0 <= args.lvc_start <= args.iters or args.images < 1:
        parser.error("--iters and --images must be positive and --lvc-start between 0 and --iters")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was asked for but CUDA is not available; use --device cpu")
    run_command(lambda: gpu_check(args), lambda: args.out)


def gpu_check(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Draw the data, train, time; write the table (``gpu_check.md``) and its rows (``gpu_check.json``)."""
    out = Path(args.out)
    data = out / "data"
    if not (data / "splits" / "labels.json").exists():
        write_synthetic_dataset(data, args.images, VAL_IMAGES, min_size=330, max_size=420)
    cfg = load_config(args.config, [
        "clip.pretrained=null", "tse.enabled=false", f"device={args.device}", f"dataset.root={data}",
        "dataset.train_split=train", "dataset.val_split=val", "train.batch_size=4", "train.crop_size=320",
        f"train.amp={str(args.device.startswith('cuda')).lower()}", f"train.max_iters={args.iters}",
        f"lvc.start_iter={args.lvc_start}", f"train.eval_interval={args.iters}", "train.num_workers=2",
        f"work_dir={out / 'run'}", *args.overrides])
    rows = training_check(cfg, args.iters, args.lvc_start)
    if args.benchmark:
        rows = benchmark_rows(Path(args.benchmark)) + rows
    text = table(rows, args.device)
    atomic_write(out / "gpu_check.md", lambda tmp: tmp.write_text(text))
    atomic_write(out / "gpu_check.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=2)))
    print(text)
    return rows
