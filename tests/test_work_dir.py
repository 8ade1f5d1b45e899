"""Where a training start begins, the work_dir lock and the checkpoints kept (excel/engine/work_dir.py), on
small checkpoint files written here."""
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from excel.cli import work_dir_given
from excel.config import ConfigError, load_config
from excel.modeling.checkpoint import save_checkpoint
from excel.engine.work_dir import (
    AUTO,
    RunLock,
    per_process_batch_note,
    plan_start,
    point_to,
    prune_checkpoints,
    record_best,
)

ROOT = Path(__file__).resolve().parents[1]


def config(work: Path, **extra):
    return load_config(ROOT / "configs" / "voc.yaml", [f"work_dir={work}", *(f"{k}={v}" for k, v in extra.items())])


def write(work: Path, iteration: int, run: str, job: str | None, cfg=None) -> Path:
    """A training checkpoint of run ``run`` written by job ``job`` with ``cfg`` (default: this work_dir's)."""
    cfg = cfg if cfg is not None else config(work)
    path = work / "checkpoints" / f"iter_{iteration:06d}.pth"
    save_checkpoint(path, {"head": {}, "optimizer": {}, "scheduler": {}, "iteration": iteration,
                           "rng": {"torch": torch.get_rng_state(), "cuda": []},
                           "config": OmegaConf.to_yaml(cfg, resolve=True), "run": {"id": run, "job": job}})
    point_to(path.with_name("latest.pth"), path)
    return path


def test_a_fresh_start_is_refused_into_checkpoints_and_clears_them_with_overwrite(tmp_path):
    write(tmp_path, 4, "r1", "job-a")
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(iter_000004.pth, latest.pth in .*"
                                          r"--resume auto .*train.overwrite=true"):
        plan_start(config(tmp_path), None, False, restarted=False, job="job-b")
    plan = plan_start(config(tmp_path, **{"train.overwrite": True}), None, False, restarted=False, job="job-b")
    assert plan.resume is None and plan.clear and plan.run_id != "r1"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_restarted_job_resumes_from_its_own_newest_checkpoint_only(tmp_path, overwrite):
    cfg = config(tmp_path, **{"train.overwrite": overwrite})
    mine = write(tmp_path, 4, "r1", "job-a", cfg)
    write(tmp_path, 6, "r1", "job-a", config(tmp_path, **{"train.overwrite": overwrite, "optim.lr": 0.5}))
    write(tmp_path, 8, "r1", "job-b", cfg)                                      # another job
    plan = plan_start(cfg, None, False, restarted=True, job="job-a")
    assert (plan.resume, plan.run_id, plan.clear) == (str(mine), "r1", False)
    if not overwrite:                     # no checkpoint of job-c: as a fresh start, refused
        with pytest.raises(ConfigError, match="already holds checkpoints"):
            plan_start(cfg, None, False, restarted=True, job="job-c")
    empty = plan_start(config(tmp_path / "empty"), None, False, restarted=True, job="job-a")
    assert empty.resume is None and "no checkpoint of it yet" in empty.note


def test_resume_auto_takes_the_newest_complete_checkpoint_or_starts_afresh(tmp_path):
    assert plan_start(config(tmp_path), AUTO, False, restarted=False, job=None).resume is None
    write(tmp_path, 4, "r1", "job-a")
    newest = write(tmp_path, 8, "r1", "job-b")
    (tmp_path / "checkpoints" / "iter_000012.pth").write_bytes(b"cut short")         # unreadable: skipped
    plan = plan_start(config(tmp_path), AUTO, False, restarted=False, job=None)
    assert (plan.resume, plan.run_id) == (str(newest), "r1")
    for path in (tmp_path / "checkpoints").glob("iter_*.pth"):
        path.write_bytes(b"cut short")
    with pytest.raises(ConfigError, match="--resume auto: no checkpoint in .* can be read"):
        plan_start(config(tmp_path), AUTO, False, restarted=False, job=None)


def test_resume_continues_in_the_checkpoints_own_work_dir_and_refuses_another_runs(tmp_path):
    checkpoint = write(tmp_path / "run1", 4, "r1", "job-a")
    plan = plan_start(config(tmp_path / "default"), str(checkpoint.with_name("latest.pth")), True, False, "job-b")
    assert (plan.work_dir, plan.resume, plan.run_id) == (str(tmp_path / "run1"), str(checkpoint.with_name("latest.pth")), "r1")
    assert plan_start(config(tmp_path / "new"), str(checkpoint), False, False, "job-b").work_dir == str(tmp_path / "new")
    write(tmp_path / "same_run", 2, "r1", "job-a")
    assert plan_start(config(tmp_path / "same_run"), str(checkpoint), False, False, "job-b").resume == str(checkpoint)
    write(tmp_path / "other_run", 8, "r2", "job-c")
    with pytest.raises(ConfigError, match=r"work_dir .*other_run holds the checkpoints of another run "
                                          r"\(iter_000008.pth, latest.pth in .*\); resume into the checkpoint's own "
                                          rf"work_dir {tmp_path / 'run1'}"):
        plan_start(config(tmp_path / "other_run"), str(checkpoint), False, False, "job-b")
    assert work_dir_given(["optim.lr=1", " work_dir =x"]) and not work_dir_given(["train.work_dir_note=1"])


def test_a_second_run_into_a_locked_work_dir_is_refused(tmp_path):
    first = RunLock(tmp_path)
    with pytest.raises(ConfigError, match=rf"work_dir {tmp_path} is in use by another training run \(pid "
                                          rf"{os.getpid()} on .*wait for it to end"):
        RunLock(tmp_path)
    first.release()
    RunLock(tmp_path).release()


def test_pruning_keeps_the_last_k_and_the_best(tmp_path):
    folder = tmp_path / "checkpoints"
    for it, miou in ((2, 40.0), (4, 55.0), (6, 50.0), (8, 45.0)):
        write(tmp_path, it, "r1", None)
        record_best(folder, it, miou)
        prune_checkpoints(folder, 2)
    assert sorted(p.name for p in folder.glob("iter_*.pth")) == ["iter_000004.pth", "iter_000006.pth",
                                                                 "iter_000008.pth"]
    assert json.loads((folder / "best.json").read_text()) == {"checkpoint": "iter_000004.pth", "iteration": 4,
                                                              "miou": 55.0}
    assert os.readlink(folder / "best.pth") == "iter_000004.pth" and os.readlink(folder / "latest.pth") == "iter_000008.pth"
    assert prune_checkpoints(folder, None) == []


def test_a_multi_process_checkpoint_of_the_per_process_batch_meaning_is_named_with_its_global_batch(tmp_path):
    cfg = config(tmp_path / "w")
    current = OmegaConf.to_yaml(cfg)
    old = OmegaConf.create(current)
    del old["precision"]
    old.train.batch_size = 4
    old_state = {"config": OmegaConf.to_yaml(old), "rng_ranks": [{}, {}, {}]}
    note = per_process_batch_note(old_state, "old.pth")
    assert "old.pth" in note and "4 × 3 = 12 images per iteration" in note
    assert "train.batch_size=12 train.resume_allow_changes=true" in note
    assert per_process_batch_note({**old_state, "rng_ranks": [{}]}, "one.pth") is None       # one process: same batch
    assert per_process_batch_note({"config": current, "rng_ranks": [{}, {}]}, "new.pth") is None
    assert per_process_batch_note({"rng_ranks": [{}, {}]}, "bare.pth") is None
