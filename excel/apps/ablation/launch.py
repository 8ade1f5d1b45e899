"""Where the cells run: ``local`` (one after another in this process, each as a torchrun job of
``nproc`` processes, or ``jobs`` at once in processes of their own: a CPU sweep, one cell per core) or
``slurm`` through submitit (one job per cell; submitit's ``local`` cluster runs the same jobs as local
processes)."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from excel.apps.ablation.cell import Cell, finished_result, run_cell
from excel.apps.ablation.sweep import Sweep
from excel.config import ConfigError


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of one cell's job (submitit's parameters)."""
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_cell: int = 1
    cpus_per_task: int = 8
    cluster: str = "slurm"          # "local": the jobs run as local processes (tests, a workstation)


CONSOLE_FILE = "console.log"      # a cell's console output when it runs beside others (``jobs`` > 1)


def run_local(sweep: Sweep, cells: Sequence[Cell], root: Path, overrides: Sequence[str], nproc: int = 1,
              jobs: int = 1, threads: int = 1) -> None:
    """Run ``cells`` one after another (in this process, or each under ``torchrun --nproc_per_node nproc``)
    or, with ``jobs`` > 1, that many at once, each in a process of its own with ``threads`` torch threads."""
    if jobs > 1:
        if nproc > 1:
            raise ConfigError(f"--jobs {jobs} with --nproc-per-cell {nproc}: run cells at once or each as a "
                              "torchrun job, not both")
        run_parallel(sweep, cells, root, overrides, jobs, threads)
        return
    for cell in cells:
        print(f"cell {cell}", flush=True)
        if nproc == 1:
            run_cell(sweep, cell, root, overrides)
            continue
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "excel.apps.ablate", str(sweep.path), "--work-dir", str(root),
                   "--cell", f"{cell.variant}:{cell.seed}", *overrides]
        if subprocess.run(command, check=False).returncode != 0:
            raise ConfigError(f"cell {cell} failed (its torchrun job's errors are above; the log is in "
                              f"{cell.folder(root)}); the same command resumes the sweep")


def _cell_process(sweep: Sweep, cell: Cell, root: Path, overrides: list[str], threads: int) -> float:
    """One cell in a worker process: its console output goes to <cell>/console.log; returns its minutes."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    started = time.time()
    folder = cell.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CONSOLE_FILE, "a") as console, contextlib.redirect_stdout(console), \
            contextlib.redirect_stderr(console):
        try:
            run_cell(sweep, cell, root, overrides)
        except BaseException:
            traceback.print_exc()
            raise
    return (time.time() - started) / 60


def run_parallel(sweep: Sweep, cells: Sequence[Cell], root: Path, overrides: Sequence[str], jobs: int,
                 threads: int) -> None:
    """Run ``cells`` ``jobs`` at a time in spawned processes; every cell runs even when another fails."""
    failed = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(cells)), mp_context=context) as pool:
        futures = {}
        for cell in cells:
            futures[pool.submit(_cell_process, sweep, cell, root, list(overrides), threads)] = cell
            print(f"cell {cell} (console: {cell.folder(root) / CONSOLE_FILE})", flush=True)
        for future in as_completed(futures):
            cell = futures[future]
            try:
                print(f"cell {cell} finished in {future.result():.1f} minutes", flush=True)
            except Exception as err:          # its traceback is in the cell's console.log
                failed.append(f"{cell} ({str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)})")
    if failed:
        raise ConfigError(f"{len(failed)} cell(s) failed: {'; '.join(failed)}; see their {CONSOLE_FILE}; "
                          "the same command resumes the sweep")


def _cell_job(sweep: Sweep, cell: Cell, root: str, overrides: list[str]) -> dict[str, float]:
    """One Slurm task of a cell's job: torch.distributed's variables from Slurm's, then the cell."""
    import submitit

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return run_cell(sweep, cell, Path(root), overrides)


def run_slurm(sweep: Sweep, cells: Sequence[Cell], root: Path, overrides: Sequence[str], options: SlurmOptions) -> None:
    """Submit one job per cell (``gpus_per_cell`` tasks on one node) and wait for all of them."""
    import submitit

    executor = submitit.AutoExecutor(folder=root / "submitit" / "%j", cluster=options.cluster)
    tasks = max(1, options.gpus_per_cell)
    executor.update_parameters(name=f"ablate-{sweep.path.stem}", timeout_min=options.time_min, nodes=1,
                               tasks_per_node=tasks, gpus_per_node=options.gpus_per_cell,
                               cpus_per_task=options.cpus_per_task)
    if options.partition:
        executor.update_parameters(slurm_partition=options.partition)
    jobs = [(cell, executor.submit(_cell_job, sweep, cell, str(root), list(overrides))) for cell in cells]
    for cell, job in jobs:
        print(f"cell {cell}: job {job.job_id}", flush=True)
    failed = []
    for cell, job in jobs:
        try:
            job.result()
        except Exception as err:          # the job's own traceback is in its submitit log
            failed.append(f"{cell} (job {job.job_id}: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r})")
    if failed:
        raise ConfigError(f"{len(failed)} cell(s) failed: {'; '.join(failed)}; their logs are under {root / 'submitit'}; "
                          "the same command resumes the sweep")


def collect(sweep: Sweep, seeds: Sequence[int], root: Path, overrides: Sequence[str]) -> dict[str, dict[str, list]]:
    """``results[variant][metric]`` = values in seed order (None where a cell has no result)."""
    results: dict[str, dict[str, list]] = {}
    for variant in sweep.variants:
        per_seed = [finished_result(sweep, Cell(variant, seed), root, overrides) for seed in seeds]
        results[variant] = {m: [r[m] if r is not None else None for r in per_seed] for m in sweep.metrics}
    return results
