"""A tiny randomly initialised CLIP, saved the way users pass real weights (config JSON + checkpoint file)."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 12, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """(config JSON path, checkpoint path) of a 12-layer, 2-head ViT/16 CLIP with random weights."""
    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test", pretrained=None)
    checkpoint = root / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_files):
    """The tiny CLIP loaded through the project's loader (frozen, eval mode)."""
    from excel.modeling.clip_loader import load_clip

    config, checkpoint = tiny_clip_files
    return load_clip("tiny-clip-test", str(checkpoint), model_config=str(config))


def tiny_overrides(clip_files, cache_dir, **extra) -> list[str]:
    """Config overrides that run the pipeline on the tiny CLIP with small head and a small bank."""
    config, checkpoint = clip_files
    values = {
        "clip.model_config": config, "clip.pretrained": checkpoint, "tse.num_clusters": 8,
        "tse.cache_dir": cache_dir, "head.adapter_dim": 32, "head.adapter_hidden": 32, "head.decoder_heads": 4,
        "cam.input_size": 64, "infer.resize": 64, "train.crop_size": 64, "par.iters": 3, "device": "cpu",
        "train.num_workers": 0,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]
