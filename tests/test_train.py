"""Training on a tiny dataset with a tiny CLIP: the loss falls, checkpoints and logs are written, resume is exact."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.config import load_config
from excel.engine import step as iteration
from excel.engine import trainer as engine
from excel.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def train_cfg(tiny_voc, clip_files, tmp_path, name, **extra):
    values = {"dataset.root": tiny_voc, "train.batch_size": 2, "train.max_iters": 24, "train.eval_interval": 12,
              "train.log_interval": 1, "lvc.start_iter": 8, "train.aff_switch_iter": 16, "optim.warmup_iters": 2,
              "optim.lr": 3e-3, "work_dir": tmp_path / name, "tse.enabled": False}
    values.update(extra)
    return load_config(ROOT / "configs/voc.yaml", tiny_overrides(clip_files, tmp_path / "cache", **values))


@pytest.fixture(scope="module")
def full_run(tiny_voc, tiny_clip_files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    return engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp, "full")), tmp


def test_loss_falls_and_outputs_are_written(full_run):
    trainer, _ = full_run
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    work = trainer.work_dir
    assert {p.name for p in (work / "checkpoints").iterdir()} == {"iter_000012.pth", "iter_000024.pth", "latest.pth"}
    assert "iter 24/24" in (work / "train.log").read_text()
    assert (work / "config.yaml").is_file() and list((work / "tensorboard").iterdir())
    assert (work / "metrics" / "iter_000024_pseudo_label.json").is_file()
    assert (work / "metrics" / "iter_000024_decoder.txt").is_file()
    state = load_checkpoint(work / "checkpoints" / "iter_000012.pth")
    assert state["iteration"] == 12 and state["num_classes"] == 20 and "optimizer" in state


def test_resume_reproduces_the_uninterrupted_run(full_run, tiny_voc, tiny_clip_files):
    trainer, tmp = full_run
    resumed = engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp, "resumed"),
                           resume=str(trainer.work_dir / "checkpoints" / "iter_000012.pth"))
    assert [h["iter"] for h in resumed.history] == list(range(13, 25))
    assert resumed.history == trainer.history[12:]
    final = load_checkpoint(trainer.work_dir / "checkpoints" / "iter_000024.pth")["head"]
    again = load_checkpoint(resumed.work_dir / "checkpoints" / "iter_000024.pth")["head"]
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key


def test_static_to_dynamic_switch_and_affinity_target_switch(tiny_voc, tiny_clip_files, tmp_path, monkeypatch):
    cfg = train_cfg(tiny_voc, tiny_clip_files, tmp_path, "switch", **{"train.max_iters": 6, "lvc.start_iter": 3,
                                                                       "train.aff_switch_iter": 4,
                                                                       "train.eval_interval": 100})
    trainer = engine.Trainer(cfg)
    calls = []
    for name in ("static_cams", "dynamic_cams"):
        original = getattr(trainer.model, name)
        monkeypatch.setattr(trainer.model, name, lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    targets = []
    original_targets = iteration.affinity_targets
    monkeypatch.setattr(iteration, "affinity_targets", lambda labels, *a: targets.append(labels) or original_targets(labels, *a))
    data = iter(trainer.loader)
    steps = [trainer.train_step(next(data), it) for it in range(6)]
    assert calls == ["static_cams"] * 3 + ["dynamic_cams"] * 3
    for it, (step, target) in enumerate(zip(steps, targets)):
        expected = step["logits"].argmax(1) if it >= 4 else step["labels"]
        assert torch.equal(target, expected)


def test_nan_loss_stops_with_iteration_and_keeps_checkpoint(tiny_voc, tiny_clip_files, tmp_path, monkeypatch):
    cfg = train_cfg(tiny_voc, tiny_clip_files, tmp_path, "nan", **{"train.max_iters": 8, "train.eval_interval": 2})
    real = iteration.seg_loss
    count = {"n": 0}

    def flaky(*args):
        count["n"] += 1
        loss = real(*args)
        return loss * float("nan") if count["n"] == 4 else loss

    monkeypatch.setattr(iteration, "seg_loss", flaky)
    with pytest.raises(iteration.TrainingError, match=r"at iteration 3.*iter_000002.pth"):
        engine.train(cfg)
    assert load_checkpoint(tmp_path / "nan" / "checkpoints" / "latest.pth")["iteration"] == 2


def test_missing_dataset_names_the_fix(tiny_clip_files, tmp_path):
    cfg = train_cfg(tmp_path / "absent", tiny_clip_files, tmp_path, "absent")
    with pytest.raises(FileNotFoundError, match="make_splits.py"):
        engine.train(cfg)


def test_two_process_cpu_run_through_launcher(tiny_voc, tiny_clip_files, tmp_path):
    work = tmp_path / "ddp"
    args = tiny_overrides(tiny_clip_files, tmp_path / "cache", **{
        "dataset.root": tiny_voc, "train.batch_size": 1, "train.max_iters": 4, "train.eval_interval": 4,
        "train.log_interval": 2, "lvc.start_iter": 2, "tse.enabled": False, "work_dir": work})
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "run_train.sh"), "scripts/train_voc.py", "0", "2", "", "", *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "checkpoints" / "iter_000004.pth").is_file()
    log = (work / "train.log").read_text()
    assert "iter 4/4" in log and "pseudo_label" in log
