"""One training iteration (docs/method.md §8): frozen forward → CAMs → pseudo labels → losses → one step.

Shared by the trainer and the benchmark, so what is timed is what trains.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from excel.data.transforms import denormalize
from excel.engine.losses import aff_loss, affinity_targets, seg_loss
from excel.labels.par import PAR
from excel.labels.refine import last_layers_affinity, pseudo_labels, resize_bilinear
from excel.modeling.model import ExCEL
from excel.utils.argmax import argmax


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


def quantised_crop(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """Normalised crops B×3×H×W → the image PAR sees in training: cast to uint8 (truncating), divided by 255."""
    return denormalize(images, normalization).clamp(0, 255).to(torch.uint8) / 255


def training_losses(logits: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int],
                    it: int, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """L_seg, L_aff and their weighted sum (docs/method.md §8, steps 4–6).

    logits: B×(C+1)×h×w decoder logits; affinity: B×hw×hw decoder affinity Â; labels: B×H×W pseudo labels.
    Returns loss, seg, aff and the logits upsampled to H×W (``logits``).
    """
    logits_up = resize_bilinear(logits.float(), labels.shape[-2:])
    loss_seg = seg_loss(logits_up, labels)
    switch = cfg.train.aff_switch_iter
    aff_labels = argmax(logits_up.detach(), dim=1) if switch is not None and it >= switch else labels
    positives, negatives = affinity_targets(aff_labels, grid, cfg.train.aff_radius)
    loss_aff = aff_loss(affinity.float(), positives, negatives)
    return {"loss": loss_seg + cfg.train.aff_weight * loss_aff, "seg": loss_seg, "aff": loss_aff, "logits": logits_up}


def unwrap(model: nn.Module) -> ExCEL:
    """The ExCEL model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def training_step(model: nn.Module, images: torch.Tensor, cls_labels: torch.Tensor, it: int,
                  cfg: DictConfig, par: PAR, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, *,
                  dynamic: bool, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """One training iteration (docs/method.md §8) on a batch already on its device.

    model: :class:`ExCEL`, or ExCEL wrapped in DistributedDataParallel (the forward through the wrapper
    is what synchronises the head's gradients); images: B×3×H×W normalised crops; cls_labels: B×C
    multi-hot; ``dynamic`` selects the LVC CAMs. Frozen forward (in the model's precision) → CAMs →
    pseudo labels → losses (fp32) → one optimiser and scheduler step. With ``check_finite`` a loss that is
    not finite raises :class:`TrainingError` (the check waits for the device, so the trainer asks for it
    at its log intervals only). Returns the detached losses and what the TensorBoard grid shows.
    """
    excel = unwrap(model)
    out = model(images)
    dense, features, logits, affinity = out.dense, out.features, out.logits, out.affinity
    with torch.no_grad():
        cams = excel.dynamic_cams(dense, features.float()) if dynamic else excel.static_cams(dense)
        layer_aff = last_layers_affinity(dense.attn_maps, cfg.cam.affinity_layers)
        labels = pseudo_labels(cams.float(), cls_labels, layer_aff.float(),
                               quantised_crop(images, cfg.dataset.normalize), images.shape[-2:],
                               cfg.cam.box_threshold, par, affinity.detach().float() if dynamic else None)
    losses = training_losses(logits, affinity, labels, dense.grid, it, cfg)
    loss = losses["loss"]
    if check_finite and not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at iteration {it}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {"loss": loss.detach(), "seg": losses["seg"].detach(), "aff": losses["aff"].detach(),
            "images": images, "cams": cams, "labels": labels, "logits": losses["logits"].detach(), "cls": cls_labels}
