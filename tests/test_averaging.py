"""The head's moving average (train.ema_decay): the update rule, validation and checkpoints on the average,
training on the trained weights, and an exact resume of both."""
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides
from omegaconf import OmegaConf
from torch import nn

from excel.config import ConfigError, load_config
from excel.engine import trainer as engine
from excel.engine.work_dir import check_work_dir
from excel.engine.averaging import HeadAverage, trained_head_state
from excel.modeling.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DECAY = 0.75


def test_average_follows_the_update_rule_and_gives_the_trained_weights_back():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.1))
    average = HeadAverage(head, DECAY)
    expected = None
    for _ in range(4):
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p))
        average.update(head)
        current = {k: v.clone() for k, v in head.state_dict().items()}
        expected = current if expected is None else {k: DECAY * expected[k] + (1 - DECAY) * current[k] for k in current}
    for key, value in average.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    with average.in_place_of(head):
        for key, value in head.state_dict().items():
            torch.testing.assert_close(value, expected[key])
    for key, value in head.state_dict().items():
        assert torch.equal(value, current[key])
    entries = average.checkpoint_entries(head)
    assert entries["ema_updates"] == 4 and torch.equal(entries["head_trained"]["0.weight"], current["0.weight"])
    assert trained_head_state(entries)["head"] is entries["head_trained"]
    assert trained_head_state({"head": 1})["head"] == 1


def cfg_for(tiny_voc, clip_files, tmp_path, name, **extra):
    values = {"dataset.root": tiny_voc, "train.batch_size": 2, "train.max_iters": 6, "train.eval_interval": 3,
              "train.log_interval": 1, "lvc.start_iter": 2, "train.aff_switch_iter": 4, "optim.warmup_iters": 1,
              "optim.lr": 3e-3, "work_dir": tmp_path / name, "tse.enabled": False, "train.ema_decay": DECAY}
    values.update(extra)
    return load_config(ROOT / "configs/voc.yaml", tiny_overrides(clip_files, tmp_path / "cache", **values))


@pytest.fixture(scope="module")
def averaged_run(tiny_voc, tiny_clip_files, tmp_path_factory):
    """A 6-iteration run with the trained head recorded after every step and the head seen by validation."""
    tmp = tmp_path_factory.mktemp("ema")
    trainer = engine.Trainer(cfg_for(tiny_voc, tiny_clip_files, tmp, "run"))
    trained, validated = [], []
    step, validate = trainer.train_step, trainer.validate

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        trained.append({k: v.clone() for k, v in trainer.model.head.state_dict().items()})
        return out

    def recording_validate(it):
        validated.append({k: v.clone() for k, v in trainer.model.head.state_dict().items()})
        return validate(it)

    trainer.train_step, trainer.validate = recording_step, recording_validate
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer, trained, validated, tmp


def hand_average(states):
    average = states[0]
    for state in states[1:]:
        average = {k: DECAY * average[k] + (1 - DECAY) * state[k] for k in state}
    return average


def test_checkpoints_and_validation_hold_the_average_training_the_trained_head(averaged_run):
    trainer, trained, validated, _ = averaged_run
    assert len(trained) == 6 and len(validated) == 2
    for it in (3, 6):
        state = load_checkpoint(trainer.work_dir / "checkpoints" / f"iter_{it:06d}.pth")
        expected = hand_average(trained[:it])
        assert state["ema_updates"] == it
        for key in expected:
            torch.testing.assert_close(state["head"][key], expected[key], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(validated[it // 3 - 1][key], expected[key], rtol=1e-5, atol=1e-6)
            assert torch.equal(state["head_trained"][key], trained[it - 1][key])
        assert not torch.equal(state["head"]["decoder.classifier.weight"],
                               state["head_trained"]["decoder.classifier.weight"])
    for key, value in trainer.model.head.state_dict().items():       # validation put the trained head back
        assert torch.equal(value, trained[-1][key])


def test_resume_continues_the_trained_head_and_its_average_exactly(averaged_run, tiny_voc, tiny_clip_files):
    trainer, _, _, tmp = averaged_run
    resumed = engine.train(cfg_for(tiny_voc, tiny_clip_files, tmp, "resumed"),
                           resume=str(trainer.work_dir / "checkpoints" / "iter_000003.pth"))
    final = load_checkpoint(trainer.work_dir / "checkpoints" / "iter_000006.pth")
    again = load_checkpoint(resumed.work_dir / "checkpoints" / "iter_000006.pth")
    assert again["ema_updates"] == 6
    for entry in ("head", "head_trained"):
        for key in final[entry]:
            assert torch.equal(final[entry][key], again[entry][key]), (entry, key)


def test_resume_with_another_decay_is_refused(averaged_run, tiny_voc, tiny_clip_files):
    trainer, _, _, tmp = averaged_run
    with pytest.raises(ConfigError, match=r"train.ema_decay 0.75 → 0.5"):
        engine.train(cfg_for(tiny_voc, tiny_clip_files, tmp, "other", **{"train.ema_decay": 0.5}),
                     resume=str(trainer.work_dir / "checkpoints" / "iter_000003.pth"))


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_is_refused(tiny_voc, tiny_clip_files, tmp_path, decay):
    with pytest.raises(ConfigError, match="train.ema_decay"):
        cfg_for(tiny_voc, tiny_clip_files, tmp_path, "bad", **{"train.ema_decay": decay})


def test_a_checkpoint_from_before_the_key_resumes_as_without_averaging(tiny_voc, tiny_clip_files, tmp_path):
    cfg = cfg_for(tiny_voc, tiny_clip_files, tmp_path, "old", **{"train.ema_decay": 0.0})
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["train"]["ema_decay"]
    state = {"iteration": 3, "config": OmegaConf.to_yaml(OmegaConf.create(stored))}
    check_work_dir(cfg, "old.pth", state)                       # no averaging then, none now: accepted
    cfg.train.ema_decay = 0.5
    with pytest.raises(ConfigError, match=r"train.ema_decay 0.0 → 0.5"):
        check_work_dir(cfg, "old.pth", state)
