"""tools/gpu_check.sh and tools/gpu_check.py on the CPU: the commands the script runs, and the timed synthetic
training run with the benchmark rows joined into one table (tiny CLIP, a few iterations)."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.apps import benchmark, gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_tests_benchmark_and_training(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--device", "cpu", "--iters",
                             "6", "--out", str(tmp_path), "--", "par.iters=2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tests, bench, run = result.stdout.strip().splitlines()
    assert "EXCEL_TEST_DEVICE=cpu" in tests and "pytest" in tests and "tests/test_par.py" in tests
    assert bench.split()[1:4] == ["tools/benchmark.py", "--device", "cpu"] and bench.split()[-1] == "par.iters=2"
    assert "--iters 6 --lvc-start 3" in run and f"{tmp_path}/benchmark/benchmark_cpu.json" in run
    assert not any(tmp_path.iterdir())  # a dry run writes nothing

    bad = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--iters", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--iters" in bad.stderr


def test_gpu_check_cpu_run_gives_one_table(tiny_clip_files, tmp_path):
    overrides = tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"train.batch_size": 2, "tse.enabled": False,
                                                                       "infer.scales": "[1.0]", "par.iters": 2})
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--repeats", "1", "--warmup", "0", "--threads", "1", "--label-size", "40", "56",
                        "--out", str(tmp_path / "benchmark"), *overrides])
        gpu_check.main(["--device", "cpu", "--iters", "4", "--lvc-start", "2", "--images", "4",
                        "--out", str(tmp_path / "check"), "--benchmark",
                        str(tmp_path / "benchmark" / "benchmark_cpu.json"), *overrides])
    finally:
        torch.set_num_threads(threads)
    rows = {row["row"]: row for row in json.loads((tmp_path / "check" / "gpu_check.json").read_text())}
    assert {"training run: static iteration", "training run: dynamic iteration", "training run: frozen forward",
            "benchmark: static_iteration", "benchmark: par"} <= rows.keys()
    forward = rows["training run: frozen forward"]["seconds"]
    for phase in ("static", "dynamic"):
        row = rows[f"training run: {phase} iteration"]
        assert row["count"] == 2  # the iterations of the phase (too few to leave out warm-up ones)
        assert row["ratio"] == pytest.approx(row["seconds"] / forward)
    table = (tmp_path / "check" / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "| training run: dynamic iteration |" in table
    assert (tmp_path / "check" / "run" / "checkpoints" / "latest.pth").exists()
