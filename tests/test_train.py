"""Training on a tiny dataset with a tiny CLIP: the loss falls, checkpoints and logs are written, resume is exact."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.config import ConfigError, load_config
from excel.engine import step as iteration
from excel.engine import trainer as engine
from excel.engine.work_dir import RunLock
from excel.io import DatasetError
from excel.modeling.checkpoint import load_checkpoint, save_checkpoint
from excel.utils.stop import TrainingStopped

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
    folder = work / "checkpoints"
    assert {p.name for p in folder.iterdir()} == {"iter_000012.pth", "iter_000024.pth", "latest.pth", "best.pth",
                                                 "best.json"}
    assert os.readlink(folder / "latest.pth") == "iter_000024.pth"          # a link, not a second copy
    decoder = {it: json.loads((work / "metrics" / f"iter_{it:06d}_decoder.json").read_text())["miou"]
               for it in (12, 24)}
    best = max(decoder, key=decoder.get)
    assert json.loads((folder / "best.json").read_text())["checkpoint"] == f"iter_{best:06d}.pth"
    assert os.readlink(folder / "best.pth") == f"iter_{best:06d}.pth"
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
        "dataset.root": tiny_voc, "train.batch_size": 2, "train.max_iters": 4, "train.eval_interval": 4,
        "train.log_interval": 2, "lvc.start_iter": 2, "tse.enabled": False, "work_dir": work})
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(ROOT / "run_train.sh"), "scripts/train_voc.py", "0", "2", "", "", *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "checkpoints" / "iter_000004.pth").is_file()
    log = (work / "train.log").read_text()
    assert "iter 4/4" in log and "pseudo_label" in log


@pytest.mark.parametrize("workers", [0, 2])     # validation images decoded in the process or in workers
def test_unreadable_validation_image_is_reported_after_the_checkpoint_is_saved(tiny_voc, tiny_clip_files, tmp_path,
                                                                               workers):
    root = tmp_path / "VOC2012"
    shutil.copytree(tiny_voc, root)
    broken = root / "JPEGImages" / "2007_000042.jpg"           # a val image; the train split never reads it
    broken.write_bytes(broken.read_bytes()[:40])
    cfg = train_cfg(root, tiny_clip_files, tmp_path, "broken", **{"train.max_iters": 4, "train.eval_interval": 2,
                                                                  "train.num_workers": workers})
    saved = tmp_path / "broken" / "checkpoints" / "iter_000002.pth"
    with pytest.raises(DatasetError, match=rf"validation at iteration 2 failed: cannot decode image {broken}.*"
                                           rf"checkpoint was saved at {saved}.*--resume {saved}"):
        engine.train(cfg)
    state = load_checkpoint(saved)
    assert state["iteration"] == 2 and load_checkpoint(saved.with_name("latest.pth"))["iteration"] == 2


def test_validation_with_decoding_workers_scores_as_in_the_process(full_run):
    trainer, _ = full_run
    in_process = trainer.validate(24)
    trainer.cfg.train.num_workers = 2
    try:
        assert trainer.validate(24) == in_process
    finally:
        trainer.cfg.train.num_workers = 0


def test_new_run_into_a_work_dir_with_checkpoints_is_refused(tiny_voc, tiny_clip_files, tmp_path):
    folder = tmp_path / "taken" / "checkpoints"
    save_checkpoint(folder / "iter_000002.pth", {"iteration": 2})
    save_checkpoint(folder / "latest.pth", {"iteration": 2})
    (tmp_path / "taken" / "config.yaml").write_text("earlier run\n")
    with pytest.raises(ConfigError, match=rf"work_dir {tmp_path / 'taken'} already holds checkpoints "
                                          rf"\(iter_000002.pth, latest.pth in {folder}\); continue that run with "
                                          rf"--resume .*another work_dir.*train.overwrite=true"):
        engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp_path, "taken"))
    assert (tmp_path / "taken" / "config.yaml").read_text() == "earlier run\n"
    assert load_checkpoint(folder / "latest.pth") == {"iteration": 2}
    engine.Trainer(train_cfg(tiny_voc, tiny_clip_files, tmp_path, "taken", **{"train.overwrite": True}))


def test_resume_with_changed_optimisation_settings_is_refused_or_applied(full_run, tiny_voc, tiny_clip_files):
    trainer, tmp = full_run
    checkpoint = str(trainer.work_dir / "checkpoints" / "iter_000012.pth")
    changed = {"optim.lr": 1e-3, "optim.betas": [0.8, 0.99], "train.max_iters": 30}
    with pytest.raises(ConfigError, match=re.escape(f"--resume {checkpoint}: the checkpoint was trained with other "
                                                    "settings (optim.lr 0.003 → 0.001, optim.betas [0.9, 0.999] → "
                                                    "[0.8, 0.99], train.max_iters 24 → 30)")):
        engine.Trainer(train_cfg(tiny_voc, tiny_clip_files, tmp, "changed", **changed), resume=checkpoint)
    assert not (tmp / "changed").exists()
    allowed = engine.Trainer(train_cfg(tiny_voc, tiny_clip_files, tmp, "changed",
                                       **changed, **{"train.resume_allow_changes": True}), resume=checkpoint)
    group = allowed.optimizer.param_groups[0]
    assert allowed.start_iter == 12 and group["betas"] == (0.8, 0.99)
    assert group["lr"] == pytest.approx(1e-3 * (1 - 12 / 30))          # the new schedule: poly decay to 30
    allowed.scheduler.step()
    assert group["lr"] == pytest.approx(1e-3 * (1 - 13 / 30))


def test_work_dir_inside_the_dataset_is_refused(tiny_voc, tiny_clip_files, tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    cfg = train_cfg(root, tiny_clip_files, tmp_path, "unused", **{"work_dir": root / "JPEGImages" / "run"})
    with pytest.raises(DatasetError, match=rf"output folder {root / 'JPEGImages' / 'run'} lies inside the dataset "
                                           rf"folder {root / 'JPEGImages'}"):
        engine.train(cfg)
    assert not (root / "JPEGImages" / "run").exists()


def test_data_problems_are_reported_before_anything_is_loaded_or_written(tiny_voc, tiny_clip_files, tmp_path):
    """A batch larger than the split and an unset dataset.root end as one ConfigError, with no work_dir made."""
    too_big = train_cfg(tiny_voc, tiny_clip_files, tmp_path, "big", **{"train.batch_size": 64})
    with pytest.raises(ConfigError, match=r"train.batch_size=64 .* has \d+"):
        engine.train(too_big)
    unset = train_cfg(tiny_voc, tiny_clip_files, tmp_path, "unset", **{"dataset.root": "null"})
    with pytest.raises(ConfigError, match="dataset.root is not set"):
        engine.train(unset)
    assert not (tmp_path / "big").exists() and not (tmp_path / "unset").exists()


def test_sigterm_saves_the_current_iteration_and_resume_auto_finishes_the_run(full_run, tiny_voc, tiny_clip_files,
                                                                            monkeypatch):
    trainer, tmp = full_run
    cfg = train_cfg(tiny_voc, tiny_clip_files, tmp, "stopped", **{"train.keep_checkpoints": 1})
    step = engine.Trainer.train_step

    def signalled(self, batch, it, **options):
        if it == 4:
            os.kill(os.getpid(), signal.SIGTERM)          # arrives during iteration 5
        return step(self, batch, it, **options)

    monkeypatch.setattr(engine.Trainer, "train_step", signalled)
    folder = tmp / "stopped" / "checkpoints"
    with pytest.raises(TrainingStopped, match=rf"stopped by SIGTERM after iteration 5, saved as "
                                              rf"{folder / 'iter_000005.pth'}; the same command with --resume auto"):
        engine.train(cfg)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert load_checkpoint(folder / "latest.pth")["iteration"] == 5
    monkeypatch.setattr(engine.Trainer, "train_step", step)
    resumed = engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp, "stopped", **{"train.keep_checkpoints": 1}),
                           resume="auto")
    assert resumed.history == trainer.history[5:]
    final = load_checkpoint(trainer.work_dir / "checkpoints" / "iter_000024.pth")["head"]
    again = load_checkpoint(folder / "iter_000024.pth")["head"]
    for key in final:
        assert torch.equal(final[key], again[key]), key
    best = json.loads((folder / "best.json").read_text())["checkpoint"]          # the last 1 plus the best
    assert {p.name for p in folder.glob("iter_*.pth")} == {"iter_000024.pth", best}


def test_an_unwritable_checkpoint_folder_or_a_locked_work_dir_stops_before_training(tiny_voc, tiny_clip_files,
                                                                                   tmp_path):
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "checkpoints").write_text("a file where the checkpoints go\n")
    with pytest.raises(FileExistsError, match="checkpoints"):
        engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp_path, "blocked"))
    assert not (tmp_path / "blocked" / "train.log").exists()
    lock = RunLock(tmp_path / "blocked")
    with pytest.raises(ConfigError, match=rf"work_dir {tmp_path / 'blocked'} is in use by another training run"):
        engine.train(train_cfg(tiny_voc, tiny_clip_files, tmp_path, "blocked"))
    lock.release()
