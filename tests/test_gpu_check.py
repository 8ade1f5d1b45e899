"""tools/gpu_check.sh and excel/apps/gpu_check.py on the CPU: the steps it plans, a step runner that goes on after
a failure, the table, and the timed synthetic training step (tiny CLIP, a few iterations) rerun into one folder."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_clip import tiny_overrides

from excel.apps import benchmark, gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_script_plans_tests_three_benchmarks_and_training_with_the_venv_python(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--device", "cpu", "--iters",
                             "6", "--out", str(tmp_path), "par.iters=2"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["tests", "benchmark_fp32", "benchmark_bf16", "benchmark_fp16", "training"]
    steps = dict(line.split(": ", 1) for line in lines)
    assert "pytest" in steps["tests"] and "-x" not in steps["tests"].split() and "tests/test_par.py" in steps["tests"]
    for precision in ("fp32", "bf16", "fp16"):
        words = steps[f"benchmark_{precision}"].split()
        assert words[1:4] == ["tools/benchmark.py", "--device", "cpu"] and words[-1] == "par.iters=2"
        assert f"--precision {precision}" in steps[f"benchmark_{precision}"]
    assert "--train-only" in steps["training"] and "--iters 6" in steps["training"]
    assert all(step.startswith(sys.executable) for step in steps.values())
    assert not any(tmp_path.iterdir())  # a dry run writes nothing

    bad = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--iters", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--iters" in bad.stderr.strip().splitlines()[-1]


def test_step_runner_reports_every_step_after_a_failure(tmp_path, capsys):
    steps = [("first", [sys.executable, "-c", "print('one')"]),
             ("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]),
             ("missing", [str(tmp_path / "no-such-program")]),
             ("last", [sys.executable, "-c", "print('three')"])]
    results = gpu_check.run_steps(steps, tmp_path / "logs")
    assert [(r.name, r.returncode) for r in results] == [("first", 0), ("broken", 3), ("missing", 127), ("last", 0)]
    assert (tmp_path / "logs" / "broken.log").read_text() == "boom\n"
    assert (tmp_path / "logs" / "last.log").read_text() == "three\n"
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[1].startswith("step broken: FAILED (exit 3")


def test_table_lists_steps_and_every_precisions_benchmark_rows(tmp_path):
    folder = tmp_path / "benchmark"
    folder.mkdir()
    for precision, seconds in (("fp32", 2.0), ("bf16", 0.5)):            # no fp16 report: its rows are left out
        stages = {name: {"median_s": seconds, "ratio": 1.0, "peak_memory_mib": 100.0, "times_s": [seconds] * 3,
                         "reference": "frozen_forward"} for name in gpu_check.BENCHMARK_ROWS}
        (folder / f"benchmark_cpu_{precision}.json").write_text(json.dumps({"stages": stages}))
    (tmp_path / gpu_check.TRAIN_ROWS).write_text(json.dumps([
        {"row": "training run: static iteration", "seconds": 0.25, "ratio": 1.25, "peak_mib": 3000.0, "count": 95,
         "reference": "training run: frozen forward"}]))
    steps = [gpu_check.StepResult("tests", 1, 12.0, "logs/tests.log"),
             gpu_check.StepResult("training", 0, 30.0, "logs/training.log")]
    text = gpu_check.write_table(tmp_path, "cpu", steps)
    lines = text.splitlines()
    assert "| tests | FAILED (exit 1) | 12 | logs/tests.log |" in lines
    assert "| training | passed | 30 | logs/training.log |" in lines
    assert "| benchmark fp32: frozen_forward | 2.000 | 1.00 | frozen_forward | 100 | 3 |" in lines
    assert "| benchmark bf16: static_iteration | 0.500 | 1.00 | frozen_forward | 100 | 3 |" in lines
    assert not any("fp16" in line for line in lines)
    assert "| training run: static iteration | 0.250 | 1.25 | training run: frozen forward | 3000 | 95 |" in lines
    assert (tmp_path / "gpu_check.md").read_text() == text
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["returncode"] for s in saved["steps"]] == [1, 0] and len(saved["rows"]) == 2 * 6 + 1


def test_training_step_on_cpu_gives_its_rows_and_a_rerun_replaces_them(tiny_clip_files, tmp_path):
    overrides = tiny_overrides(tiny_clip_files, tmp_path / "cache", **{"tse.enabled": False, "infer.scales": "[1.0]",
                                                                       "par.iters": 2, "train.crop_size": 64})
    threads = torch.get_num_threads()
    out = tmp_path / "check"
    try:
        for _ in range(2):                                      # the second run goes into the same folder
            gpu_check.main(["--train-only", "--device", "cpu", "--precision", "bf16", "--iters", "4", "--images", "4",
                            "--out", str(out), *overrides])
        benchmark.main(["--repeats", "1", "--warmup", "0", "--threads", "1", "--label-size", "40", "56",
                        "--out", str(out / "benchmark"), *overrides])
    finally:
        torch.set_num_threads(threads)
    rows = {row["row"]: row for row in json.loads((out / gpu_check.TRAIN_ROWS).read_text())}
    assert {"training run: static iteration", "training run: dynamic iteration", "training run: frozen forward",
            "projected VOC schedule (30,000 iterations), hours"} == rows.keys()
    forward = rows["training run: frozen forward"]["seconds"]
    for phase in ("static", "dynamic"):
        row = rows[f"training run: {phase} iteration"]
        assert row["count"] == 2  # the iterations of the phase (too few to leave out warm-up ones)
        assert row["ratio"] == pytest.approx(row["seconds"] / forward)
    projected = rows["training run: static iteration"]["seconds"] * 14000 + \
        rows["training run: dynamic iteration"]["seconds"] * 16000
    assert rows["projected VOC schedule (30,000 iterations), hours"]["seconds"] == pytest.approx(projected / 3600)
    assert (out / "run" / "checkpoints" / "latest.pth").exists()
    text = gpu_check.write_table(out, "cpu", [])
    assert "| benchmark fp32: par |" in text and "| training run: dynamic iteration |" in text
