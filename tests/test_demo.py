"""The embedded demo, shortened (a few iterations on a few images), end to end with the committed tiny CLIP."""
import json
import subprocess
import sys
from pathlib import Path

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
