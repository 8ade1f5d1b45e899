"""Checkpoint files: atomic saving, loading with clear errors, and restoring the trainable head.

A training checkpoint is a dict ``{'head': head state dict, 'optimizer', 'scheduler', 'iteration',
'rng', 'config' (YAML text), 'num_classes'}``. Only the head is ever stored: the frozen CLIP
backbone is rebuilt from its own weights. :func:`load_head_weights` also accepts a bare head state
dict, a full-model state dict (``head.`` entries), state dicts wrapped under ``model`` or
``state_dict``, keys prefixed with ``module.`` (multi-GPU runs) and the checkpoints of the authors'
published code (renamed by :mod:`excel.modeling.published_checkpoint`). Entries that are not part of the
head (backbone weights) are ignored with an info log.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from excel.io import atomic_write
from excel.modeling.published_checkpoint import (
    convert_published_state,
    is_published_state,
)

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("head", "model", "state_dict", "model_state_dict")   # where wrapped state dicts keep their weights
TRAINING_KEYS = ("head", "optimizer", "scheduler", "iteration", "rng")  # what --resume needs


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the configured model."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` through :func:`excel.io.atomic_write`.

    The file at ``path`` is replaced only once the new one is completely written, so a failed
    write (full disk, interrupted job) leaves the previous checkpoint intact.
    """
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict onto the CPU.

    Loading is restricted to tensors and plain Python containers (``weights_only=True``), so a
    checkpoint file cannot run code; the training checkpoints of this project hold nothing else.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, wrong format: all mean "unreadable"
        reason = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: {reason}); the file is "
                              "corrupt, not a PyTorch checkpoint, or holds objects other than tensors and "
                              "plain Python containers") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict "
                              "(a training checkpoint or a head state dict)")
    return state


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {key.removeprefix(prefix): value for key, value in state.items()}


def _unwrap(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: the first of WRAPPER_KEYS that holds a mapping, else ``state``."""
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), Mapping):
            return state[key]
    return state


def head_state_dict(state: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The head's state dict (ExCELHead names) out of any supported checkpoint layout.

    ``module.`` prefixes (DistributedDataParallel) are removed; a full-model state dict keeps its
    ``head.`` entries (without the prefix); published-code names are converted. Dropped entries
    (the backbone) are logged at info level, naming ``source``.
    """
    head = _strip_prefix(_unwrap(state), "module.")
    ignored: list[str] = []
    if is_published_state(head):
        head, ignored = convert_published_state(head)
        log.info("%s: the published code's head, converted to this project's parameter names", source)
    elif any(key.startswith("head.") for key in head):
        ignored = [key for key in head if not key.startswith("head.")]
        head = _strip_prefix({key.removeprefix("head."): value for key, value in head.items()
                              if key.startswith("head.")}, "module.")
    if ignored:
        log.info("%s: %d entries that are not part of the head ignored (e.g. %s)", source, len(ignored),
                 ", ".join(ignored[:3]))
    return head


def _checkpoint_num_classes(state: Mapping[str, Any], head: Mapping[str, torch.Tensor],
                            classifier_key: str) -> int | None:
    """Foreground classes the checkpoint was trained for (recorded, else from the classifier)."""
    if state.get("num_classes") is not None:
        return int(state["num_classes"])
    weight = head.get(classifier_key)
    return int(weight.shape[0]) - 1 if isinstance(weight, torch.Tensor) else None


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_head_state(head: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      source: str) -> None:
    missing = sorted(set(expected) - set(head))
    unexpected = sorted(set(head) - set(expected))
    wrong_shape = sorted(f"{k} {_shape(head[k])} vs {_shape(expected[k])}" for k in set(expected) & set(head)
                         if _shape(head[k]) != _shape(expected[k]))
    if missing or unexpected or wrong_shape:
        details = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
                   for label, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("with a different shape (checkpoint vs model)", wrong_shape))
                   if keys]
        raise CheckpointError(f"checkpoint {source} does not fit the configured head: {'; '.join(details)}. "
                              "Use the config the checkpoint was trained with (head.*, clip.model).")


def check_finite_head(head: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the parameters if any head weight is NaN or infinite
    (a head trained into NaN segments everything as background without any other sign)."""
    bad = sorted(key for key, value in head.items() if isinstance(value, torch.Tensor) and value.is_floating_point()
                 and not bool(torch.isfinite(value).all()))
    if bad:
        raise CheckpointError(f"checkpoint {source} holds non-finite (NaN or infinite) head weights in {len(bad)} "
                              f"tensors (e.g. {', '.join(bad[:3])}); it cannot give valid results: use an earlier "
                              "checkpoint of the run")


def load_head_weights(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any],
                      source: str | None = None,
                      classifier_key: str = "decoder.classifier.weight") -> dict[str, Any]:
    """Load the trainable head of ``model`` (an :class:`excel.modeling.model.ExCEL`) from a checkpoint.

    ``checkpoint`` is a file path or an already loaded dict (``source``: its file name, for
    error messages). Raises :class:`CheckpointError` naming the checkpoint when its class count
    or any tensor shape disagrees with the model. Returns the checkpoint dict (for its metadata
    such as ``iteration``).
    """
    if source is None:
        source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "(given state dict)"
    state = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    head = head_state_dict(state, source)
    trained_for = _checkpoint_num_classes(state, head, classifier_key)
    if trained_for is not None and trained_for != model.num_classes:
        raise CheckpointError(f"checkpoint {source} was trained for {trained_for} classes but "
                              f"dataset.num_classes={model.num_classes}; use the matching dataset config")
    _check_head_state(head, model.head.state_dict(), source)
    check_finite_head(head, source)
    model.head.load_state_dict(head)
    return state


def head_checkpoint(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A checkpoint of this project's format (``head``, ``num_classes``) from any supported layout.

    Raises :class:`CheckpointError` when ``state`` holds no head parameters at all.
    """
    head = head_state_dict(state, source)
    if not any(key.startswith(("adapter.", "decoder.")) for key in head):
        raise CheckpointError(f"checkpoint {source} holds no head parameters (expected this project's 'head' "
                              "entry or the published code's 'decoder_fts_fuse.' / 'decoder.' names)")
    check_finite_head(head, source)
    return {"head": head, "num_classes": _checkpoint_num_classes(state, head, "decoder.classifier.weight"),
            "iteration": state.get("iteration")}


def check_training_state(state: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a training checkpoint of this project (for resuming)."""
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {source} cannot resume training: it has no {', '.join(missing)} "
                              "(a head-only, converted or published checkpoint); --resume continues a run of "
                              "scripts/train_*.py, other checkpoints go to the inference tools")
