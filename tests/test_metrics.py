import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from excel.metrics import (
    ConfusionMeter,
    confusion_matrix,
    format_table,
    save_scores,
    scores,
)


def _loop_scores(pred, gt, num_classes):
    """Per-class counts with plain loops over pixels; 255 (or anything out of range) ignored."""
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    correct = total = 0
    for p, g in zip(pred.reshape(-1).tolist(), gt.reshape(-1).tolist()):
        if not (0 <= g < num_classes and 0 <= p < num_classes):
            continue
        total += 1
        if p == g:
            tp[g] += 1
            correct += 1
        else:
            fp[p] += 1
            fn[g] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(num_classes)]
    present = [tp[c] + fn[c] > 0 for c in range(num_classes)]
    miou = sum(iou[c] for c in range(num_classes) if present[c]) / sum(present)
    return iou, present, miou, correct / total, tp, fp, fn


def _labels(seed, shape=(2, 13, 17), num_classes=6):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, num_classes, shape)
    gt[gt == 4] = 2  # class 4 never in the ground truth
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, num_classes, shape))
    gt[rng.random(shape) < 0.1] = 255
    return pred, gt


def test_confusion_matrix_and_scores_match_loops():
    pred, gt = _labels(0)
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 6)
    assert conf.dtype == torch.int64 and conf.shape == (6, 6)
    iou, present, miou, acc, tp, fp, fn = _loop_scores(pred, gt, 6)
    for c in range(6):
        assert conf[c, c] == tp[c]
        assert conf[:, c].sum() - conf[c, c] == fp[c]
        assert conf[c].sum() - conf[c, c] == fn[c]
    result = scores(conf)
    np.testing.assert_allclose(result["iou"], iou)
    assert result["present"] == present and not present[4]
    assert result["iou"][4] == 0.0  # predicted but absent: IoU 0, left out of the mean
    assert result["miou"] == pytest.approx(miou)
    assert result["pixel_accuracy"] == pytest.approx(acc)
    np.testing.assert_allclose(result["precision"], [tp[c] / (tp[c] + fp[c]) for c in range(6)])
    np.testing.assert_allclose(result["recall"][:4], [tp[c] / (tp[c] + fn[c]) for c in range(4)])
    assert math.isnan(result["recall"][4])


def test_confusion_matrix_accepts_numpy_and_ignores_out_of_range():
    gt = np.array([[0, 1, 255], [2, 2, 1]], dtype=np.uint8)
    pred = np.array([[0, 2, 1], [2, 255, 1]], dtype=np.int16)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = expected[1, 1] = 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, 3).numpy(), expected)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:, :2], gt, 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(pred.astype(np.float32), gt, 3)


def test_scores_nan_safe_for_absent_classes():
    conf = torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 3]])
    result = scores(conf)
    assert math.isnan(result["iou"][1]) and math.isnan(result["precision"][1])
    assert result["miou"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert result["pixel_accuracy"] == pytest.approx(8 / 9)


def test_format_table_and_save_scores(tmp_path):
    names = ["background", "cat", "dog"]
    result = scores(torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 3]]))
    table = format_table(result, names)
    assert "cat" in table and "n/a" in table and "79.17" in table and "88.89" in table
    with pytest.raises(ValueError, match="class names"):
        format_table(result, names[:2])
    save_scores(result, names, tmp_path / "out" / "val_scores")
    assert (tmp_path / "out" / "val_scores.txt").read_text().strip() == table
    record = json.loads((tmp_path / "out" / "val_scores.json").read_text())
    assert record["categories"] == names and record["iou"][1] is None
    assert record["miou"] == pytest.approx(result["miou"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["val_scores.json", "val_scores.txt"]


def test_meter_accumulates_and_reduces(tmp_path):
    meter = ConfusionMeter(6)
    total = torch.zeros(6, 6, dtype=torch.long)
    for seed in range(3):
        pred, gt = _labels(seed)
        meter.update(pred, gt)
        total += confusion_matrix(pred, gt, 6)
    assert torch.equal(meter.matrix, total)
    meter.all_reduce()  # not initialised: no-op
    assert torch.equal(meter.matrix, total)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        meter.all_reduce()
    finally:
        dist.destroy_process_group()
    assert torch.equal(meter.matrix, total)
    assert meter.scores()["miou"] == pytest.approx(scores(total)["miou"])
    meter.reset()
    assert meter.matrix.sum() == 0
