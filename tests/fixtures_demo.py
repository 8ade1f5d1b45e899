"""The quick demo, run once per test session: its checkpoint, pseudo labels and dataset feed the tests
of the tools that consume them (predictor, predict, gallery)."""
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoRun:
    """Paths of a finished `tools/demo.py --quick` run."""

    root: Path          # the synthetic dataset (VOC layout)
    work: Path          # work dir: pseudo_labels_val_<row>/, seeds/full/seed_<n>/, demo_summary.json
    cache: Path         # TSE bank cache
    stdout: str

    @property
    def cell(self) -> Path:
        """Seed 0's training run: checkpoints/, config.yaml, segment_val/."""
        return self.work / "seeds" / "full" / "seed_0"

    @property
    def checkpoint(self) -> Path:
        return self.cell / "checkpoints" / "iter_000006.pth"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    base = tmp_path_factory.mktemp("demo")
    run = DemoRun(base / "data", base / "work", base / "cache", "")
    result = subprocess.run([sys.executable, "tools/demo.py", "--quick", "--threads", "1", "--root", str(run.root),
                             "--work-dir", str(run.work), f"tse.cache_dir={run.cache}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return DemoRun(run.root, run.work, run.cache, result.stdout)
