"""The ablation runner: statistics against hand computations, the sweep file's errors, resumability
(finished cells skipped, an interrupted cell resumed to the uninterrupted result) and the submitit path."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from excel.apps import ablate
from excel.apps.ablation import cell as cell_module
from excel.apps.ablation.cell import Cell, newest_checkpoint
from excel.apps.ablation.launch import SlurmOptions
from excel.apps.ablation.report import csv_text, markdown
from excel.apps.ablation.stats import paired_difference, spread, summarize
from excel.apps.ablation.sweep import load_sweep, parse_seeds
from excel.config import ConfigError
from excel.engine.trainer import Trainer
from excel.modeling.checkpoint import load_checkpoint
from excel.prep.synthetic_dataset import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.max_iters=6", "train.eval_interval=3", "train.log_interval=3", "lvc.start_iter=3",
         "train.aff_switch_iter=4", "train.batch_size=2", "train.num_workers=0", "crf.workers=0",
         "infer.scales=[1.0]", "device=cpu"]


# -- statistics -------------------------------------------------------------------------------------
def test_spread_matches_a_hand_computation():
    s = spread([0.5, None, 0.7, 0.6])
    assert s.n == 3 and s.values == (0.5, None, 0.7, 0.6)
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)       # sqrt((0.01 + 0 + 0.01) / 2)
    assert (s.min, s.max) == (0.5, 0.7)
    one = spread([0.3])
    assert (one.n, one.mean, one.std) == (1, 0.3, None)                        # no spread from one value
    assert spread([None, None]).n == 0 and spread([None]).mean is None


def test_paired_difference_matches_a_hand_computation():
    d = paired_difference([0.6, 0.5, 0.9, None], [0.5, 0.6, 0.7, 0.8])
    # per seed: +0.1, −0.1, +0.2 (the fourth has no variant value); mean 0.2 / 3
    assert d.spread.n == 3
    assert d.spread.mean == pytest.approx(0.2 / 3)
    deviations = [0.1 - 0.2 / 3, -0.1 - 0.2 / 3, 0.2 - 0.2 / 3]
    assert d.spread.std == pytest.approx(math.sqrt(sum(x * x for x in deviations) / 2))
    assert d.same_sign == 2                                                    # +0.1 and +0.2 share the mean's sign
    assert paired_difference([0.4, 0.3], [0.5, 0.5]).same_sign == 2


def test_summary_and_tables():
    results = {"full": {"decoder": [0.6, 0.7]}, "no_lvc": {"decoder": [0.5, 0.5]}}
    summary = summarize(results, "full")
    assert set(summary["differences"]) == {"no_lvc"}                          # the baseline is not compared to itself
    diff = summary["differences"]["no_lvc"]["decoder"]
    assert diff["mean"] == pytest.approx(-0.15) and diff["std"] == pytest.approx(math.sqrt(0.005))
    assert diff["same_sign"] == 2
    text = markdown(summary, ["decoder"], "full", [0, 1])
    assert "| full | 65.0 ± 7.1 | 2 | 60.0–70.0 | (baseline) |  |" in text
    assert "| no_lvc | 50.0 ± 0.0 | 2 | 50.0–50.0 | -15.0 ± 7.1 | 2/2 |" in text
    rows = [line.split(",") for line in csv_text(summary, ["decoder"], "full").splitlines()]
    assert rows[0][:4] == ["variant", "metric", "n", "mean"]
    assert rows[1][:3] == ["full", "decoder", "2"] and rows[1][7:] == ["", "", "", ""]
    assert float(rows[2][7]) == pytest.approx(-0.15) and rows[2][10] == "2"


# -- sweep files ------------------------------------------------------------------------------------
def write_sweep(folder: Path, text: str) -> Path:
    base = os.path.relpath(ROOT / "configs" / "demo.yaml", folder)
    path = folder / "sweep.yaml"
    path.write_text(text.replace("BASE", base))
    return path


GOOD = "base: BASE\nbaseline: full\nmetrics: [trained_static]\nvariants:\n  full: []\n  no_lvc: [lvc.enabled=false]\n"


@pytest.mark.parametrize("text, message", [
    (GOOD + "seeds: [0]\n", "unknown key 'seeds'"),
    ("base: BASE\nbaseline: full\nmetrics: [decoder]\nvariants: {}\n", "variants must be a non-empty mapping"),
    (GOOD.replace("baseline: full", "baseline: nothing"), "baseline 'nothing' is not one of the variants (full, no_lvc)"),
    (GOOD.replace("[trained_static]", "[accuracy]"), "unknown metric 'accuracy'"),
    (GOOD.replace("[lvc.enabled=false]", "lvc.enabled=false"), "variant 'no_lvc' must be a list"),
    (GOOD.replace("base: BASE", "base: missing.yaml"), "base config"),
    ("variants: [\n", "is not valid YAML"),
])
def test_sweep_file_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, text))
    assert message in str(err.value) and str(tmp_path / "sweep.yaml") in str(err.value)


@pytest.mark.parametrize("seeds, message", [("", "comma-separated"), ("0,x", "'x' is not a seed"),
                                            ("0,1,0", "seed 0 is repeated"), ("-1", "'-1' is not a seed"),
                                            ("0,,1", "comma-separated")])
def test_bad_seed_lists(seeds, message):
    with pytest.raises(ConfigError, match=message):
        parse_seeds(seeds)


def test_parse_seeds_keeps_the_order():
    assert parse_seeds("3, 0,1") == (3, 0, 1)


def test_command_line_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    """An unknown key in one variant is found before any cell runs and named with the variant."""
    sweep = write_sweep(tmp_path, GOOD.replace("[lvc.enabled=false]", "[lvc.enabeld=false]"))
    with pytest.raises(SystemExit) as exit_info:
        ablate.main([str(sweep), "--work-dir", str(tmp_path / "w"), "--seeds", "0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "variant 'no_lvc'" in err and "lvc.enabeld" in err
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):
        ablate.main([str(write_sweep(tmp_path, GOOD)), "--work-dir", str(tmp_path / "w"), "--seeds", "1,1"])
    assert "seed 1 is repeated" in capsys.readouterr().err


def test_a_work_dir_inside_a_dataset_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    images = tmp_path / "scenes" / "JPEGImages"
    images.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        ablate.main([str(write_sweep(tmp_path, GOOD)), "--work-dir", str(images / "w"), "--seeds", "0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"output folder {images / 'w'} lies inside" in err
    assert list(images.iterdir()) == []


# -- resumability without training (the cell's train and evaluation replaced by recorders) ------------------
@pytest.fixture
def fake_cells(monkeypatch):
    """train() writes the final checkpoint file; evaluation returns a value made from variant and seed."""
    calls = {"train": [], "evaluate": []}

    def fake_train(cfg, resume=None):
        calls["train"].append((cfg.work_dir, resume))
        folder = Path(cfg.work_dir) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"iter_{cfg.train.max_iters:06d}.pth").write_bytes(b"final")

    def fake_evaluate(cfg, checkpoint, metrics, out_dir):
        calls["evaluate"].append(str(checkpoint))
        value = 0.5 + 0.01 * cfg.train.seed + (0.1 if cfg.lvc.enabled else 0.0)
        return {metric: value for metric in metrics}

    monkeypatch.setattr(cell_module, "train", fake_train)
    monkeypatch.setattr(cell_module, "evaluate_checkpoint", fake_evaluate)
    return calls


def test_finished_cells_are_not_run_again_and_the_table_is_the_same(tmp_path, fake_cells, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep, work = load_sweep(write_sweep(tmp_path, GOOD)), tmp_path / "w"
    summary = ablate.run_sweep(sweep, work, (0, 1, 2), ["train.max_iters=6"])
    assert len(fake_cells["train"]) == 6
    values = summary["variants"]["full"]["metrics"]["trained_static"]["values"]
    assert values == pytest.approx([0.6, 0.61, 0.62])
    assert summary["differences"]["no_lvc"]["trained_static"]["mean"] == pytest.approx(-0.1)
    first = {name: (work / name).read_bytes() for name in ("ablation.json", "ablation.md", "ablation.csv")}
    ablate.run_sweep(sweep, work, (0, 1, 2), ["train.max_iters=6"])
    assert len(fake_cells["train"]) == 6 and len(fake_cells["evaluate"]) == 6   # nothing trained or evaluated again
    assert {name: (work / name).read_bytes() for name in first} == first


def test_an_interrupted_cell_resumes_from_its_newest_checkpoint(tmp_path, fake_cells, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep, work = load_sweep(write_sweep(tmp_path, GOOD)), tmp_path / "w"
    folder = Cell("full", 0).folder(work) / "checkpoints"
    folder.mkdir(parents=True)
    for it in (2, 4):
        (folder / f"iter_{it:06d}.pth").write_bytes(b"partial")
    ablate.run_sweep(sweep, work, (0,), ["train.max_iters=6"])
    resumed = dict(fake_cells["train"])
    assert resumed[str(Cell("full", 0).folder(work))] == str(folder / "iter_000004.pth")
    assert resumed[str(Cell("no_lvc", 0).folder(work))] is None


def test_a_cell_made_with_another_config_is_refused(tmp_path, fake_cells, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep, work = load_sweep(write_sweep(tmp_path, GOOD)), tmp_path / "w"
    ablate.run_sweep(sweep, work, (0,), ["train.max_iters=6"])
    with pytest.raises(ConfigError, match="made with another config"):
        ablate.run_sweep(sweep, work, (0,), ["train.max_iters=7"])


def test_newest_checkpoint_by_iteration(tmp_path):
    for name in ("iter_000010.pth", "iter_000002.pth", "latest.pth", "iter_x.pth"):
        (tmp_path / name).write_bytes(b"")
    assert newest_checkpoint(tmp_path) == tmp_path / "iter_000010.pth"
    assert newest_checkpoint(tmp_path / "missing") is None


# -- real cells on the tiny synthetic scenes with the committed tiny CLIP ------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate") / "scenes"
    write_synthetic_dataset(root, num_train=4, num_val=2, seed=0)
    return root


def real_overrides(scenes: Path, cache: Path) -> list[str]:
    return [*QUICK, f"dataset.root={scenes}", f"tse.cache_dir={cache}"]


def test_a_killed_cell_rerun_ends_with_the_uninterrupted_head(tmp_path, scenes, monkeypatch):
    """Determinism and resume: two runs of the same cell on one machine write identical checkpoints
    (iteration 3), and one interrupted after that checkpoint, then rerun, ends with the uninterrupted
    run's head and metrics."""
    monkeypatch.chdir(ROOT)
    sweep = load_sweep(write_sweep(tmp_path, GOOD.replace("  no_lvc: [lvc.enabled=false]\n", "")))
    overrides = real_overrides(scenes, tmp_path / "cache")
    whole = ablate.run_sweep(sweep, tmp_path / "whole", (0,), overrides)

    original = Trainer.validate_after_save

    def interrupt_after_first_save(self, it):
        original(self, it)
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "validate_after_save", interrupt_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        ablate.run_sweep(sweep, tmp_path / "killed", (0,), overrides)
    monkeypatch.setattr(Trainer, "validate_after_save", original)
    checkpoints = Cell("full", 0).folder(tmp_path / "killed") / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("iter_*.pth")) == ["iter_000003.pth"]
    first = [load_checkpoint(Cell("full", 0).folder(tmp_path / run) / "checkpoints" / "iter_000003.pth")
             for run in ("whole", "killed")]
    assert first[0]["head"].keys() == first[1]["head"].keys()
    assert all(torch.equal(first[0]["head"][k], first[1]["head"][k]) for k in first[0]["head"])
    assert all(torch.equal(a, b) for a, b in zip(_tensors(first[0]["optimizer"]), _tensors(first[1]["optimizer"])))
    resumed = ablate.run_sweep(sweep, tmp_path / "killed", (0,), overrides)

    heads = [load_checkpoint(Cell("full", 0).folder(tmp_path / run) / "checkpoints" / "iter_000006.pth")["head"]
             for run in ("whole", "killed")]
    assert heads[0].keys() == heads[1].keys()
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert resumed["variants"] == whole["variants"]


def _tensors(tree) -> list[torch.Tensor]:
    """Every tensor of a nested dict/list (an optimizer state), in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_the_slurm_launcher_through_submitits_local_executor(tmp_path, scenes, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = load_sweep(write_sweep(tmp_path, GOOD.replace("  no_lvc: [lvc.enabled=false]\n", "")))
    overrides = [*real_overrides(scenes, tmp_path / "cache"), "train.max_iters=2", "train.eval_interval=2",
                 "lvc.start_iter=1", "train.aff_switch_iter=1"]
    summary = ablate.run_sweep(sweep, tmp_path / "w", (0,), overrides, launcher="slurm",
                               slurm=SlurmOptions(time_min=10, gpus_per_cell=0, cpus_per_task=1, cluster="local"))
    stored = json.loads((Cell("full", 0).folder(tmp_path / "w") / "cell.json").read_text())
    assert summary["variants"]["full"]["metrics"]["trained_static"]["values"] == [stored["metrics"]["trained_static"]]
    assert 0 <= stored["metrics"]["trained_static"] <= 1
    assert list((tmp_path / "w" / "submitit").iterdir())                       # the job's folder with its logs


def test_cells_side_by_side_match_the_cells_run_in_this_process(tmp_path, scenes, monkeypatch):
    """--jobs 2: each cell runs in a process of its own (one torch thread, console in <cell>/console.log)
    and stores what the same cell run here with one thread stores; a failing cell does not stop the
    others and ends the sweep with one line naming it."""
    monkeypatch.chdir(ROOT)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    text = GOOD.replace("  no_lvc: [lvc.enabled=false]\n", f"  broken: [clip.pretrained={garbage}]\n")
    sweep = load_sweep(write_sweep(tmp_path, text))
    overrides = [*real_overrides(scenes, tmp_path / "cache"), "train.max_iters=2", "train.eval_interval=2",
                 "lvc.start_iter=1", "train.aff_switch_iter=1"]
    with pytest.raises(ConfigError) as err:
        ablate.run_sweep(sweep, tmp_path / "side", (0, 1), overrides, jobs=2, threads=1)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and message.startswith("2 cell(s) failed: broken/seed_")
    assert "console.log" in message
    for seed in (0, 1):
        console = (Cell("full", seed).folder(tmp_path / "side") / "console.log").read_text()
        assert "iter" in console                                       # the cell's training log went there
        assert "Traceback" in (Cell("broken", seed).folder(tmp_path / "side") / "console.log").read_text()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = load_sweep(write_sweep(tmp_path, GOOD.replace("  no_lvc: [lvc.enabled=false]\n", "")))
        here = ablate.run_sweep(alone, tmp_path / "here", (0, 1), overrides)
    finally:
        torch.set_num_threads(threads)
    for seed in (0, 1):
        stored = [json.loads((Cell("full", seed).folder(tmp_path / run) / "cell.json").read_text())["metrics"]
                  for run in ("side", "here")]
        assert stored[0] == stored[1]
    assert here["variants"]["full"]["metrics"]["trained_static"]["n"] == 2
