"""Smoke test of tools/benchmark.py on the tiny CLIP: every stage runs once and the report has its keys."""
import json
from pathlib import Path

import pytest
import torch

from excel.apps import benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_writes_every_stage(tiny_clip_files, tmp_path):
    config, checkpoint = tiny_clip_files
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--repeats", "1", "--warmup", "0", "--threads", "1", "--label-size", "40", "56",
                            "--out", str(tmp_path), f"clip.model_config={config}", f"clip.pretrained={checkpoint}",
                            "head.adapter_dim=32", "head.adapter_hidden=32", "head.decoder_heads=4",
                            "train.batch_size=2", "train.crop_size=64", "cam.input_size=64", "infer.resize=64",
                            "infer.scales=[1.0,1.5]", "par.iters=2", "lvc.start_iter=5"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "benchmark_cpu_fp32.json").read_text())
    assert (tmp_path / "benchmark_cpu_fp32.md").read_text().count("\n| ") >= len(saved["stages"])
    assert saved["stages"].keys() == {
        "frozen_forward", "head_forward", "static_cam", "dynamic_cam", "affinity_refinement", "par", "losses",
        "backward_step", "static_iteration", "dynamic_iteration", "frozen_forward_image", "training_free_label",
        "multiscale_inference", "multiscale_forwards", "static_iteration_forward", "dynamic_iteration_forward"}
    for name, row in saved["stages"].items():
        assert set(row) == {"description", "reference", "median_s", "min_s", "ratio", "times_s", "peak_memory_mib"}
        assert len(row["times_s"]) == 1 and row["median_s"] > 0 and row["peak_memory_mib"] > 0
        assert row["ratio"] == pytest.approx(row["median_s"] / saved["stages"][row["reference"]]["median_s"])
    assert saved["stages"]["frozen_forward"]["ratio"] == pytest.approx(1.0)
    assert saved["stages"]["training_free_label"]["reference"] == "frozen_forward_image"
    assert saved["stages"]["multiscale_inference"]["reference"] == "multiscale_forwards"
    # the forwards are timed inside the multi-scale calls and the iterations, so they take part of their time
    for outer, inner, inner_reference in [("multiscale_inference", "multiscale_forwards", "frozen_forward_image"),
                                          ("static_iteration", "static_iteration_forward", "frozen_forward"),
                                          ("dynamic_iteration", "dynamic_iteration_forward", "frozen_forward")]:
        assert saved["stages"][outer]["reference"] == inner
        assert saved["stages"][inner]["reference"] == inner_reference
        assert 0 < saved["stages"][inner]["times_s"][0] < saved["stages"][outer]["times_s"][0]
    assert saved["targets"].keys() == {"static_iteration", "dynamic_iteration", "training_free_label", "par",
                                       "multiscale_inference"}
    assert all(t["met"] == (t["ratio"] <= t["limit"]) for t in saved["targets"].values())
    assert saved["setup"]["threads"] == 1 and saved["setup"]["label_size"] == [40, 56]
    assert saved["setup"]["cores"] >= 1 and len(saved["setup"]["load_average"]["before"]) == 3
    assert saved["setup"]["par_form"] in {"native", "sparse"}


def test_benchmark_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        benchmark.main(["--repeats", "0", "--out", str(tmp_path)])


def test_benchmark_reports_of_two_precisions_sit_side_by_side(tiny_clip_files, tmp_path):
    config, checkpoint = tiny_clip_files
    threads = torch.get_num_threads()
    common = ["--repeats", "1", "--warmup", "0", "--threads", "1", "--label-size", "32", "32", "--out", str(tmp_path),
              f"clip.model_config={config}", f"clip.pretrained={checkpoint}", "head.adapter_dim=32",
              "head.adapter_hidden=32", "head.decoder_heads=4", "train.batch_size=1", "train.crop_size=64",
              "cam.input_size=64", "infer.resize=64", "infer.scales=[1.0]", "par.iters=1"]
    try:
        for precision in ("fp32", "bf16"):
            benchmark.main(["--precision", precision, *common])
    finally:
        torch.set_num_threads(threads)
    for precision in ("fp32", "bf16"):
        saved = json.loads((tmp_path / f"benchmark_cpu_{precision}.json").read_text())
        assert saved["setup"]["precision"] == saved["setup"]["config"]["precision"] == precision
        assert f", {precision}, " in (tmp_path / f"benchmark_cpu_{precision}.md").read_text().splitlines()[0]
