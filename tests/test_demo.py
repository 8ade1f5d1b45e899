"""The embedded demo, shortened (a few iterations on a few images), end to end with the committed tiny CLIP."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from excel.config import load_config
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.prep.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage(tmp_path):
    result = subprocess.run([sys.executable, "tools/demo.py", "--quick", "--root", str(tmp_path / "data"),
                             "--work-dir", str(tmp_path / "work"), f"tse.cache_dir={tmp_path / 'cache'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "demo_summary.json").read_text())
    for key in ("all-background baseline", "training-free pseudo labels", "decoder, multi-scale"):
        assert 0 <= summary[key] <= 1
    assert "ExCEL demo, synthetic val split" in result.stdout
    assert (tmp_path / "work" / "checkpoints" / "iter_000006.pth").is_file()
    assert len(list((tmp_path / "work" / "pseudo_labels_val" / "pseudo_labels").iterdir())) == 4


def test_tiny_clip_pseudo_labels_beat_the_background_baseline(tmp_path):
    """The committed tiny CLIP localises: on the demo's val split (150 scenes, seed 0) training-free pseudo
    labels with SVC are ≥ 25 points above predicting background everywhere and at least as good as
    with SVC off (issue targets; measured 42.1 / 39.5 / 15.0)."""
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    root = tmp_path / "data"
    write_synthetic_dataset(root, num_train=1, num_val=150, seed=0)
    overrides = [f"dataset.root={root}", "dataset.split=val", f"work_dir={tmp_path / 'work'}",
                 f"tse.cache_dir={tmp_path / 'cache'}", "device=cpu"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    baseline = demo.background_baseline(cfg)
    with_svc = run_pseudo_labels(cfg, out_dir=tmp_path / "svc")
    no_svc = load_config(ROOT / "configs" / "demo.yaml", overrides + ["svc.enabled=false", "lvc.enabled=false"])
    without_svc = run_pseudo_labels(no_svc, out_dir=tmp_path / "no_svc")
    assert with_svc["miou"] >= baseline + 0.25
    assert with_svc["miou"] >= without_svc["miou"]
