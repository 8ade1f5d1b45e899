"""Segmentation inference: multi-scale + flip logits, scoring, CRF, VOC test submission, COCO, ranks."""
import json
import os
import shutil
import socket
import subprocess
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from excel.apps.pipeline import infer_seg_main
from excel.builders import build_model
from excel.config import load_config
from excel.data.layout import find_mask
from excel.data.transforms import normalize
from excel.evaluation import segment
from excel.evaluation.crf import DenseCRF, crf_from_logits, softmax, upsample_logits
from excel.evaluation.multiscale import check_scales, multiscale_logits, reduce_logits
from excel.evaluation.segment import run_segmentation
from excel.evaluation.voc_submission import VOC_SUBMISSION_DIR
from excel.io import DatasetError, read_image, read_mask, voc_palette
from excel.modeling.checkpoint import save_checkpoint

VOC_VAL_IDS = ["2007_000033", "2007_000042", "2007_000061", "2007_000123"]
VOC_TEST_IDS = ["2008_000006", "2008_000010"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tiny model runs fastest on one thread (no contention on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Multi-scale + flip aggregation
# ----------------------------------------------------------------------------------------------

class FakeSegmenter:
    """B×3×S×S → B×K×(S/16)×(S/16): a random 3×3 conv (not mirror-symmetric) pooled over 16×16 cells."""

    def __init__(self, classes: int = 5, device: torch.device = torch.device("cpu")):
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(classes, 3, 3, 3, generator=generator).to(device)
        self.batch_sizes: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        return F.avg_pool2d(F.conv2d(images, self.weight, padding=1), 16)


def plain_multiscale(segment_fn, image, resize, scales, flip, flip_unit_scale=False):
    """The aggregation written out: one call per view, flips undone with torch.flip, then averaged."""
    height, width = image.shape[-2:]

    def logits_at(view):
        return F.interpolate(segment_fn(view), size=(height, width), mode="bilinear", align_corners=False)[0]

    per_scale = []
    for scale in scales:
        side = int(resize * scale)
        view = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        logits = logits_at(view)
        if flip and (scale != 1 or flip_unit_scale):
            mirrored = torch.flip(logits_at(torch.flip(view, dims=[3])), dims=[2])
            logits = (logits + mirrored) / 2
        per_scale.append(logits)
    return sum(per_scale) / len(per_scale)


@pytest.mark.parametrize("flip, flip_unit_scale, calls", [(True, False, [2, 1, 2, 2]), (True, True, [2, 2, 2, 2]),
                                                          (False, False, [1, 1, 1, 1])])
def test_multiscale_matches_plain_computation(flip, flip_unit_scale, calls, device):
    image = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(1))
    segmenter = FakeSegmenter(device=device)
    scales = (0.7, 1.0, 1.2, 1.5)
    result = multiscale_logits(segmenter, image.to(device), 80, scales, flip, flip_unit_scale).cpu()
    assert segmenter.batch_sizes == calls
    assert result.shape == (5, 37, 50)
    torch.testing.assert_close(result, plain_multiscale(FakeSegmenter(), image, 80, scales, flip, flip_unit_scale),
                               rtol=1e-5, atol=1e-5)


def test_multiscale_single_scale_is_upsampled_logits():
    image = torch.randn(1, 3, 32, 48)
    segmenter = FakeSegmenter()
    square = F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
    expected = F.interpolate(segmenter(square), size=(32, 48), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(multiscale_logits(segmenter, image, 32, [1.0], flip=True), expected)


def test_scales_must_give_patch_multiples():
    check_scales(320, [0.7, 1.0, 1.2, 1.5], 16)
    with pytest.raises(ValueError, match=r"infer.scales \[0.75\] .* sides \[24\]"):
        check_scales(32, [1.0, 0.75], 16)
    with pytest.raises(ValueError, match="empty"):
        check_scales(320, [], 16)


def test_reduce_logits():
    logits = torch.randn(3, 10, 13)
    np.testing.assert_array_equal(reduce_logits(logits, 1), logits.numpy())
    small = reduce_logits(logits, 4)
    assert small.shape == (3, 3, 4) and small.dtype == np.float16


# ----------------------------------------------------------------------------------------------
# End-to-end runs with a tiny CLIP
# ----------------------------------------------------------------------------------------------

def tiny_overrides(tiny_clip_files, root, work_dir):
    config, checkpoint = tiny_clip_files
    return [f"clip.model_config={config}", f"clip.pretrained={checkpoint}", "tse.enabled=false",
            "head.adapter_dim=32", "head.adapter_hidden=32", "head.decoder_heads=4", f"dataset.root={root}",
            "infer.resize=32", "infer.scales=[0.5,1.0,1.5]", "crf.workers=0", f"work_dir={work_dir}", "device=cpu"]


def write_head_checkpoint(cfg, path, num_classes):
    """A random head whose classifier is scaled up so that predictions vary between classes."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.decoder.classifier.weight.mul_(30)
    save_checkpoint(path, {"head": model.head.state_dict(), "num_classes": num_classes, "iteration": 1})
    return path


@pytest.fixture(scope="module")
def voc(tiny_clip_files, tiny_voc, tmp_path_factory):
    """(config, checkpoint, tiny VOC root, overrides) with the CRF run in one worker process."""
    work = tmp_path_factory.mktemp("segment_voc")
    overrides = tiny_overrides(tiny_clip_files, tiny_voc, work) + ["crf.workers=1"]
    cfg = load_config("configs/voc.yaml", overrides)
    return cfg, write_head_checkpoint(cfg, work / "head.pth", 20), tiny_voc, overrides


@pytest.fixture(scope="module")
def voc_val(voc, tmp_path_factory):
    """Output folder and results of one single-process run on the tiny VOC val split."""
    cfg, checkpoint, _, _ = voc
    out = tmp_path_factory.mktemp("voc_val")
    return out, run_segmentation(cfg, checkpoint, "val", out)


def read_png(path):
    with Image.open(path) as image:
        return np.asarray(image).copy()


def plain_iou(prediction_dir, root, dataset, split, ids, num_classes):
    """Per-class IoU from the written PNGs and the masks, counted pixel class by pixel class."""
    tp, fp, fn = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for image_id in ids:
        pred = read_png(prediction_dir / f"{image_id}.png").astype(int)
        gt = read_mask(find_mask(root, dataset, image_id, split)).astype(int)
        valid = gt != 255
        for c in range(num_classes):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            fp[c] += np.sum((pred == c) & (gt != c) & valid)
            fn[c] += np.sum((pred != c) & (gt == c) & valid)
    union = tp + fp + fn
    iou = [tp[c] / union[c] if union[c] else np.nan for c in range(num_classes)]
    return np.array(iou), [bool(fn[c] + tp[c] > 0) for c in range(num_classes)]


def as_floats(values):
    """A score list as floats (JSON writes NaN as null)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def test_voc_val_scores_match_written_predictions(voc, voc_val):
    _, _, root, _ = voc
    out, results = voc_val
    for kind in ("raw", "crf"):
        saved = json.loads((out / f"scores_{kind}.json").read_text())
        assert (out / f"scores_{kind}.txt").read_text().startswith("class")
        iou, present = plain_iou(out / kind, root, "voc", "val", VOC_VAL_IDS, 21)
        assert saved["present"] == present
        np.testing.assert_allclose(as_floats(saved["iou"]), iou, rtol=0, atol=1e-12)
        assert results[kind]["miou"] == pytest.approx(np.mean(iou[present]))
        assert sorted(p.name for p in (out / f"{kind}_color").iterdir()) == [f"{i}.png" for i in VOC_VAL_IDS]
    assert len(set(np.unique(np.concatenate([read_png(out / "raw" / f"{i}.png").ravel()
                                             for i in VOC_VAL_IDS])))) > 1
    assert (out / "config.yaml").is_file() and (out / "segment.log").is_file()
    assert not (out / "results").exists()


def test_voc_val_predictions_match_direct_inference(voc, voc_val):
    cfg, checkpoint, root, _ = voc
    out, _ = voc_val
    model = build_model(cfg).eval()
    model.head.load_state_dict(torch.load(checkpoint)["head"])
    image_id = VOC_VAL_IDS[2]
    image = read_image(root / "JPEGImages" / f"{image_id}.jpg")
    normalised = normalize(image, "imagenet")[None]
    logits = plain_multiscale(model.segment, normalised, 32, [0.5, 1.0, 1.5], flip=True)
    # The pipeline batches each view with its flip, the plain version runs them one by one: the logits sum in
    # different orders (they differ by ~1e-6). Exact label equality is sound here because every pixel has a
    # clear top-2 margin (checked: > 1e-2; measured 0.74 for the logits, 0.97 for the CRF marginals).
    top2 = logits.topk(2, dim=0).values
    assert (top2[0] - top2[1]).min() > 1e-2
    np.testing.assert_array_equal(read_png(out / "raw" / f"{image_id}.png"), logits.argmax(0).numpy())
    marginals = DenseCRF()(image, softmax(upsample_logits(reduce_logits(logits, 4), image.shape[:2])))
    top2 = np.sort(marginals, axis=0)[-2:]
    assert (top2[1] - top2[0]).min() > 1e-2
    crf = crf_from_logits(image, reduce_logits(logits, 4), DenseCRF())
    np.testing.assert_array_equal(read_png(out / "crf" / f"{image_id}.png"), crf)
    colour = read_png(out / "raw_color" / f"{image_id}.png")
    np.testing.assert_array_equal(colour, voc_palette()[logits.argmax(0).numpy()])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def segment_as_rank(rank, world_size, port, cfg, checkpoint, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    run_segmentation(cfg, checkpoint, "val", out)


def test_two_gloo_processes_match_one(voc, voc_val, tmp_path):
    cfg, checkpoint, _, _ = voc
    single, _ = voc_val
    cfg = cfg.copy()
    cfg.crf.workers = 0
    torch.multiprocessing.start_processes(segment_as_rank, args=(2, free_port(), cfg, checkpoint, tmp_path),
                                          nprocs=2, start_method="fork")
    # Exact: both runs segment one image at a time with one thread, so every image's sums run in the same order.
    for kind in ("raw", "crf"):
        assert json.loads((tmp_path / f"scores_{kind}.json").read_text()) == \
            json.loads((single / f"scores_{kind}.json").read_text())
        for image_id in VOC_VAL_IDS:
            np.testing.assert_array_equal(read_png(tmp_path / kind / f"{image_id}.png"),
                                          read_png(single / kind / f"{image_id}.png"))


def test_voc_test_split_gives_server_layout_and_archive(voc, voc_val, tmp_path):
    cfg, checkpoint, _, _ = voc
    cfg = cfg.copy()
    cfg.crf.workers = 0
    cfg.infer.save_overlays = True
    results = run_segmentation(cfg, checkpoint, "test", tmp_path)
    assert results == {"raw": None, "crf": None}
    assert not list(tmp_path.glob("scores_*"))
    folder = tmp_path / VOC_SUBMISSION_DIR
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.png" for i in VOC_TEST_IDS]
    for image_id in VOC_TEST_IDS:
        with Image.open(folder / f"{image_id}.png") as png:
            assert png.mode == "P"
            assert np.array_equal(np.array(png.getpalette()[:768]).reshape(256, 3), voc_palette())
            np.testing.assert_array_equal(np.asarray(png), read_png(tmp_path / "crf" / f"{image_id}.png"))
    assert sorted(p.name for p in (tmp_path / "overlay").iterdir()) == [f"{i}.jpg" for i in VOC_TEST_IDS]
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        assert sorted(tar.getnames()) == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png"
                                          for i in VOC_TEST_IDS]


def test_coco_val_end_to_end(tiny_clip_files, tiny_coco, tmp_path):
    cfg = load_config("configs/coco.yaml", tiny_overrides(tiny_clip_files, tiny_coco, tmp_path))
    checkpoint = write_head_checkpoint(cfg, tmp_path / "coco_head.pth", 80)
    results = run_segmentation(cfg, checkpoint, "val")
    out = tmp_path / "segment_val_coco_head"
    ids = sorted(p.stem for p in (tiny_coco / "SegmentationClass" / "val2014").glob("*.png"))
    for kind in ("raw", "crf"):
        assert sorted(p.stem for p in (out / kind).iterdir()) == ids
        iou, present = plain_iou(out / kind, tiny_coco, "coco", "val", ids, 81)
        np.testing.assert_allclose(as_floats(results[kind]["iou"]), iou, rtol=0, atol=1e-12)
        assert results[kind]["present"] == present
    assert (out / "scores_crf.txt").read_text().splitlines()[1].startswith("background")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_scored_split_without_masks_is_an_error(voc, tmp_path):
    cfg, checkpoint, _, _ = voc
    (tmp_path / "unlabelled.txt").write_text("".join(f"{i}\n" for i in VOC_TEST_IDS))
    cfg = cfg.copy()
    cfg.dataset.split_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"split 'unlabelled' is scored but image '2008_000006' has no "
                                                r"mask .*name starts with 'test'"):
        run_segmentation(cfg, checkpoint, "unlabelled", tmp_path / "out")


def test_missing_image_is_an_error(voc, tmp_path):
    cfg, checkpoint, _, _ = voc
    (tmp_path / "val.txt").write_text("2007_000033\n2099_000001\n")
    cfg = cfg.copy()
    cfg.dataset.split_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/2099_000001.jpg"):
        run_segmentation(cfg, checkpoint, "val", tmp_path / "out")


def test_cli_reports_wrong_class_count(voc, tmp_path, capsys):
    _, _, _, overrides = voc
    coco_like = {"head": {}, "num_classes": 80}
    save_checkpoint(tmp_path / "coco.pth", coco_like)
    with pytest.raises(SystemExit) as exit_info:
        infer_seg_main(["--checkpoint", str(tmp_path / "coco.pth"), "--out", str(tmp_path / "out"), *overrides])
    assert exit_info.value.code == 1
    assert "coco.pth was trained for 80 classes but dataset.num_classes=20" in capsys.readouterr().err


def test_launcher_requires_a_checkpoint():
    result = subprocess.run(["bash", "infer_seg_voc.sh", "tools/infer_seg_voc.py", "0", "1", "val"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "checkpoint argument is required" in result.stderr and "gpu_number" in result.stderr


# ----------------------------------------------------------------------------------------------
# Hostile split lists and output folders; resuming an interrupted run
# ----------------------------------------------------------------------------------------------

def file_snapshot(folder):
    """{path: bytes} of every file below ``folder``."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("hostile", ["ABS", "../JPEGImages/2007_000033", "2007_000033\\..\\..\\x"])
def test_split_id_that_leaves_the_folders_is_refused(voc, tiny_voc, tmp_path, hostile):
    cfg, checkpoint, _, _ = voc
    root = tmp_path / "VOC2012"
    shutil.copytree(tiny_voc, root)
    if hostile == "ABS":       # an absolute id finds the image, and its overlay would replace the source JPEG
        hostile = str(root / "JPEGImages" / "2007_000033")
    split = root / "splits" / "val.txt"
    split.write_text(f"2007_000042\n{hostile}\n")
    cfg = cfg.copy()
    cfg.dataset.root, cfg.dataset.split_dir = str(root), None
    cfg.crf.workers, cfg.infer.save_overlays = 0, True
    before = file_snapshot(tmp_path)
    with pytest.raises(DatasetError, match=rf"split list {split}, line 2: image id"):
        run_segmentation(cfg, checkpoint, "val", tmp_path / "out")
    after = file_snapshot(tmp_path)
    assert {p: v for p, v in after.items() if not p.is_relative_to(tmp_path / "out")} == before
    assert not [p for p in after if p.suffix in (".png", ".jpg") and p.is_relative_to(tmp_path / "out")]


@pytest.mark.parametrize("folder, dataset", [("VOC2012/JPEGImages", "VOC2012"),
                                             ("VOC2012/SegmentationClassAug/x", "VOC2012"),
                                             (".", "raw")])     # out/raw/<id> would be <root>/<id>
def test_output_folder_inside_the_dataset_is_refused(voc, tmp_path, folder, dataset):
    cfg, checkpoint, _, _ = voc
    root = tmp_path / dataset
    (root / "JPEGImages").mkdir(parents=True)
    cfg = cfg.copy()
    cfg.dataset.root = str(root)
    with pytest.raises(DatasetError, match=rf"output folder {tmp_path / folder}\S* (lies inside|holds) the "
                                           rf"dataset folder {root}/"):
        run_segmentation(cfg, checkpoint, "val", tmp_path / folder)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_skip_existing_segments_only_missing_images_and_keeps_the_scores(voc, voc_val, tmp_path, monkeypatch):
    cfg, checkpoint, _, _ = voc
    first_out, first = voc_val
    shutil.copytree(first_out, tmp_path / "out")
    out = tmp_path / "out"
    (out / "crf" / f"{VOC_VAL_IDS[1]}.png").unlink()
    (out / "raw_color" / f"{VOC_VAL_IDS[3]}.png").unlink()
    calls = []
    original = segment.image_logits
    monkeypatch.setattr(segment, "image_logits", lambda *args: calls.append(1) or original(*args))
    cfg = cfg.copy()
    cfg.crf.workers, cfg.infer.skip_existing = 0, True
    again = run_segmentation(cfg, checkpoint, "val", out)
    assert len(calls) == 2
    for kind in ("raw", "crf"):
        assert again[kind]["confusion"] == first[kind]["confusion"]
        assert (out / f"scores_{kind}.json").read_text() == (first_out / f"scores_{kind}.json").read_text()
    for kind in ("raw", "crf"):
        for image_id in VOC_VAL_IDS:
            np.testing.assert_array_equal(read_png(out / kind / f"{image_id}.png"),
                                          read_png(first_out / kind / f"{image_id}.png"))
