"""Checkpoints of the authors' published code load onto ExCELHead, tensor by tensor; tools/convert_checkpoint.py."""
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from published_reference import expected_pairs
from torch import nn

from excel.modeling.checkpoint import CheckpointError, load_checkpoint, load_head_weights
from excel.modeling.head import ExCELHead

ROOT = Path(__file__).resolve().parents[1]
LAYERS, IN_DIM, DIM, BLOCKS = 12, 16, 8, 2


class HeadOnlyModel(nn.Module):
    """Stands in for ExCEL: load_head_weights only touches `.head` and `.num_classes`."""

    def __init__(self, num_classes: int = 20, blocks: int = BLOCKS):
        super().__init__()
        self.num_classes = num_classes
        self.head = ExCELHead(LAYERS, IN_DIM, num_classes, adapter_hidden=DIM, adapter_dim=DIM,
                              decoder_layers=blocks, decoder_heads=2)


def published_state(num_classes: int = 20, blocks: int = BLOCKS, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as the published training saves it (DDP `module.` prefixes, the frozen CLIP included),
    written from the published module structure: SegFormer-style adapter `decoder_fts_fuse` (one
    proj/proj_2 MLP per layer, `linear_fuse` 1×1 conv) and `decoder` (CLIP residual blocks, `linear_pred`)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {}
    for i in range(LAYERS):
        shapes[f"decoder_fts_fuse.linears_modulelist.{i}.proj.weight"] = (DIM, IN_DIM)
        shapes[f"decoder_fts_fuse.linears_modulelist.{i}.proj.bias"] = (DIM,)
        shapes[f"decoder_fts_fuse.linears_modulelist.{i}.proj_2.weight"] = (DIM, DIM)
        shapes[f"decoder_fts_fuse.linears_modulelist.{i}.proj_2.bias"] = (DIM,)
    shapes["decoder_fts_fuse.linear_fuse.weight"] = (DIM, LAYERS * DIM, 1, 1)
    shapes["decoder_fts_fuse.linear_fuse.bias"] = (DIM,)
    for j in range(blocks):
        block = f"decoder.transformer.resblocks.{j}."
        shapes.update({block + "attn.in_proj_weight": (3 * DIM, DIM), block + "attn.in_proj_bias": (3 * DIM,),
                       block + "attn.out_proj.weight": (DIM, DIM), block + "attn.out_proj.bias": (DIM,),
                       block + "ln_1.weight": (DIM,), block + "ln_1.bias": (DIM,),
                       block + "mlp.c_fc.weight": (4 * DIM, DIM), block + "mlp.c_fc.bias": (4 * DIM,),
                       block + "mlp.c_proj.weight": (DIM, 4 * DIM), block + "mlp.c_proj.bias": (DIM,),
                       block + "ln_2.weight": (DIM,), block + "ln_2.bias": (DIM,)})
    shapes["decoder.linear_pred.weight"] = (num_classes + 1, DIM, 1, 1)
    shapes["decoder.linear_pred.bias"] = (num_classes + 1,)
    shapes["encoder.visual.conv1.weight"] = (4, 3, 2, 2)
    shapes["encoder.positional_embedding"] = (5, 4)
    return {f"module.{key}": torch.randn(shape, generator=gen) for key, shape in shapes.items()}


def assert_loaded(model: HeadOnlyModel, state: dict[str, torch.Tensor]) -> None:
    pairs = expected_pairs(model.head)
    assert len(pairs) == len(model.head.state_dict())          # every parameter of ours has its source
    for key, parameter in pairs:
        torch.testing.assert_close(parameter.detach(), state[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict"])
def test_published_checkpoint_lands_on_the_right_parameters(tmp_path, caplog, wrap):
    state = published_state()
    payload = state if wrap == "plain" else {wrap: state, "epoch": 3}
    torch.save(payload, tmp_path / "model_iter_30000.pth")
    model = HeadOnlyModel()
    with caplog.at_level(logging.INFO, logger="excel.modeling.checkpoint"):
        load_head_weights(model, tmp_path / "model_iter_30000.pth")
    assert_loaded(model, state)
    assert "2 entries that are not part of the head ignored (e.g. encoder.visual.conv1.weight" in caplog.text


def test_published_names_count_for_vit_b16_voc():
    """The published VOC head (12 layers of 768-d tokens, 256-d adapter, 3 blocks, 21 classes) has as many
    tensors as ours, each of the same shape."""
    ours = ExCELHead(12, 768, 20)
    from excel.modeling.checkpoint import head_state_dict

    published = {}
    for key, parameter in expected_pairs(ours):
        published[key] = torch.zeros(parameter.shape)
    converted = head_state_dict(published)
    assert len(published) == 88
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_mismatching_published_checkpoint_gives_one_clear_error(tmp_path):
    torch.save(published_state(blocks=3), tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match=r"deeper.pth does not fit the configured head: 12 unexpected "
                                              r"\(e.g. decoder.transformer.resblocks.2"):
        load_head_weights(HeadOnlyModel(), tmp_path / "deeper.pth")
    torch.save(published_state(num_classes=80), tmp_path / "coco.pth")
    with pytest.raises(CheckpointError, match="trained for 80 classes but dataset.num_classes=20"):
        load_head_weights(HeadOnlyModel(), tmp_path / "coco.pth")


def test_our_own_layouts_still_load(tmp_path):
    trained = HeadOnlyModel()
    full = {f"module.head.{k}": v for k, v in trained.head.state_dict().items()}
    full["module.encoder.proj"] = torch.zeros(2)
    for payload in ({"head": trained.head.state_dict(), "iteration": 5}, full, trained.head.state_dict()):
        model = HeadOnlyModel()
        load_head_weights(model, payload)
        for (name, x), y in zip(trained.head.state_dict().items(), model.head.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/convert_checkpoint.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_convert_checkpoint_tool_writes_our_format(tmp_path):
    state = published_state()
    torch.save(state, tmp_path / "published.pth")
    result = run_tool(str(tmp_path / "published.pth"), str(tmp_path / "out" / "converted.pth"))
    assert result.returncode == 0, result.stderr
    converted = load_checkpoint(tmp_path / "out" / "converted.pth")
    assert converted["num_classes"] == 20 and "encoder.positional_embedding" not in str(list(converted["head"]))
    model = HeadOnlyModel()
    model.head.load_state_dict(converted["head"])                  # our names, strict
    assert_loaded(model, state)


def test_convert_checkpoint_tool_errors_are_one_line(tmp_path):
    result = run_tool(str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "checkpoint file not found" in result.stderr
    torch.save({"encoder.visual.proj": torch.zeros(2)}, tmp_path / "clip_only.pth")
    result = run_tool(str(tmp_path / "clip_only.pth"), str(tmp_path / "out.pth"))
    assert result.returncode == 1 and "holds no head parameters" in result.stderr
    torch.save(published_state(), tmp_path / "published.pth")
    result = run_tool(str(tmp_path / "published.pth"), str(tmp_path / "out.pth"), "--config", "configs/demo.yaml")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "trained for 20 classes but dataset.num_classes=5" in result.stderr
    torch.save(published_state(num_classes=5), tmp_path / "published5.pth")
    result = run_tool(str(tmp_path / "published5.pth"), str(tmp_path / "out.pth"), "--config", "configs/demo.yaml")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "does not fit the configured head" in result.stderr and "with a different shape" in result.stderr
    assert not (tmp_path / "out.pth").exists()


def test_convert_checkpoint_tool_stores_a_checked_config(tmp_path):
    state = published_state(num_classes=5)
    torch.save(state, tmp_path / "published.pth")
    result = run_tool(str(tmp_path / "published.pth"), str(tmp_path / "converted.pth"), "--config", "configs/demo.yaml",
                      "head.adapter_hidden=8", "head.adapter_dim=8", "head.decoder_layers=2", "head.decoder_heads=2")
    assert result.returncode == 0, result.stderr
    converted = load_checkpoint(tmp_path / "converted.pth")
    assert "adapter_hidden: 8" in converted["config"] and "num_classes: 5" in converted["config"]


def test_only_training_checkpoints_resume():
    from excel.modeling.checkpoint import check_training_state

    check_training_state({"head": {}, "optimizer": {}, "scheduler": {}, "iteration": 3, "rng": {}}, "run.pth")
    with pytest.raises(CheckpointError, match="model_iter_30000.pth cannot resume training: it has no head, "
                                              "optimizer, scheduler, iteration, rng"):
        check_training_state(published_state(), "model_iter_30000.pth")
