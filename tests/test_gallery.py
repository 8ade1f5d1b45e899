"""The pseudo-label gallery: row IoUs, order, HTML content, contact sheet, browser rendering, the tool."""
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excel.apps.gallery_render import CAPTION_HEIGHT, CELL_GAP, HEADER_HEIGHT, render
from excel.apps.gallery_rows import GalleryError, image_iou, load_gallery
from excel.config import load_config, save_config
from excel.io import read_image, write_image, write_mask

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["disc", "square", "triangle", "star", "ring"]
H, W = 24, 32


def reference_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Loops: classes seen on valid pixels of either map; IoU per class; mean."""
    inter, union, seen = {}, {}, set()
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g == 255:
            continue
        seen.update((p, g))
        for c in {p, g}:
            union[c] = union.get(c, 0) + 1
        if p == g:
            inter[p] = inter.get(p, 0) + 1
    return sum(inter.get(c, 0) / union[c] for c in seen) / len(seen)


def rect(c, top, left, h, w, base=None):
    mask = np.zeros((H, W), np.uint8) if base is None else base.copy()
    mask[top:top + h, left:left + w] = c
    return mask


@pytest.fixture()
def lam_folder(tmp_path):
    """A dataset of four images and an infer_lam output folder: predictions of known quality, CAM overlays
    for two images, one image without a ground-truth mask."""
    root = tmp_path / "data"
    gen = np.random.default_rng(0)
    truths = {"a_good": rect(1, 2, 2, 10, 10), "b_bad": rect(2, 5, 5, 12, 12), "c_mixed": rect(3, 0, 0, 12, 16),
              "d_nomask": None}
    truths["c_mixed"][12, :] = 255                                  # an ignored row
    preds = {"a_good": rect(1, 2, 2, 10, 9), "b_bad": rect(4, 0, 20, 6, 6), "c_mixed": rect(5, 12, 16, 4, 4, rect(3, 0, 0, 10, 16)),
             "d_nomask": rect(1, 0, 0, 4, 4)}
    out = tmp_path / "lam"
    for image_id, truth in truths.items():
        write_image(root / "JPEGImages" / f"{image_id}.jpg", gen.integers(0, 255, (H, W, 3), dtype=np.uint8))
        if truth is not None:
            write_mask(root / "SegmentationClass" / f"{image_id}.png", truth)
        write_mask(out / "pseudo_labels" / f"{image_id}.png", preds[image_id])
    for image_id in ("a_good", "c_mixed"):
        write_image(out / "cams" / f"{image_id}.jpg", np.full((H, W, 3), 128, np.uint8))
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"dataset.root={root}", "dataset.split=val"])
    save_config(cfg, out / "config.yaml")
    return out, truths, preds


def test_image_iou_matches_loops():
    gen = np.random.default_rng(1)
    for _ in range(20):
        pred = gen.integers(0, 4, (9, 11)).astype(np.uint8)
        gt = gen.integers(0, 5, (9, 11)).astype(np.uint8)
        gt[gt == 4] = 255
        assert image_iou(pred, gt) == pytest.approx(reference_iou(pred, gt), abs=1e-12)


def test_rows_sorted_worst_first_with_checked_ious(lam_folder):
    out, truths, preds = lam_folder
    gallery = load_gallery(out)
    expected = {i: reference_iou(preds[i], truths[i]) for i in truths if truths[i] is not None}
    assert [row.image_id for row in gallery.rows] == sorted(expected, key=expected.get) + ["d_nomask"]
    for row in gallery.rows[:3]:
        assert row.iou == pytest.approx(expected[row.image_id], abs=1e-12)
    assert gallery.rows[-1].iou is None and gallery.has_cams and gallery.total == 4
    assert gallery.kind == "pseudo label" and gallery.label_names == ["background", *CLASSES]
    assert [r.image_id for r in load_gallery(out, limit=2).rows] == [r.image_id for r in gallery.rows[:2]]


def test_html_is_self_contained_sorted_and_filterable(lam_folder):
    out, truths, preds = lam_folder
    gallery = load_gallery(out)
    page, sheet = render(gallery, size=48)
    rows = re.findall(r'<tr data-classes="([\d ]*)" data-iou="([^"]+)">', page)
    assert [float(iou) for _, iou in rows[:3]] == [round(100 * r.iou, 1) for r in gallery.rows[:3]]
    assert [float(iou) for _, iou in rows[:3]] == sorted(float(iou) for _, iou in rows[:3]) and rows[3][1] == "n/a"
    for (classes, _), row in zip(rows, gallery.rows):
        pred, truth = preds[row.image_id], truths[row.image_id]
        valid = truth != 255 if truth is not None else np.ones_like(pred, bool)
        union = set(pred[valid].tolist()) | (set(truth[valid].tolist()) if truth is not None else set())
        assert sorted(map(int, classes.split())) == sorted(union)
    assert '<select id="class-filter">' in page and "addEventListener('change'" in page
    options = re.findall(r'<option value="(\d+)">([^<]+)</option>', page)
    assert [int(v) for v, _ in options] == sorted({c for row in gallery.rows for c in row.classes})
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 + 2 + 4 + 3                           # images, CAMs, pseudo labels, masks
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r"(https?:|//[a-z]|<link|@import|url\()", page.replace('src="data:', ""))
    assert page.count('<td class="none">none</td>') == 2 + 1       # CAMs of b and d, mask of d
    assert sheet.shape == (HEADER_HEIGHT + 4 * (CAPTION_HEIGHT + 48 + CELL_GAP), 4 * (48 + CELL_GAP), 3)


def test_gallery_tool_writes_both_files_and_errors_in_one_line(lam_folder, tmp_path):
    out, _, _ = lam_folder
    run = lambda *a: subprocess.run([sys.executable, "tools/gallery.py", *a], cwd=ROOT, capture_output=True,
                                    text=True, timeout=300)
    result = run(str(out), "--out", str(tmp_path / "gallery"), "--thumb", "64")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["gallery.html", "gallery.png"]
    assert read_image(tmp_path / "gallery" / "gallery.png").shape[1] == 4 * (64 + CELL_GAP)
    (out / "config.yaml").unlink()
    for folder, message in ((out, "config.yaml not found"), (tmp_path / "data", "not an infer_lam or infer_seg")):
        result = run(str(folder), "--out", str(tmp_path / "none"))
        assert result.returncode == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run",
                               f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_gallery_renders_in_a_headless_browser(lam_folder, tmp_path):
    out, _, _ = lam_folder
    gallery = load_gallery(out)
    page, _ = render(gallery, size=64)
    (tmp_path / "gallery.html").write_text(page)
    shot = tmp_path / "shot.png"
    chromium("--window-size=900,700", f"--screenshot={shot}", (tmp_path / "gallery.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (700, 900) and pixels.std() > 20    # the page drew pictures, not a blank sheet
    dom = chromium("--dump-dom", (tmp_path / "gallery.html").as_uri() + "#class=1").stdout
    hidden = re.findall(r'<tr data-classes="([\d ]*)"[^>]*style="display: none;"', dom)
    shown = re.findall(r'<tr data-classes="([\d ]*)" data-iou="[^"]+">', dom)
    assert hidden and shown and all("1" not in c.split() for c in hidden) and all("1" in c.split() for c in shown)
    assert re.search(r'<span id="shown">%d</span>' % len(shown), dom)


def test_gallery_on_the_demo_outputs(demo_run, tmp_path):
    for folder, kind in ((demo_run.work / "pseudo_labels_val_svc_tse", "pseudo label"),
                         (demo_run.cell / "segment_val", "prediction (CRF)")):
        result = subprocess.run([sys.executable, "tools/gallery.py", str(folder), "--out",
                                 str(tmp_path / folder.name)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        page = (tmp_path / folder.name / "gallery.html").read_text()
        assert f"{kind} gallery" in page and page.count("<tr data-classes=") == 4
    raw = load_gallery(demo_run.cell / "segment_val", labels="raw")
    assert raw.kind == "prediction" and len(raw.rows) == 4
    with pytest.raises(GalleryError, match="output folder with crf/"):
        load_gallery(demo_run.work / "pseudo_labels_val_svc_tse", labels="crf")
