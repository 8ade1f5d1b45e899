"""Loading a frozen CLIP through open_clip, from a pretrained tag or a local checkpoint file."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from torch import nn

# Entries of OpenAI's TorchScript archives that are not parameters of the model.
_OPENAI_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")


log = logging.getLogger(__name__)

# The warning open_clip's factory logs whenever it builds a model without a pretrained tag; the loader
# builds the model that way and loads the weights itself, so the message would be wrong.
_OPEN_CLIP_RANDOM_WARNING = "No pretrained weights loaded for model"


class CLIPLoadError(RuntimeError):
    """CLIP weights that cannot be found or do not fit the configured model."""


def register_model_config(path: str | os.PathLike) -> str:
    """Make an open_clip model-config JSON known to open_clip; returns its model name (file stem)."""
    path = Path(path)
    if not path.is_file():
        raise CLIPLoadError(f"clip.model_config: file not found: {path}")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIPLoadError(f"clip.model_config: {path} is not a JSON file ({err}); give an open_clip model "
                            f"config (embed_dim, vision_cfg, text_cfg)") from err
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(spec, dict) or key not in spec]
    if missing:
        raise CLIPLoadError(f"clip.model_config: {path} lacks {', '.join(missing)}; give an open_clip model config "
                            f"(embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_OPEN_CLIP_RANDOM_WARNING)


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" record (logged on the root logger) while building a model."""
    root = logging.getLogger()
    root.addFilter(_drop_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_drop_random_init_warning)


def _create_unloaded(model_name: str, quick_gelu: bool) -> nn.Module:
    """The open_clip model with its initial (random) weights, built without open_clip's warning about them."""
    with _without_random_init_warning():
        return open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)


def _is_torchscript(path: Path) -> bool:
    """OpenAI's released CLIP files are TorchScript zip archives with compiled code inside."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from an OpenAI TorchScript archive or a plain (possibly wrapped) state dict."""
    try:
        if _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CLIPLoadError(f"clip.pretrained: cannot read {path} as a TorchScript archive or a torch "
                            f"state dict ({err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CLIPLoadError(f"clip.pretrained: {path} does not hold a CLIP state dict (a mapping of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in _OPENAI_ARCHIVE_EXTRAS}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise CLIPLoadError(
            f"clip.pretrained: {path} is not a state dict of the CLIP model '{model_name}': "
            f"{'; '.join(details)}. Check clip.model (and clip.model_config) match the checkpoint."
        )
    model.load_state_dict(state)


def load_clip(model_name: str, pretrained: str | None, quick_gelu: bool = True,
              model_config: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """An open_clip CLIP in eval mode with every parameter frozen.

    `pretrained` is an open_clip tag (e.g. ``openai``), a path to a local checkpoint (OpenAI's TorchScript
    ``ViT-B-16.pt`` or a plain state dict in OpenAI/open_clip key naming), or None for random weights.
    """
    if model_config is not None:
        model_name = register_model_config(model_config)
    if model_name not in open_clip.list_models():
        raise CLIPLoadError(f"clip.model={model_name!r} is not an open_clip model; "
                            f"use one of open_clip.list_models() or give clip.model_config")
    local = pretrained is not None and (Path(pretrained).suffix in (".pt", ".pth", ".bin") or Path(pretrained).exists())
    if local:
        path = Path(pretrained)
        if not path.is_file():
            raise CLIPLoadError(f"clip.pretrained: checkpoint file not found: {path}")
        model = _create_unloaded(model_name, quick_gelu)
        _load_state(model, _read_checkpoint(path), path, model_name)
    elif pretrained is None:
        model = _create_unloaded(model_name, quick_gelu)
        log.warning("clip.pretrained=null: the CLIP model %s has random weights (no pretrained weights loaded)",
                    model_name)
    else:
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
        except Exception as err:
            raise CLIPLoadError(
                f"could not load CLIP weights '{pretrained}' for {model_name} ({type(err).__name__}: {err}). "
                f"Without internet access, download OpenAI's ViT-B-16.pt elsewhere and pass it as "
                f"clip.pretrained=/path/to/ViT-B-16.pt"
            ) from err
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def clip_tokenizer(model_name: str):
    """The tokenizer open_clip pairs with `model_name` (the standard CLIP BPE for OpenAI models)."""
    return open_clip.get_tokenizer(model_name)
