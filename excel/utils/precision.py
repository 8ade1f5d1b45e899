"""The config key ``precision`` (fp32, bf16, fp16): autocast regions, the gradient scaler and CUDA's TF32.

One setting for training and inference (docs/precision.md). Half precision runs through
``torch.autocast`` on the device the model sits on; the head's parameters stay fp32 (its master weights),
the frozen backbone's autocast-only weights may be stored in half (``DenseCLIPEncoder.store_autocast_weights``),
and the numerically sensitive steps (attention softmax, CAMs, PAR, losses) cast up to fp32 themselves.
fp16 on a GPU scales the loss (``torch.amp.GradScaler``); on a CPU it runs without a scaler.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a ``precision`` value; a value outside fp32/bf16/fp16 raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The autocast region of ``precision`` on ``device`` (a no-op context for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (bf16 has fp32's range; CPU fp16 runs unscaled)."""
    enabled = precision == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


def enable_tf32(device: torch.device) -> None:
    """On CUDA, let fp32 matrix products use TensorFloat-32 (Ampere and later); nothing on other devices."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
