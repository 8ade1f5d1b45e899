"""Checkpoint files: atomic save, clear load errors, head weights from every supported layout."""
import numpy as np
import pytest
import torch
from torch import nn

from excel.modeling.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_head_weights,
    save_checkpoint,
)
from excel.modeling.head import ExCELHead


class HeadOnlyModel(nn.Module):
    """Stands in for ExCEL: load_head_weights only touches `.head` and `.num_classes`."""

    def __init__(self, num_classes: int = 20, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.num_classes = num_classes
        self.head = ExCELHead(12, 16, num_classes, adapter_hidden=dim, adapter_dim=dim, decoder_layers=1,
                              decoder_heads=2)


def assert_same_head(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_save_load_round_trip(tmp_path):
    state = {"head": {"w": torch.arange(6.0)}, "iteration": 7, "config": "a: 1\n"}
    save_checkpoint(tmp_path / "sub" / "ckpt.pth", state)
    loaded = load_checkpoint(tmp_path / "sub" / "ckpt.pth")
    assert loaded["iteration"] == 7 and loaded["config"] == "a: 1\n"
    torch.testing.assert_close(loaded["head"]["w"], torch.arange(6.0))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ckpt.pth"]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"iteration": 1})

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")
    corrupt = tmp_path / "corrupt.pth"
    save_checkpoint(corrupt, {"iteration": 1})
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt.pth.*the file is corrupt, not a PyTorch checkpoint"):
        load_checkpoint(corrupt)
    pickled_object = tmp_path / "object.pth"
    torch.save({"head": {}, "rng": np.random.default_rng(0)}, pickled_object)
    with pytest.raises(CheckpointError, match="object.pth.*other than tensors"):
        load_checkpoint(pickled_object)
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict"):
        load_checkpoint(tensor_file)


@pytest.mark.parametrize("layout", ["training", "bare", "ddp_head", "ddp_full_model"])
def test_head_weights_from_every_layout(tmp_path, layout):
    trained = HeadOnlyModel(seed=1)
    head = trained.head.state_dict()
    state = {
        "training": {"head": head, "optimizer": {}, "iteration": 30000, "num_classes": 20, "config": ""},
        "bare": head,
        "ddp_head": {"head": {f"module.{k}": v for k, v in head.items()}, "num_classes": 20},
        "ddp_full_model": {f"module.head.{k}": v for k, v in head.items()}
                          | {"module.encoder.visual.proj": torch.zeros(2)},
    }[layout]
    save_checkpoint(tmp_path / "ckpt.pth", state)
    model = HeadOnlyModel(seed=2)
    loaded = load_head_weights(model, tmp_path / "ckpt.pth")
    assert_same_head(model, trained)
    if layout == "training":
        assert loaded["iteration"] == 30000


def test_head_weights_from_a_loaded_dict():
    trained, model = HeadOnlyModel(seed=1), HeadOnlyModel(seed=2)
    load_head_weights(model, {"head": trained.head.state_dict()})
    assert_same_head(model, trained)


def test_other_class_count_is_refused(tmp_path):
    coco = HeadOnlyModel(num_classes=80)
    save_checkpoint(tmp_path / "coco.pth", {"head": coco.head.state_dict(), "num_classes": 80})
    save_checkpoint(tmp_path / "coco_bare.pth", coco.head.state_dict())
    for name in ("coco.pth", "coco_bare.pth"):
        with pytest.raises(CheckpointError, match=rf"checkpoint .*{name} was trained for 80 classes but "
                                                  r"dataset.num_classes=20"):
            load_head_weights(HeadOnlyModel(num_classes=20), tmp_path / name)


def test_other_head_shape_is_refused(tmp_path):
    save_checkpoint(tmp_path / "wide.pth", {"head": HeadOnlyModel(dim=16).head.state_dict(), "num_classes": 20})
    with pytest.raises(CheckpointError, match=r"wide.pth does not fit the configured head: .*different shape"):
        load_head_weights(HeadOnlyModel(dim=8), tmp_path / "wide.pth")
    partial = {k: v for k, v in HeadOnlyModel().head.state_dict().items() if not k.startswith("adapter.fuse")}
    with pytest.raises(CheckpointError, match=r"2 missing \(e.g. adapter.fuse.bias, adapter.fuse.weight\)"):
        load_head_weights(HeadOnlyModel(), partial)
