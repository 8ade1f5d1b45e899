"""The predictor API and tools/predict.py on the quick demo's checkpoint."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from published_reference import expected_pairs

from excel.data.transforms import normalize
from excel.evaluation.crf import build_crf
from excel.evaluation.predictor import Predictor
from excel.io import read_image, read_mask
from excel.modeling.checkpoint import CheckpointError, load_checkpoint
from excel.utils.visualize import label_overlay

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(demo_run):
    return Predictor.from_checkpoint(demo_run.checkpoint, device="cpu")


def val_images(demo_run, count=2):
    return sorted((demo_run.root / "JPEGImages").glob("val_*.jpg"))[:count]


def reference_probabilities(predictor, image: np.ndarray) -> np.ndarray:
    """One scale, no flip, no CRF, written out: resize to infer.resize, decoder logits, upsample, softmax."""
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None], predictor.cfg.dataset.normalize)
    side = predictor.cfg.infer.resize
    with torch.no_grad():
        logits = predictor.model.segment(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False))
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    return torch.softmax(logits, dim=0).numpy()


def test_config_and_head_come_from_the_checkpoint(predictor, demo_run):
    assert predictor.label_names == ["background", "disc", "square", "triangle", "star", "ring"]
    assert predictor.cfg.infer.resize == 160 and predictor.cfg.dataset.root == str(demo_run.root)
    stored = load_checkpoint(demo_run.checkpoint)["head"]
    for name, value in predictor.model.head.state_dict().items():
        torch.testing.assert_close(value, stored[name], rtol=0, atol=0, msg=name)


def test_single_scale_prediction_matches_a_direct_computation(predictor, demo_run):
    image = read_image(val_images(demo_run)[0])
    result = predictor.predict(image, multiscale=False, flip=False, crf=False)
    expected = reference_probabilities(predictor, image)
    assert result.labels.shape == image.shape[:2] and result.probabilities.shape == (6, *image.shape[:2])
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-4, atol=1e-5)
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-3
    np.testing.assert_array_equal(result.labels[clear], expected.argmax(0)[clear])


def test_crf_per_call_uses_the_config_crf(predictor, demo_run):
    image = read_image(val_images(demo_run)[0])
    result = predictor.predict(image, multiscale=False, flip=False, crf=True)
    marginals = build_crf(predictor.cfg)(image, reference_probabilities(predictor, image))
    np.testing.assert_allclose(result.probabilities, marginals, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)


def test_defaults_follow_the_config_and_paths_equal_arrays(predictor, demo_run):
    path = val_images(demo_run)[1]
    from_path = predictor.predict(path)
    from_array = predictor.predict(read_image(path), multiscale=True, flip=True, crf=True)
    np.testing.assert_array_equal(from_path.labels, from_array.labels)
    np.testing.assert_array_equal(from_path.probabilities, from_array.probabilities)
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        predictor.predict(np.zeros((4, 4), np.uint8))


def test_checkpoint_without_config_needs_one(demo_run, tmp_path):
    state = load_checkpoint(demo_run.checkpoint)
    torch.save({"head": state["head"]}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="bare.pth stores no config .*--config configs/voc.yaml"):
        Predictor.from_checkpoint(tmp_path / "bare.pth", device="cpu")
    overrides = [f"dataset.root={demo_run.root}", f"tse.cache_dir={demo_run.cache}"]
    given = Predictor.from_checkpoint(tmp_path / "bare.pth", ROOT / "configs" / "demo.yaml", overrides, device="cpu")
    assert given.label_names[1:] == ["disc", "square", "triangle", "star", "ring"]


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/predict.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_predict_tool_writes_labels_and_overlays(predictor, demo_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in val_images(demo_run):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = run_predict(str(folder), "--checkpoint", str(demo_run.checkpoint), "--out", str(out),
                         "infer.scales=[1.0]", "infer.flip=false", "crf.enabled=false", "device=cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(p.name for p in val_images(demo_run))
    stems = [Path(n).stem for n in names]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [f"labels/{s}.png" for s in stems] + [f"overlays/{s}.png" for s in stems])
    for name, stem in zip(names, stems):
        image = read_image(folder / name)
        expected = predictor.predict(image, multiscale=False, flip=False, crf=False).labels
        np.testing.assert_array_equal(read_mask(out / "labels" / f"{stem}.png"), expected)
        overlay = read_image(out / "overlays" / f"{stem}.png")
        assert overlay.shape[0] > image.shape[0]                    # the legend strip below
        np.testing.assert_array_equal(overlay[:image.shape[0], :image.shape[1]], label_overlay(image, expected))


def test_predict_tool_errors_are_one_line_and_write_nothing(demo_run, tmp_path):
    good = val_images(demo_run)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    cases = [
        ([str(good), "--checkpoint", str(tmp_path / "missing.pth")], "checkpoint file not found"),
        ([str(good), str(broken), "--checkpoint", str(demo_run.checkpoint)], "cannot decode image"),
        ([str(tmp_path / "nothing.jpg"), "--checkpoint", str(demo_run.checkpoint)], "input not found"),
    ]
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / good.name).write_bytes(good.read_bytes())
    cases.append(([str(good), str(twin / good.name), "--checkpoint", str(demo_run.checkpoint)], "share the name"))
    for args, message in cases:
        result = run_predict(*args, "--out", str(out))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists()


def test_published_layout_of_the_demo_head_predicts_the_same(predictor, demo_run, tmp_path):
    """The demo's head saved as the authors' training saves a model (their names, `module.` prefixes, CLIP
    weights included) loads through --config and predicts exactly what the original checkpoint does."""
    published = {key: parameter.detach().clone() for key, parameter in expected_pairs(predictor.model.head)}
    published["module.encoder.visual.proj"] = torch.zeros(3, 3)
    torch.save(published, tmp_path / "model_iter_6.pth")
    # The demo run's own resolved config: the same settings the original checkpoint carries.
    authors = Predictor.from_checkpoint(tmp_path / "model_iter_6.pth", demo_run.cell / "config.yaml", [], device="cpu")
    image = read_image(val_images(demo_run)[0])
    ours = predictor.predict(image, crf=False)
    theirs = authors.predict(image, crf=False)
    np.testing.assert_allclose(theirs.probabilities, ours.probabilities, rtol=0, atol=1e-6)
