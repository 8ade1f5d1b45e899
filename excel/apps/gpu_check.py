"""The GPU check: the CUDA tests, the benchmark in fp32/bf16/fp16 and a timed synthetic training run, in one table.

    python tools/gpu_check.py --out DIR [--device cuda] [--iters 200] [--precision bf16] [--dry-run]
                              [section.key=value ...]
    python tools/gpu_check.py --train-only --out DIR [...]      the training step alone

Each step runs as its own process (:func:`run_steps`), its output in ``DIR/logs/<step>.log``; a failing
step is reported and the next one still runs. The steps: the device-parametrised tests
(``EXCEL_TEST_DEVICE``), ``tools/benchmark.py`` once per precision (reports
``DIR/benchmark/benchmark_<device>_<precision>.json``), and the training step: a random ViT-B/16
(``clip.pretrained=null tse.enabled=false``, batch 4 at 320²) trained on synthetic VOC-sized scenes
(written once under ``DIR/data``) for ``--iters`` iterations, the dynamic phase from the middle, every
iteration timed, peak memory recorded. The table (``DIR/gpu_check.md``, rows in ``DIR/gpu_check.json``)
lists each step's status, the benchmark's main stages per precision, the training phases and the projected
time of the VOC schedule. A rerun into the same DIR replaces its own files.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from excel.apps.benchmark import report_stem
from excel.cli import run_command
from excel.config import load_config
from excel.engine.trainer import Trainer
from excel.io import atomic_write
from excel.prep.synthetic_dataset import write_synthetic_dataset
from excel.utils import distributed as dist
from excel.utils.precision import PRECISIONS

WARMUP_ITERS = 5              # iterations of each phase left out of the medians (allocator, autotuning)
FORWARD_REPEATS = 5
VAL_IMAGES = 4
CUDA_TESTS = ("tests/test_par.py", "tests/test_refine.py", "tests/test_backbone.py", "tests/test_segment.py",
              "tests/test_losses.py")
BENCHMARK_ROWS = ("frozen_forward", "par", "static_iteration", "dynamic_iteration", "training_free_label",
                  "multiscale_inference")
VOC_CONFIG = "configs/voc.yaml"   # whose schedule (static iterations, then dynamic) the check projects
TRAIN_ROWS = "train_rows.json"


@dataclass
class StepResult:
    """How one step ended: its exit code (0: passed), seconds and log file."""

    name: str
    returncode: int
    seconds: float
    log: str


def run_steps(steps: Sequence[tuple[str, list[str]]], log_dir: Path, env: dict[str, str] | None = None
              ) -> list[StepResult]:
    """Run every (name, command) in order, each to ``log_dir/<name>.log``; a failure does not stop the others."""
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, command in steps:
        log = log_dir / f"{name}.log"
        start = time.perf_counter()
        with open(log, "w") as out:
            try:
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            except OSError as err:              # the command could not be started at all
                out.write(f"{err}\n")
                code = 127
        result = StepResult(name, code, time.perf_counter() - start, str(log))
        print(f"step {name}: {'passed' if code == 0 else f'FAILED (exit {code}, see {log})'} "
              f"in {result.seconds:.0f} s", flush=True)
        results.append(result)
    return results


def plan(args: argparse.Namespace, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """The steps of a check: the CUDA tests, the benchmark per precision, the training step."""
    out = Path(args.out)
    steps = [("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS])]
    for precision in PRECISIONS:
        steps.append((f"benchmark_{precision}", [
            python, "tools/benchmark.py", "--device", args.device, "--precision", precision, "--repeats", "3",
            "--warmup", "1", "--out", str(out / "benchmark"), *args.overrides]))
    steps.append(("training", [
        python, "tools/gpu_check.py", "--train-only", "--out", str(out), "--device", args.device,
        "--iters", str(args.iters), "--precision", args.precision, "--images", str(args.images), *args.overrides]))
    return steps


# -- the training step ---------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def timed_steps(trainer: Trainer, seconds: dict[int, float]) -> Callable[..., dict]:
    """``trainer.train_step`` that records each iteration's seconds (device work included) in ``seconds``."""
    step = trainer.train_step

    def run(batch: dict, it: int, **options) -> dict:
        _synchronize(trainer.device)
        start = time.perf_counter()
        out = step(batch, it, **options)
        _synchronize(trainer.device)
        seconds[it] = time.perf_counter() - start
        return out

    return run


def forward_seconds(trainer: Trainer) -> float:
    """Median seconds of the frozen forward on one process's training batch, in the run's precision."""
    cfg, device = trainer.cfg, trainer.device
    images = torch.randn(trainer.batch_per_process, 3, cfg.train.crop_size, cfg.train.crop_size, device=device)
    times = []
    for _ in range(1 + FORWARD_REPEATS):
        _synchronize(device)
        start = time.perf_counter()
        trainer.model.encode(images)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _after_warmup(times: list[float]) -> list[float]:
    """The iterations after the first WARMUP_ITERS of a phase (all of them when the phase is that short)."""
    return times[WARMUP_ITERS:] if len(times) > WARMUP_ITERS else times


def phase_row(name: str, seconds: Sequence[float], forward: float, peak_mib: float) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"row": name, "seconds": median, "ratio": median / forward, "peak_mib": peak_mib, "count": len(seconds),
            "reference": "training run: frozen forward"}


def training_check(cfg, iters: int, lvc_start: int) -> list[dict[str, Any]]:
    """Train for ``iters`` iterations; rows for the forward, the static and dynamic phases and the projected
    time of the VOC schedule (static median × lvc.start_iter + dynamic median × the rest of train.max_iters
    in configs/voc.yaml)."""
    trainer = Trainer(cfg)
    seconds: dict[int, float] = {}
    trainer.train_step = timed_steps(trainer, seconds)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        trainer.run()
    finally:
        trainer.close()
        dist.cleanup()
    peak = _peak_mib(trainer.device)
    forward = forward_seconds(trainer)
    phases = {"static": _after_warmup([s for it, s in sorted(seconds.items()) if it < lvc_start]),
              "dynamic": _after_warmup([s for it, s in sorted(seconds.items()) if it >= lvc_start])}
    rows = [phase_row("training run: frozen forward", [forward], forward, float("nan"))]
    rows += [phase_row(f"training run: {name} iteration", times, forward, peak) for name, times in phases.items()
             if times]
    if all(phases.values()):
        voc = load_config(VOC_CONFIG)
        schedule = (voc.lvc.start_iter, voc.train.max_iters - voc.lvc.start_iter)
        medians = [statistics.median(phases[name]) for name in ("static", "dynamic")]
        total = sum(m * n for m, n in zip(medians, schedule))
        rows.append({"row": f"projected VOC schedule ({voc.train.max_iters:,} iterations), hours",
                     "seconds": total / 3600, "ratio": float("nan"), "peak_mib": peak, "count": voc.train.max_iters,
                     "reference": "-"})
    return rows


# -- the table -----------------------------------------------------------------------------------------------
def benchmark_rows(folder: Path, device: str) -> list[dict[str, Any]]:
    """The main rows of every ``benchmark_<device>_<precision>.json`` in ``folder`` (ratios to each stage's own
    reference); a precision without a report is left out."""
    rows = []
    for precision in PRECISIONS:
        path = folder / f"{report_stem(device, precision)}.json"
        if not path.exists():
            continue
        stages = json.loads(path.read_text())["stages"]
        rows += [{"row": f"benchmark {precision}: {name}", "seconds": stages[name]["median_s"],
                  "ratio": stages[name]["ratio"], "peak_mib": stages[name]["peak_memory_mib"],
                  "count": len(stages[name]["times_s"]), "reference": stages[name]["reference"]}
                 for name in BENCHMARK_ROWS if name in stages]
    return rows


def table(steps: Sequence[StepResult], rows: Sequence[dict[str, Any]], device: str) -> str:
    """One Markdown text: the steps' status, then the timing rows."""
    lines = ["| step | status | seconds | log |", "| --- | --- | ---: | --- |"]
    lines += [f"| {s.name} | {'passed' if s.returncode == 0 else f'FAILED (exit {s.returncode})'} | "
              f"{s.seconds:.0f} | {s.log} |" for s in steps]
    lines += ["", f"| {device} | median (s) | × reference | reference | peak memory (MiB) | samples |",
              "| --- | ---: | ---: | --- | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['row']} | {row['seconds']:.3f} | {row['ratio']:.2f} | {row['reference']} | "
                     f"{row['peak_mib']:.0f} | {row['count']} |")
    return "\n".join(lines) + "\n"


def write_table(out: Path, device: str, steps: Sequence[StepResult]) -> str:
    """Gather the benchmark reports and the training rows found under ``out``; write and return the table."""
    train = out / TRAIN_ROWS
    rows = benchmark_rows(out / "benchmark", device.split(":")[0])
    rows += json.loads(train.read_text()) if train.exists() else []
    text = table(steps, rows, device)
    atomic_write(out / "gpu_check.md", lambda tmp: tmp.write_text(text))
    atomic_write(out / "gpu_check.json", lambda tmp: tmp.write_text(json.dumps(
        {"steps": [asdict(s) for s in steps], "rows": rows}, indent=2)))
    return text


# -- the command line ----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """The command line of ``excel-gpu-check``, tools/gpu_check.py and tools/gpu_check.sh."""
    parser = argparse.ArgumentParser(description="CUDA tests, benchmark per precision and a timed synthetic "
                                                 "training run, in one table.")
    parser.add_argument("--out", default="work_dirs/gpu_check", help="output folder (default work_dirs/gpu_check)")
    parser.add_argument("--config", default="configs/voc.yaml", help="YAML config (default: configs/voc.yaml)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--iters", type=int, default=200, help="training iterations (default 200)")
    parser.add_argument("--precision", default="bf16", choices=tuple(PRECISIONS),
                        help="precision of the training step (default bf16)")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (default 64)")
    parser.add_argument("--train-only", action="store_true", help="run the training step alone")
    parser.add_argument("--dry-run", action="store_true", help="print the steps' commands, run nothing")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.iters < 2 or args.images < 1:
        parser.error(f"--iters must be at least 2 and --images positive, got {args.iters} and {args.images}")
    if args.dry_run:
        for name, command in plan(args):
            print(f"{name}: {shlex.join(command)}")
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was asked for but CUDA is not available; use --device cpu")
    run_command(lambda: training_step_only(args) if args.train_only else check(args), lambda: args.out)


def check(args: argparse.Namespace) -> str:
    """Every step, then the table (printed and written)."""
    out = Path(args.out)
    env = {**os.environ, "EXCEL_TEST_DEVICE": args.device}
    steps = run_steps(plan(args), out / "logs", env)
    text = write_table(out, args.device, steps)
    print(text)
    return text


def training_step_only(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Draw the data (once), train, time; the rows go to ``DIR/train_rows.json``."""
    out = Path(args.out)
    data = out / "data"
    if not (data / "splits" / "labels.json").exists():
        write_synthetic_dataset(data, args.images, VAL_IMAGES, min_size=330, max_size=420)
    lvc_start = args.iters // 2
    cfg = load_config(args.config, [
        "clip.pretrained=null", "tse.enabled=false", f"device={args.device}", f"dataset.root={data}",
        "dataset.train_split=train", "dataset.val_split=val", "train.batch_size=4", "train.crop_size=320",
        f"precision={args.precision}", f"train.max_iters={args.iters}", f"lvc.start_iter={lvc_start}",
        f"train.eval_interval={args.iters}", "train.num_workers=2", "train.overwrite=true",
        f"work_dir={out / 'run'}", *args.overrides])
    rows = training_check(cfg, args.iters, lvc_start)
    atomic_write(out / TRAIN_ROWS, lambda tmp: tmp.write_text(json.dumps(rows, indent=2)))
    print(table([], rows, args.device))
    return rows
