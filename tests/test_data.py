"""Tests of excel.io, excel.data (layout, datasets, collate) and excel.data.transforms."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import VOC_TRAIN, VOC_VAL
from PIL import Image
from torch.utils.data import DataLoader

from excel.data.dataset import SegmentationDataset, collate
from excel.data.transforms import (
    EvalTransform,
    TrainAugment,
    choose_crop_box,
    crop_is_balanced,
    denormalize,
    normalize,
)
from excel.io import DatasetError, read_image, read_mask, write_mask


def mask_classes(path: Path) -> list[int]:
    """Reference: foreground classes of a mask file, by plain PIL + numpy."""
    values = np.unique(np.asarray(Image.open(path)))
    return [int(v) for v in values if v not in (0, 255)]


@pytest.fixture()
def voc_copy(tiny_voc: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny VOC dataset that a test may damage."""
    return Path(shutil.copytree(tiny_voc, tmp_path / "VOC2012"))


# ---------------------------------------------------------------- reading files

def test_read_image_rgb_and_grayscale(tiny_voc: Path) -> None:
    rgb = read_image(tiny_voc / "JPEGImages" / "2007_000032.jpg")
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 80, 3)
    gray_id = next(i for i, spec in VOC_TRAIN.items() if spec[3])
    gray_path = tiny_voc / "JPEGImages" / f"{gray_id}.jpg"
    assert Image.open(gray_path).mode == "L"
    gray = read_image(gray_path)
    raw = np.asarray(Image.open(gray_path))
    assert gray.shape == (*raw.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(gray[:, :, channel], raw)


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        read_image(broken)
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        read_image(tmp_path / "absent.jpg")


def test_read_image_truncated_file(tiny_voc: Path, tmp_path: Path) -> None:
    data = (tiny_voc / "JPEGImages" / "2007_000032.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated.jpg"):
        read_image(truncated)


def test_read_mask_palette_and_gray(tiny_voc: Path) -> None:
    palette_path = tiny_voc / "SegmentationClass" / "2007_000032.png"
    gray_path = tiny_voc / "SegmentationClassAug" / "2007_000032.png"
    assert Image.open(palette_path).mode == "P" and Image.open(gray_path).mode == "L"
    palette_mask, gray_mask = read_mask(palette_path), read_mask(gray_path)
    assert palette_mask.dtype == np.uint8 and palette_mask.shape == (64, 80)
    np.testing.assert_array_equal(palette_mask, gray_mask)
    assert set(np.unique(palette_mask).tolist()) == {0, 1, 15, 255}


def test_read_mask_rejects_colour_png(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(path)
    with pytest.raises(DatasetError, match="colour.png"):
        read_mask(path)


def test_write_mask_round_trip_is_atomic(tmp_path: Path) -> None:
    mask = np.arange(12 * 10, dtype=np.int64).reshape(12, 10) % 21
    mask[0, 0] = 255
    path = tmp_path / "out" / "mask.png"
    write_mask(path, mask)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), mask)
    assert [p.name for p in path.parent.iterdir()] == ["mask.png"]


# ---------------------------------------------------------------- datasets

def test_voc_dataset_samples_match_files(tiny_voc: Path) -> None:
    dataset = SegmentationDataset(tiny_voc, "train", dataset="voc")
    assert dataset.has_masks and len(dataset) == len(VOC_TRAIN)
    assert dataset.ids == list(VOC_TRAIN)
    for sample in dataset:
        height, width = VOC_TRAIN[sample["id"]][:2]
        assert sample["image"].shape == (height, width, 3) and sample["image"].dtype == np.uint8
        assert sample["mask"].dtype == torch.int64 and tuple(sample["mask"].shape) == (height, width)
        assert sample["size"].tolist() == [height, width]
        mask_path = tiny_voc / "SegmentationClassAug" / f"{sample['id']}.png"
        np.testing.assert_array_equal(sample["mask"].numpy(), np.asarray(Image.open(mask_path)))
        expected = torch.zeros(20)
        for c in mask_classes(mask_path):
            expected[c - 1] = 1
        assert sample["cls_label"].dtype == torch.float32
        assert torch.equal(sample["cls_label"], expected)


def test_labels_from_masks_equal_label_file(tiny_voc: Path, tmp_path: Path) -> None:
    split_dir = tmp_path / "splits_without_labels"
    split_dir.mkdir()
    shutil.copy(tiny_voc / "splits" / "train_aug.txt", split_dir)
    from_file = SegmentationDataset(tiny_voc, "train_aug", with_mask=False)
    from_masks = SegmentationDataset(tiny_voc, "train_aug", split_dir=split_dir, with_mask=False)
    assert not from_file.labels_from_masks and from_masks.labels_from_masks
    for a, b in zip(from_file, from_masks):
        assert a["id"] == b["id"]
        assert torch.equal(a["cls_label"], b["cls_label"])
        assert bool((b["mask"] == 255).all())


def test_split_without_masks_or_labels(tiny_voc: Path) -> None:
    dataset = SegmentationDataset(tiny_voc, "test", with_labels=False)
    assert not dataset.has_masks
    sample = dataset[0]
    assert bool((sample["mask"] == 255).all()) and float(sample["cls_label"].sum()) == 0
    with pytest.raises(DatasetError, match="2008_000006.*labels.json"):
        SegmentationDataset(tiny_voc, "test")


def test_coco_dataset_resolves_subsets_and_classes(tiny_coco: Path) -> None:
    dataset = SegmentationDataset(tiny_coco, "val_5000", dataset="coco")
    assert dataset.has_masks and dataset.num_classes == 80
    sample = dataset[dataset.ids.index("COCO_val2014_000000000073")]
    # category 3 (car) → class 3, category 90 (toothbrush) → class 80
    assert sample["cls_label"].nonzero().flatten().tolist() == [2, 79]
    assert sample["image"].shape == (64, 48, 3)
    gray = SegmentationDataset(tiny_coco, "train", dataset="coco")[1]
    assert gray["id"] == "COCO_train2014_000000000025" and gray["image"].shape == (60, 40, 3)


def test_coco_mask_named_by_number_is_found(tiny_coco: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_coco, tmp_path / "COCO"))
    folder = root / "SegmentationClass" / "val2014"
    (folder / "COCO_val2014_000000000042.png").rename(folder / "000000000042.png")
    dataset = SegmentationDataset(root, "val", dataset="coco", with_mask=True)
    assert dataset.items[0].mask_path == folder / "000000000042.png"
    assert dataset[0]["cls_label"].nonzero().flatten().tolist() == [16]


# ---------------------------------------------------------------- bad input

def test_missing_dataset_folder_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*make_splits.py"):
        SegmentationDataset(tmp_path / "nowhere", "train")


def test_missing_split_list_says_how_to_prepare(tiny_voc: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_split.txt.*make_splits.py"):
        SegmentationDataset(tiny_voc, "no_such_split")


def test_empty_split_is_rejected(tiny_voc: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.txt.*empty"):
        SegmentationDataset(tiny_voc, "empty", split_dir=tmp_path)


def test_split_naming_missing_image(tiny_voc: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("2007_000032\n2099_123456\n")
    with pytest.raises(FileNotFoundError, match="2099_123456.jpg"):
        SegmentationDataset(tiny_voc, "bad", split_dir=tmp_path)


def test_split_naming_missing_mask(voc_copy: Path) -> None:
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        (voc_copy / folder / "2007_000039.png").unlink()
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug/2007_000039.png"):
        SegmentationDataset(voc_copy, "train", with_mask=True)
    assert not SegmentationDataset(voc_copy, "train", with_mask="auto").has_masks


def test_corrupt_image_raises_on_read(voc_copy: Path) -> None:
    (voc_copy / "JPEGImages" / "2007_000039.jpg").write_bytes(b"garbage")
    dataset = SegmentationDataset(voc_copy, "train")
    dataset[0]
    with pytest.raises(DatasetError, match="2007_000039.jpg"):
        dataset[1]


def test_mask_value_out_of_range(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClassAug" / "2007_000039.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 21
    Image.fromarray(mask).save(path)
    dataset = SegmentationDataset(voc_copy, "train")
    with pytest.raises(DatasetError, match=r"2007_000039.png.*\[21\]"):
        dataset[1]


def test_mask_size_mismatch(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClassAug" / "2007_000039.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    with pytest.raises(DatasetError, match="2007_000039.png.*2007_000039.jpg"):
        SegmentationDataset(voc_copy, "train")[1]


def test_label_file_missing_an_id(voc_copy: Path) -> None:
    labels = voc_copy / "splits" / "labels.json"
    labels.write_text(labels.read_text().replace('"2007_000039": [20],\n', ""))
    with pytest.raises(DatasetError, match="2007_000039.*labels.json"):
        SegmentationDataset(voc_copy, "train")


# ---------------------------------------------------------------- normalisation

def test_normalize_matches_plain_formula() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = normalize(image)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    imagenet = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    clip = ((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
            (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255))
    for mode, (mean, std) in (("imagenet", imagenet), ("clip", clip)):
        result = normalize(image, mode)
        for c in range(3):
            expected = (image[:, :, c].astype(np.float64) - mean[c]) / std[c]
            np.testing.assert_allclose(result[c].numpy(), expected, rtol=1e-6, atol=1e-6)
        restored = denormalize(result, mode)
        np.testing.assert_allclose(restored.permute(1, 2, 0).numpy(), image, atol=1e-4)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    assert torch.allclose(normalize(batch)[1], out)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(image, "openai")


# ---------------------------------------------------------------- augmentation

def striped_sample(height: int = 60, width: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 3:] = 7
    mask[: height // 4, :] = 255
    return image, mask


def test_train_augment_shapes_and_padding() -> None:
    image, mask = striped_sample()
    augment = TrainAugment(crop_size=320)
    for seed in range(5):
        out = augment(image, mask, np.random.default_rng(seed))
        assert out["image"].shape == (3, 320, 320) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (320, 320) and out["mask"].dtype == torch.int64
        top, bottom, left, right = out["valid_box"].tolist()
        assert 0 <= top < bottom <= 320 and 0 <= left < right <= 320
        outside = torch.ones(320, 320, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        # Scaled image is at most 120×180: everything else is padding.
        assert outside.any()
        assert bool((out["mask"][outside] == 255).all())
        assert torch.allclose(denormalize(out["image"])[:, outside], torch.zeros(1), atol=1e-3)
        assert set(out["mask"][~outside].unique().tolist()) <= {0, 7, 255}


def test_train_augment_without_scale_or_flip_keeps_pixels() -> None:
    image, mask = striped_sample()
    for flip_prob, expected_image, expected_mask in ((0.0, image, mask),
                                                      (1.0, image[:, ::-1], mask[:, ::-1])):
        augment = TrainAugment(crop_size=64, scale_range=(1.0, 1.0), flip_prob=flip_prob)
        out = augment(image, mask, np.random.default_rng(3))
        top, bottom, left, right = out["valid_box"].tolist()
        assert (bottom - top, right - left) == (60, 64)
        restored = denormalize(out["image"]).round().to(torch.uint8).permute(1, 2, 0).numpy()
        crop = restored[top:bottom, left:right]
        # Find the crop's horizontal position in the source by exhaustive comparison.
        matches = [x for x in range(90 - 64 + 1)
                   if np.array_equal(expected_image[:, x:x + 64], crop)]
        assert len(matches) == 1
        x = matches[0]
        np.testing.assert_array_equal(out["mask"][top:bottom, left:right].numpy(),
                                      expected_mask[:, x:x + 64])


def test_train_augment_is_deterministic_given_generator() -> None:
    image, mask = striped_sample()
    augment = TrainAugment(crop_size=96)
    first = augment(image, mask, np.random.default_rng(11))
    again = augment(image, mask, np.random.default_rng(11))
    other = augment(image, mask, np.random.default_rng(12))
    for key in ("image", "mask", "valid_box"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["image"], other["image"])


def test_train_augment_without_mask() -> None:
    image, _ = striped_sample()
    out = TrainAugment(crop_size=48)(image, None, np.random.default_rng(0))
    assert bool((out["mask"] == 255).all()) and out["image"].shape == (3, 48, 48)


class ScriptedGenerator:
    """Stands in for numpy's Generator: ``integers`` returns the scripted values in order."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def integers(self, high: int) -> int:
        value = self.values.pop(0)
        assert 0 <= value < high
        return value


def test_crop_is_balanced() -> None:
    label = np.zeros((4, 4), np.uint8)
    label[:, 3] = 1                                       # 12 vs 4: 75% is not below 75%
    assert not crop_is_balanced(label, 0.75)
    label[0, 2] = 1                                       # 11 vs 5: 68.75%
    assert crop_is_balanced(label, 0.75)
    label[:, :2] = 255                                    # ignore excluded: 3 vs 5
    assert crop_is_balanced(label, 0.75)
    assert not crop_is_balanced(np.full((4, 4), 255, np.uint8), 0.75)


def test_crop_retry_rule_with_scripted_draws() -> None:
    label = np.zeros((10, 40), np.uint8)
    label[:, 30:] = 3                          # a 10×10 crop is balanced only for left in 23..27
    draws = [0, 0, 0, 10, 0, 25, 0, 26]        # (top, left) pairs
    assert choose_crop_box(label, 10, (10, 40), ScriptedGenerator(draws)) == (0, 25)
    assert choose_crop_box(None, 10, (10, 40), ScriptedGenerator(draws)) == (0, 0)
    unbalanced = [0, 1] * 9 + [0, 7]           # ten draws, none balanced: the last is kept
    assert choose_crop_box(label, 10, (10, 40), ScriptedGenerator(unbalanced)) == (0, 7)
    assert choose_crop_box(label, 10, (10, 40), ScriptedGenerator([0, 1, 0, 2, 0, 24]),
                           max_tries=2) == (0, 2)


def test_crop_retry_rule_in_augmentation() -> None:
    image = np.zeros((50, 200, 3), np.uint8)
    mask = np.zeros((50, 200), np.uint8)
    mask[:, 150:] = 9                          # a 50-wide crop is balanced for left in 113..137

    def balanced_fraction(max_class_ratio: float) -> float:
        augment = TrainAugment(crop_size=50, scale_range=(1.0, 1.0), flip_prob=0.0,
                               max_class_ratio=max_class_ratio)
        outcomes = [crop_is_balanced(augment(image, mask, np.random.default_rng(s))["mask"]
                                     .numpy().astype(np.uint8), 0.75) for s in range(200)]
        return float(np.mean(outcomes))

    # One draw is balanced with probability 25/151; ten draws with about 0.84.
    assert balanced_fraction(0.75) > 0.65
    assert balanced_fraction(1.01) < 0.35


# ---------------------------------------------------------------- loaders and collate

def test_training_loader_batches_crops(tiny_voc: Path) -> None:
    dataset = SegmentationDataset(tiny_voc, "train_aug", image_transform=TrainAugment(crop_size=64))
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 64, 64)
    assert batch["cls_label"].shape == (3, 20) and batch["valid_box"].shape == (3, 4)
    assert batch["id"] == dataset.ids[:3]
    again = collate([dataset[i] for i in range(3)])
    assert torch.equal(again["image"], batch["image"])
    dataset.set_epoch(1)
    assert not torch.equal(collate([dataset[i] for i in range(3)])["image"], batch["image"])


def test_evaluation_loader_keeps_sizes(tiny_voc: Path) -> None:
    dataset = SegmentationDataset(tiny_voc, "val", image_transform=EvalTransform("imagenet"))
    batches = list(DataLoader(dataset, batch_size=1, collate_fn=collate))
    for batch, (image_id, spec) in zip(batches, VOC_VAL.items()):
        height, width = spec[:2]
        assert batch["id"] == [image_id]
        assert batch["image"].shape == (1, 3, height, width)
        assert batch["mask"].shape == (1, height, width)
        raw = read_image(tiny_voc / "JPEGImages" / f"{image_id}.jpg")
        assert torch.allclose(batch["image"][0], normalize(raw))
    raw_samples = [SegmentationDataset(tiny_voc, "val")[i] for i in range(2)]
    assert collate(raw_samples[:1])["image"].dtype == torch.uint8
    with pytest.raises(ValueError, match="batch_size=1"):
        collate(raw_samples)


def test_normalization_constants_are_made_once_per_device():
    from excel.data.transforms import normalization_constants

    first = normalization_constants("clip", torch.device("cpu"))
    again = normalization_constants("clip", None)
    assert first[0] is again[0] and first[1] is again[1]        # no new tensor (no host copy on a GPU)
    assert first[0].flatten().tolist() == pytest.approx([0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255])
