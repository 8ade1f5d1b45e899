"""tools/infer_lam.py end to end on tiny VOC- and COCO-layout datasets with a tiny random CLIP."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_clip import tiny_overrides
from PIL import Image

from excel.config import load_config
from excel.evaluation import infer_lam
from excel.evaluation.infer_lam import run_pseudo_labels
from excel.io import DatasetError

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
    # Exact: both runs label one image at a time with one thread, so every image's sums run in the same order.
    assert results[1]["confusion"] == results[2]["confusion"]


def test_missing_dataset_is_a_clear_error(tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(tiny_clip_files, tmp_path / "cache",
                                                                **{"dataset.root": tmp_path / "nowhere"}))
    with pytest.raises(FileNotFoundError, match="make_splits"):
        run_pseudo_labels(cfg, out_dir=tmp_path / "out")


def copy_dataset(tiny_voc, tmp_path):
    """A private copy of the tiny VOC dataset (its split lists are edited by the test)."""
    root = tmp_path / "VOC2012"
    shutil.copytree(tiny_voc, root)
    return root


def file_snapshot(folder):
    """{path: bytes} of every file below ``folder``."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("hostile", ["ABS", "../JPEGImages/2007_000033", "a/../../2007_000033"])
def test_split_id_that_leaves_the_folders_is_refused_before_anything_is_written(tiny_voc, tiny_clip_files, tmp_path,
                                                                             hostile):
    root = copy_dataset(tiny_voc, tmp_path)
    if hostile == "ABS":       # an absolute id finds the image, and its overlay would replace the source JPEG
        hostile = str(root / "JPEGImages" / "2007_000033")
    split = root / "splits" / "val.txt"
    split.write_text(f"2007_000042\n{hostile}\n")
    before = file_snapshot(tmp_path)
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": root, "dataset.split": "val",
                                                "infer.save_overlays": True, "tse.enabled": False}))
    with pytest.raises(DatasetError, match=rf"split list {split}, line 2: image id"):
        run_pseudo_labels(cfg, out_dir=tmp_path / "out" / "lam")
    after = file_snapshot(tmp_path)
    assert {p: v for p, v in after.items() if not p.is_relative_to(tmp_path / "out")} == before
    assert not [p for p in after if p.is_relative_to(tmp_path / "out") and p.suffix in (".png", ".jpg")]


@pytest.mark.parametrize("folder", ["JPEGImages", "SegmentationClass", "JPEGImages/out"])
def test_output_folder_inside_the_dataset_is_refused(tiny_voc, tiny_clip_files, tmp_path, folder):
    root = copy_dataset(tiny_voc, tmp_path)
    before = file_snapshot(root)
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": root, "dataset.split": "val", "tse.enabled": False}))
    with pytest.raises(DatasetError, match=rf"output folder {root / folder}.* lies inside the dataset folder "
                                           rf"{root / folder.split('/')[0]}"):
        run_pseudo_labels(cfg, out_dir=root / folder)
    assert file_snapshot(root) == before


def test_skip_existing_recomputes_only_missing_outputs_and_keeps_the_scores(tiny_voc, tiny_clip_files, tmp_path,
                                                                            monkeypatch):
    calls = []
    original = infer_lam.predict_image
    monkeypatch.setattr(infer_lam, "predict_image", lambda *a, **k: calls.append(1) or original(*a, **k))
    values = {"dataset.root": tiny_voc, "dataset.split": "val", "infer.save_overlays": True, "tse.enabled": False}
    out = tmp_path / "out"
    first = run_pseudo_labels(load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **values)), out_dir=out)
    ids = (tiny_voc / "splits" / "val.txt").read_text().split()
    assert len(calls) == len(ids)
    written = file_snapshot(out / "pseudo_labels")
    (out / "pseudo_labels" / f"{ids[1]}.png").unlink()
    (out / "cams" / f"{ids[2]}.jpg").unlink()             # a missing overlay makes the image incomplete too
    calls.clear()
    again = run_pseudo_labels(load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **values, **{"infer.skip_existing": True})), out_dir=out)
    assert len(calls) == 2
    assert file_snapshot(out / "pseudo_labels") == written
    assert sum(map(sum, first["confusion"])) > 0
    assert again["confusion"] == first["confusion"] and again["miou"] == first["miou"]
    assert json.loads((out / "pseudo_label_scores.json").read_text())["confusion"] == first["confusion"]


def test_split_name_that_leaves_the_work_dir_is_refused(tiny_voc, tiny_clip_files, tmp_path):
    cfg = load_config(ROOT / "configs/voc.yaml", tiny_overrides(
        tiny_clip_files, tmp_path / "cache", **{"dataset.root": tiny_voc, "dataset.split": "../../escape",
                                                "work_dir": tmp_path / "a" / "b", "tse.enabled": False}))
    with pytest.raises(DatasetError, match="split name '../../escape' must be a plain file name"):
        run_pseudo_labels(cfg)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "cache")]
