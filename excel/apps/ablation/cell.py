"""One cell of a sweep: a (variant, seed) pair trained and evaluated in its own work_dir,
``<work-dir>/<variant>/seed_<seed>``.

A cell is resumable: its result, ``cell.json``, is written last (atomically) together with the
resolved config it was made with, so a finished cell is read back, never run again; an interrupted one
continues from its newest checkpoint (``--resume`` semantics) or, with none, starts again.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from excel.apps.ablation.evaluate import evaluate_checkpoint
from excel.apps.ablation.sweep import Sweep
from excel.config import ConfigError
from excel.engine.trainer import train
from excel.io import write_json
from excel.utils import distributed as dist

RESULT_FILE = "cell.json"
_CHECKPOINT = re.compile(r"iter_(\d+)\.pth")


@dataclass(frozen=True, order=True)
class Cell:
    variant: str
    seed: int

    def folder(self, root: Path) -> Path:
        return Path(root) / self.variant / f"seed_{self.seed}"

    def __str__(self) -> str:
        return f"{self.variant}/seed_{self.seed}"


def cell_config_overrides(cell: Cell, root: Path, overrides: Sequence[str]) -> list[str]:
    """The command line's overrides, then the cell's seed and work_dir (which nothing may override)."""
    return [*overrides, f"train.seed={cell.seed}", f"work_dir={cell.folder(root)}"]


def finished_result(sweep: Sweep, cell: Cell, root: Path, overrides: Sequence[str]) -> dict[str, float] | None:
    """The metrics of a finished cell made with the same config (None when not finished); a cell made
    with another config, or missing a metric the sweep asks for, is refused rather than mixed in."""
    path = cell.folder(root) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        config, metrics = stored["config"], stored["metrics"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a cell result of this runner; delete it to run cell {cell} again") from None
    cfg = sweep.config(cell.variant, cell_config_overrides(cell, root, overrides))
    if config != OmegaConf.to_yaml(cfg, resolve=True):
        raise ConfigError(f"cell {cell} in {path.parent} was made with another config; delete that folder to run it "
                          "again with this one, or choose another --work-dir")
    missing = [m for m in sweep.metrics if m not in metrics]
    if missing:
        raise ConfigError(f"cell {cell} in {path.parent} has no {missing[0]!r}; delete {path} to evaluate it again")
    return {m: float(metrics[m]) for m in sweep.metrics}


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest iteration in ``folder`` (saves are atomic: present means complete)."""
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pth") if (m := _CHECKPOINT.fullmatch(p.name))]
    return max(found)[1] if found else None


def run_cell(sweep: Sweep, cell: Cell, root: Path, overrides: Sequence[str]) -> dict[str, float]:
    """Train (or finish training) and evaluate one cell; returns {metric: mIoU}. Under torchrun every
    rank calls this; rank 0 writes the result."""
    done = finished_result(sweep, cell, root, overrides)
    if done is not None:
        return done
    cfg = sweep.config(cell.variant, cell_config_overrides(cell, root, overrides))
    folder = cell.folder(root)
    final = folder / "checkpoints" / f"iter_{cfg.train.max_iters:06d}.pth"
    if not final.is_file():
        resume = newest_checkpoint(folder / "checkpoints")
        train(cfg, resume=str(resume) if resume is not None else None)
    device = dist.resolve_device(cfg.device)
    owns_process_group = not dist.is_distributed()      # training ended its own; evaluation shards again
    dist.init_distributed(device)
    try:
        metrics = evaluate_checkpoint(cfg, final, sweep.metrics, folder)
        if dist.is_main():
            write_json(folder / RESULT_FILE, {"variant": cell.variant, "seed": cell.seed, "metrics": metrics,
                                              "checkpoint": str(final),
                                              "config": OmegaConf.to_yaml(cfg, resolve=True)})
        dist.barrier()
    finally:
        if owns_process_group:
            dist.cleanup()
    return metrics
