"""tools/infer_lam.py end to end on tiny VOC- and COCO-layout datasets with a tiny random CLIP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_clip import tiny_overrides
from PIL import Image

from excel.config import load_config
from excel.evaluation.infer_lam import run_pseudo_labels

ROOT = Path(__file__).resolve().parents[1]


def check_outputs(out: Path, dataset_root: Path, split: str, num_classes: int) -> None:
    ids = (dataset_root / "splits" / f"{split}.txt").read_text().split()
    pngs = sorted((out / "pseudo_labels").iterdir())
    assert [p.stem for p in pngs] == sorted(ids)
    labels = json.loads((dataset_root / "splits" / "labels.json").read_text())
    for png in pngs:
        values = set(np.unique(np.asarray(Image.open(png))).tolist())
        assert values <= {0, *labels[png.stem]}                   # only background and the image's classes
    table = json.loads((out / "pseudo_label_scores.json").read_text())
    assert len(table["iou"]) == num_classes + 1 and 0 <= table["miou"] <= 1
    assert (out / "pseudo_label_scores.txt").read_text().count("background") == 1
    assert not list(out.rglob("*.tmp"))


def test_infer_lam_voc(tiny_voc, tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": tiny_voc, "dataset.split": "val",
                                                "infer.save_overlays": True}))
    run_pseudo_labels(cfg, out_dir=tmp_path / "out")
    check_outputs(tmp_path / "out", tiny_voc, "val", 20)
    assert len(list((tmp_path / "out" / "cams").glob("*.jpg"))) == len(list((tmp_path / "out" / "pseudo_labels").iterdir()))


def test_infer_lam_coco(tiny_coco, tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/coco.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": tiny_coco, "dataset.split": "val"}))
    run_pseudo_labels(cfg, out_dir=tmp_path / "out")
    check_outputs(tmp_path / "out", tiny_coco, "val", 80)


def test_two_gloo_processes_equal_one(tiny_voc, tiny_clip_files, tmp_path):
    args = tiny_overrides(tiny_clip_files, tmp_path / "cache",
                          **{"dataset.root": tiny_voc, "dataset.split": "train_aug", "tse.enabled": False})
    results = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}"
        env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        subprocess.run(["bash", str(ROOT / "infer_lam.sh"), "tools/infer_lam.py", "0", str(procs), "train_aug", "",
                        "--out", str(out), *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        results[procs] = json.loads((out / "pseudo_label_scores.json").read_text())
        assert len(list((out / "pseudo_labels").iterdir())) == len((tiny_voc / "splits/train_aug.txt").read_text().split())
    assert sum(map(sum, results[1]["confusion"])) > 0
    assert results[1]["confusion"] == results[2]["confusion"]


def test_missing_dataset_is_a_clear_error(tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(tiny_clip_files, tmp_path / "cache",
                                                                **{"dataset.root": tmp_path / "nowhere"}))
    with pytest.raises(FileNotFoundError, match="make_splits"):
        run_pseudo_labels(cfg, out_dir=tmp_path / "out")
