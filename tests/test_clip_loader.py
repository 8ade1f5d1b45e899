"""Loading CLIP weights from local files, and the errors for files that are not CLIP weights."""
import logging

import pytest
import torch

from excel.modeling.clip_loader import CLIPLoadError, load_clip


def test_plain_state_dict_loads_frozen(tiny_clip_files):
    config, checkpoint = tiny_clip_files
    model = load_clip("tiny-clip-test", str(checkpoint), model_config=str(config))
    expected = torch.load(checkpoint, weights_only=True)
    torch.testing.assert_close(model.visual.conv1.weight, expected["visual.conv1.weight"])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_wrapped_and_ddp_prefixed_state_dict_loads(tiny_clip_files, tmp_path):
    config, checkpoint = tiny_clip_files
    state = torch.load(checkpoint, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items()}}, wrapped)
    model = load_clip("tiny-clip-test", str(wrapped), model_config=str(config))
    torch.testing.assert_close(model.visual.proj, state["visual.proj"].half().float())


def _scripted_archive(state: dict, path) -> None:
    """A TorchScript file laid out like OpenAI's: CLIP parameters at top level plus metadata entries."""
    root = torch.nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, torch.nn.Module())
            node = getattr(node, name)
        node.register_buffer(leaf, value.half())
    root.register_buffer("input_resolution", torch.tensor(64))
    torch.jit.save(torch.jit.script(root), str(path))


def test_torchscript_archive_loads(tiny_clip_files, tmp_path):
    config, checkpoint = tiny_clip_files
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "ViT-tiny.pt"
    _scripted_archive(state, path)
    model = load_clip("tiny-clip-test", str(path), model_config=str(config))
    torch.testing.assert_close(model.visual.conv1.weight, state["visual.conv1.weight"].half().float())
    assert model.visual.conv1.weight.dtype == torch.float32


def test_not_a_clip_checkpoint(tiny_clip_files, tmp_path):
    config, _ = tiny_clip_files
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CLIPLoadError, match=r"resnet\.pt is not a state dict of the CLIP model"):
        load_clip("tiny-clip-test", str(path), model_config=str(config))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CLIPLoadError, match="garbage.pt"):
        load_clip("tiny-clip-test", str(garbage), model_config=str(config))


def test_model_config_that_is_not_an_open_clip_config(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{embed_dim: 32")
    with pytest.raises(CLIPLoadError, match=r"clip.model_config: .*broken.json is not a JSON file"):
        load_clip("broken", None, model_config=str(broken))
    partial = tmp_path / "partial.json"
    partial.write_text('{"embed_dim": 32}')
    with pytest.raises(CLIPLoadError, match=r"partial.json lacks vision_cfg, text_cfg"):
        load_clip("partial", None, model_config=str(partial))


def test_missing_file_and_unknown_model(tiny_clip_files, tmp_path):
    config, _ = tiny_clip_files
    with pytest.raises(CLIPLoadError, match="checkpoint file not found"):
        load_clip("tiny-clip-test", str(tmp_path / "absent.pt"), model_config=str(config))
    with pytest.raises(CLIPLoadError, match="not an open_clip model"):
        load_clip("no-such-model", None)


@pytest.fixture
def all_records(caplog, monkeypatch):
    """caplog seeing open_clip's root-logger records and ours (setup_logging stops "excel" propagating)."""
    monkeypatch.setattr(logging.getLogger("excel"), "propagate", True)
    return caplog


def test_no_random_weights_warning_when_weights_are_loaded(tiny_clip_files, all_records):
    caplog = all_records
    config, checkpoint = tiny_clip_files
    with caplog.at_level(logging.WARNING):
        load_clip("tiny-clip-test", str(checkpoint), model_config=str(config))
    assert not [r for r in caplog.records if "random" in r.getMessage()]


def test_random_model_says_once_that_its_weights_are_random(tiny_clip_files, all_records):
    caplog = all_records
    config, _ = tiny_clip_files
    with caplog.at_level(logging.WARNING):
        load_clip("tiny-clip-test", None, model_config=str(config))
    messages = [r.getMessage() for r in caplog.records if "random" in r.getMessage()]
    assert messages == ["clip.pretrained=null: the CLIP model tiny-clip-test has random weights "
                        "(no pretrained weights loaded)"]
