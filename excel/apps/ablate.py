"""The ablation runner (tools/ablate.py, excel-ablate): every (variant, seed) cell of a sweep file
trained and evaluated, then the spread over seeds and the paired differences to the baseline.

    python tools/ablate.py configs/ablations/voc.yaml --work-dir work_dirs/ablate_voc --seeds 0,1,2 [section.key=value ...]

Resumable: the same command again skips finished cells, continues an interrupted one from its
checkpoint and rewrites ``ablation.{json,md,csv}`` in --work-dir. docs/ablations.md has the details.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from excel.apps.ablation.cell import Cell, finished_result, run_cell
from excel.apps.ablation.launch import SlurmOptions, collect, run_local, run_slurm
from excel.apps.ablation.report import REPORT_FILES, write_report
from excel.apps.ablation.stats import summarize
from excel.apps.ablation.sweep import Sweep, check_variants, load_sweep, parse_seeds
from excel.cli import run_command
from excel.config import ConfigError
from excel.data.layout import dataset_folders
from excel.io import check_output_folder


def run_sweep(sweep: Sweep, root: Path, seeds: Sequence[int], overrides: Sequence[str] = (),
              launcher: str = "local", nproc: int = 1, slurm: SlurmOptions | None = None,
              echo: bool = True, jobs: int = 1, threads: int = 1) -> dict:
    """Run every unfinished cell, then summarise; returns the summary (as in ablation.json) and writes
    the tables into ``root`` (printing the Markdown one when ``echo``)."""
    check_variants(sweep, overrides)
    dataset_root = sweep.config(sweep.baseline, overrides).dataset.root
    check_output_folder(root, dataset_folders(Path(dataset_root)) if dataset_root is not None else (),
                        inside=(*REPORT_FILES, "submitit", *sweep.variants))
    cells = [Cell(variant, seed) for variant in sweep.variants for seed in seeds]
    todo = [cell for cell in cells if finished_result(sweep, cell, root, overrides) is None]
    if len(todo) < len(cells):
        print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished in {root}", flush=True)
    if todo and launcher == "slurm":
        run_slurm(sweep, todo, root, overrides, slurm or SlurmOptions())
    elif todo:
        run_local(sweep, todo, root, overrides, nproc, jobs, threads)
    summary = summarize(collect(sweep, seeds, root, overrides), sweep.baseline)
    table = write_report(root, summary, sweep.metrics, sweep.baseline, seeds)
    if echo:
        print(table, flush=True)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run a sweep of config variants × seeds and tabulate mean ± std and "
                                            "paired differences to the baseline variant.")
    p.add_argument("sweep", help="sweep file (e.g. configs/ablations/voc.yaml)")
    p.add_argument("--work-dir", required=True, help="folder of the cells (<variant>/seed_<n>) and the tables")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: cells here (one after another, or --jobs at once); slurm: one submitit job per cell")
    p.add_argument("--nproc-per-cell", type=int, default=1,
                   help="local launcher: processes (GPUs) per cell, each cell a torchrun job when > 1")
    p.add_argument("--jobs", type=int, default=1,
                   help="local launcher: cells at once, each in a process of its own (a CPU sweep: one per core)")
    p.add_argument("--threads-per-job", type=int, default=1, help="local launcher with --jobs: torch threads of each")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--time", type=int, default=24 * 60, help="slurm: time limit of a cell's job in minutes")
    p.add_argument("--gpus-per-cell", type=int, default=1, help="slurm: GPUs (= tasks) of a cell's job")
    p.add_argument("--cpus-per-task", type=int, default=8, help="slurm: CPUs per task")
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="slurm launcher: submitit's cluster ('local' runs the jobs as local processes)")
    p.add_argument("--cell", help=argparse.SUPPRESS)      # VARIANT:SEED, one cell (a torchrun job's ranks)
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for every cell")
    return p


def run(args: argparse.Namespace) -> None:
    sweep = load_sweep(args.sweep)
    root = Path(args.work_dir)
    if args.cell is not None:
        variant, _, seed = args.cell.rpartition(":")
        run_cell(sweep, Cell(variant, int(seed)), root, args.overrides)
        return
    if min(args.nproc_per_cell, args.time, args.jobs, args.threads_per_job) < 1 or args.gpus_per_cell < 0:
        raise ConfigError("--nproc-per-cell, --jobs, --threads-per-job and --time must be ≥ 1, --gpus-per-cell ≥ 0")
    slurm = SlurmOptions(args.partition, args.time, args.gpus_per_cell, args.cpus_per_task, args.cluster)
    run_sweep(sweep, root, parse_seeds(args.seeds), args.overrides, args.launcher, args.nproc_per_cell, slurm,
              jobs=args.jobs, threads=args.threads_per_job)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_intermixed_args(argv)
    run_command(lambda: run(args), lambda: args.work_dir)
