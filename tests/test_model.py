"""The assembled model built from a config with a tiny CLIP: CAM shapes, LVC and the frozen backbone."""
import json

import pytest
import torch

from excel.builders import build_model
from excel.config import load_config


@pytest.fixture(scope="module")
def tiny_cfg(tiny_clip_files, tmp_path_factory):
    config, checkpoint = tiny_clip_files
    root = tmp_path_factory.mktemp("model")
    descriptions = root / "descriptions.json"
    cfg = load_config("configs/voc.yaml", [f"clip.model_config={config}", f"clip.pretrained={checkpoint}",
                                           "tse.num_clusters=8", f"tse.cache_dir={root / 'cache'}",
                                           f"tse.descriptions={descriptions}", "head.adapter_dim=32",
                                           "head.adapter_hidden=32", "head.decoder_heads=4"])
    descriptions.write_text(json.dumps({c: [f"a clean origami {c}. detail {i}." for i in range(3)]
                                        for c in cfg.dataset.categories}))
    return cfg


def test_model_outputs(tiny_cfg):
    model = build_model(tiny_cfg)
    assert model.text.shape == (20 + 25, 32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    images = torch.randn(2, 3, 64, 96)
    out = model(images)
    assert out.logits.shape == (2, 21, 4, 6) and out.affinity.shape == (2, 24, 24)
    static = model.static_cams(out.dense)
    dynamic = model.dynamic_cams(out.dense, out.features)
    assert static.shape == dynamic.shape == (2, 20, 4, 6)
    assert not torch.allclose(static, dynamic)
    assert 0 <= dynamic.min() and dynamic.max() <= 1
    out.logits.sum().backward()
    assert model.head.decoder.classifier.weight.grad is not None


def test_tse_switch_changes_only_foreground_text(tiny_cfg):
    on = build_model(tiny_cfg).text
    cfg = tiny_cfg.copy()
    cfg.tse.enabled = False
    off = build_model(cfg).text
    torch.testing.assert_close(on[20:], off[20:])
    assert not torch.allclose(on[:20], off[:20])
