"""Tests of tools/make_splits.py and tools/make_coco_masks.py (and the functions behind them)."""
from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_data import (
    COCO_CATEGORY_IDS,
    COCO_TRAIN,
    COCO_VAL,
    VOC_AUG_ONLY,
    VOC_TRAIN,
    VOC_VAL,
    rle_counts,
)
from PIL import Image

from excel.io import DatasetError, read_labels
from excel.prep.coco_masks import (
    coco_category_index,
    rasterize_coco_annotations,
    write_coco_masks,
)
from excel.prep.splits import choose_subset, make_coco_splits, make_voc_splits

REPO = Path(__file__).resolve().parents[1]


def split_ids(split_dir: Path, split: str) -> list[str]:
    return (split_dir / f"{split}.txt").read_text().split()


def mask_classes(path: Path) -> list[int]:
    values = np.unique(np.asarray(Image.open(path)))
    return [int(v) for v in values if v not in (0, 255)]


def load_tool(name: str) -> dict:
    return runpy.run_path(str(REPO / "tools" / name), run_name="tool_under_test")


# ---------------------------------------------------------------- VOC

def test_voc_splits(tiny_voc: Path) -> None:
    split_dir = tiny_voc / "splits"
    assert split_ids(split_dir, "train") == list(VOC_TRAIN)
    assert split_ids(split_dir, "val") == list(VOC_VAL)
    assert split_ids(split_dir, "test") == (tiny_voc / "ImageSets/Segmentation/test.txt").read_text().split()
    aug = {p.stem for p in (tiny_voc / "SegmentationClassAug").glob("*.png")}
    assert split_ids(split_dir, "train_aug") == sorted(aug - set(VOC_VAL))
    assert set(split_ids(split_dir, "train_aug")) == set(VOC_TRAIN) | set(VOC_AUG_ONLY)


def test_voc_labels_come_from_masks(tiny_voc: Path) -> None:
    labels = read_labels(tiny_voc / "splits" / "labels.json")
    assert set(labels) == set(VOC_TRAIN) | set(VOC_VAL) | set(VOC_AUG_ONLY)
    for image_id, classes in labels.items():
        assert classes == mask_classes(tiny_voc / "SegmentationClassAug" / f"{image_id}.png")
    for image_id, (_, _, shapes, _) in {**VOC_TRAIN, **VOC_VAL, **VOC_AUG_ONLY}.items():
        assert labels[image_id] == sorted({shape[0] for shape in shapes})


def write_voc_xml(path: Path, names: list[str]) -> None:
    objects = "".join(f"<object><name>{n}</name><part><name>head</name></part></object>"
                      for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>x.jpg</filename>{objects}</annotation>")


def test_voc_labels_from_xml_when_no_mask(tiny_voc: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_voc, tmp_path / "VOC2012"))
    shutil.rmtree(root / "splits")
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        (root / folder / "2007_000039.png").unlink()
    write_voc_xml(root / "Annotations" / "2007_000039.xml", ["person", "dog", "person"])
    make_voc_splits(root, tmp_path / "out")
    labels = read_labels(tmp_path / "out" / "labels.json")
    assert labels["2007_000039"] == [12, 15]
    assert "2007_000039" not in split_ids(tmp_path / "out", "train_aug")
    write_voc_xml(root / "Annotations" / "2007_000039.xml", ["unicorn"])
    with pytest.raises(DatasetError, match="2007_000039.xml.*unicorn"):
        make_voc_splits(root, tmp_path / "out2")


def test_voc_bad_inputs_name_the_file(tiny_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_root.*make_splits.py"):
        make_voc_splits(tmp_path / "missing_root")
    root = Path(shutil.copytree(tiny_voc, tmp_path / "VOC2012"))
    mask_path = root / "SegmentationClassAug" / "2008_000002.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[3, 3] = 40
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(DatasetError, match="2008_000002.png"):
        make_voc_splits(root, tmp_path / "out")
    (root / "JPEGImages" / "2007_000033.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt.*2007_000033.jpg"):
        make_voc_splits(root, tmp_path / "out")
    (root / "ImageSets/Segmentation/train.txt").write_text("")
    with pytest.raises(DatasetError, match="train.txt.*empty"):
        make_voc_splits(root, tmp_path / "out")


def test_make_splits_command_line(tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_splits"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_splits.py"), "--dataset",
                             "voc", "--root", str(tiny_voc), "--out", str(out), "--workers", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train_aug: 8 images" in result.stdout
    for path in (tiny_voc / "splits").iterdir():
        assert (out / path.name).read_text() == path.read_text()


def test_custom_dataset_needs_num_classes(tiny_voc: Path, tmp_path: Path) -> None:
    tool = load_tool("make_splits.py")
    with pytest.raises(SystemExit):
        tool["parse_args"](["--dataset", "custom", "--root", str(tiny_voc)])
    tool["main"](["--dataset", "custom", "--root", str(tiny_voc), "--num-classes", "20",
                  "--out", str(tmp_path / "custom"), "--workers", "1"])
    assert (tmp_path / "custom" / "labels.json").read_text() == \
        (tiny_voc / "splits" / "labels.json").read_text()
    with pytest.raises(DatasetError, match=r"values \[20\] outside"):
        make_voc_splits(tiny_voc, tmp_path / "custom19", num_classes=19, categories=None,
                        dataset="custom")


# ---------------------------------------------------------------- COCO splits

def test_coco_splits(tiny_coco: Path) -> None:
    split_dir = tiny_coco / "splits"
    annotated = [n for n, spec in COCO_TRAIN.items() if spec[2]]
    assert split_ids(split_dir, "train") == [f"COCO_train2014_{n:012d}" for n in sorted(annotated)]
    assert split_ids(split_dir, "val") == [f"COCO_val2014_{n:012d}" for n in sorted(COCO_VAL)]
    assert split_ids(split_dir, "val_5000") == split_ids(split_dir, "val")
    labels = read_labels(split_dir / "labels.json")
    for subset in ("train2014", "val2014"):
        for path in (tiny_coco / "SegmentationClass" / subset).glob("*.png"):
            assert labels[path.stem] == mask_classes(path)


def test_coco_val_subset_is_deterministic(tiny_coco: Path, tmp_path: Path) -> None:
    splits = make_coco_splits(tiny_coco, tmp_path / "a", val_subset_size=2, seed=3)
    again = make_coco_splits(tiny_coco, tmp_path / "b", val_subset_size=2, seed=3)
    assert splits["val_2"] == again["val_2"] == split_ids(tmp_path / "a", "val_2")
    assert len(splits["val_2"]) == 2 and set(splits["val_2"]) <= set(splits["val"])
    ids = [f"COCO_val2014_{i:012d}" for i in range(60)]
    subset = choose_subset(ids, 10, seed=0)
    assert len(subset) == 10 and subset == sorted(subset) and set(subset) <= set(ids)
    assert choose_subset(ids[::-1], 10, seed=0) == subset
    assert choose_subset(ids, 10, seed=1) != subset
    assert choose_subset(ids, 5000, seed=0) == ids


def test_coco_numeric_mask_names(tiny_coco: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_coco, tmp_path / "COCO"))
    for path in (root / "SegmentationClass" / "val2014").glob("*.png"):
        path.rename(path.with_name(path.stem.rsplit("_", 1)[1] + ".png"))
    splits = make_coco_splits(root, tmp_path / "out")
    assert splits["val"] == [f"COCO_val2014_{n:012d}" for n in sorted(COCO_VAL)]


def test_coco_missing_masks_point_at_mask_tool(tmp_path: Path) -> None:
    (tmp_path / "COCO" / "JPEGImages" / "train2014").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train2014.*make_coco_masks.py"):
        make_coco_splits(tmp_path / "COCO")


# ---------------------------------------------------------------- COCO masks

def test_category_index_follows_id_order() -> None:
    index = coco_category_index([{"id": i} for i in reversed(COCO_CATEGORY_IDS)])
    assert len(index) == 80
    assert (index[1], index[18], index[27], index[62], index[90]) == (1, 17, 25, 57, 80)


def hand_built_annotations() -> tuple[dict, np.ndarray, np.ndarray]:
    """A 12×14 image: a small dog square over a large toothbrush rectangle, a person given as
    uncompressed RLE, and a crowd region; with the masks expected under both crowd rules."""
    from pycocotools import mask as coco_mask

    height, width = 12, 14
    person = np.zeros((height, width), np.uint8)
    person[9:12, 10:14] = 1
    crowd = np.zeros((height, width), np.uint8)
    crowd[0:4, 9:14] = 1
    crowd_rle = coco_mask.encode(np.asfortranarray(crowd))
    crowd_rle["counts"] = crowd_rle["counts"].decode("ascii")
    annotations = [
        {"id": 1, "category_id": 18, "iscrowd": 0,                     # small, listed first
         "segmentation": [[4, 3, 9, 3, 9, 8, 4, 8]]},
        {"id": 2, "category_id": 90, "iscrowd": 0,                     # large, listed last
         "segmentation": [[1, 1, 11, 1, 11, 10, 1, 10]]},
        {"id": 3, "category_id": 1, "iscrowd": 0, "segmentation": rle_counts(person)},
        {"id": 4, "category_id": 44, "iscrowd": 1, "segmentation": crowd_rle},
    ]
    data = {"images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg",
                        "height": height, "width": width}],
            "annotations": [dict(a, image_id=7) for a in annotations],
            "categories": [{"id": i, "name": str(i)} for i in COCO_CATEGORY_IDS]}
    expected = np.zeros((height, width), np.uint8)
    expected[1:10, 1:11] = 80                  # toothbrush (id 90), rows 1..9, cols 1..10
    expected[3:8, 4:9] = 17                    # dog (id 18) on top: smaller area
    expected[9:12, 10:14] = 1                  # person (id 1), overlaps the toothbrush at (9, 10)
    expected_ignore = expected.copy()
    expected_ignore[0:4, 9:14][expected[0:4, 9:14] == 0] = 255
    expected_label = expected.copy()
    expected_label[0:4, 9:14] = 40             # bottle (id 44): smaller than the toothbrush → on top
    return data, expected_ignore, expected_label


def test_coco_masks_match_hand_built_expectation(tmp_path: Path) -> None:
    data, expected_ignore, expected_label = hand_built_annotations()
    json_path = tmp_path / "instances_val2014.json"
    json_path.write_text(json.dumps(data))
    assert write_coco_masks(json_path, tmp_path / "ignore", crowd="ignore") == 1
    written = tmp_path / "ignore" / "COCO_val2014_000000000007.png"
    assert Image.open(written).mode == "P"
    np.testing.assert_array_equal(np.asarray(Image.open(written)), expected_ignore)
    index = coco_category_index(data["categories"])
    label_mask = rasterize_coco_annotations(data["annotations"], 12, 14, index, crowd="label")
    np.testing.assert_array_equal(label_mask, expected_label)


def test_make_coco_masks_command_line(tmp_path: Path) -> None:
    data, expected_ignore, _ = hand_built_annotations()
    data["images"].append({"id": 8, "file_name": "COCO_val2014_000000000008.jpg",
                           "height": 5, "width": 5})
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(data))
    load_tool("make_coco_masks.py")["main"](["--annotations", str(json_path), "--out",
                                             str(tmp_path / "masks"), "--workers", "2"])
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == \
        ["COCO_val2014_000000000007.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "masks" / "COCO_val2014_000000000007.png")),
        expected_ignore)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        write_coco_masks(tmp_path / "absent.json", tmp_path / "masks")
