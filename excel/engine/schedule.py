"""The optimiser and its learning rate: AdamW with linear warm-up then polynomial decay (docs/method.md §8)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from excel.config import as_list


class WarmupPoly:
    """lr factor at iteration `it`: warm-up 1 − (1 − it/warmup)(1 − ratio), then (1 − it/max_iters)^power."""

    def __init__(self, max_iters: int, warmup_iters: int, warmup_ratio: float = 1e-6, power: float = 1.0):
        self.max_iters, self.warmup_iters = max_iters, warmup_iters
        self.warmup_ratio, self.power = warmup_ratio, power

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return 1 - (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
        return max(0.0, 1 - it / self.max_iters) ** self.power


def build_optimizer(cfg: DictConfig, params) -> torch.optim.AdamW:
    """AdamW over ``params`` with optim.* (docs/method.md §8): the fused kernel (one pass over all the
    parameters) where torch has one for their device, the default kernels otherwise."""
    o = cfg.optim
    params = list(params)
    settings = dict(lr=o.lr, weight_decay=o.weight_decay, betas=tuple(as_list(o.betas)), eps=o.eps)
    try:
        return torch.optim.AdamW(params, fused=True, **settings)
    except (RuntimeError, ValueError):  # no fused AdamW for this device (or this torch version)
        return torch.optim.AdamW(params, **settings)


def build_lr_schedule(cfg: DictConfig) -> WarmupPoly:
    """The lr factor per iteration: linear warm-up then polynomial decay over train.max_iters (docs/method.md §8)."""
    o = cfg.optim
    return WarmupPoly(cfg.train.max_iters, o.warmup_iters, o.warmup_ratio, o.power)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimiser's scheduler with :func:`build_lr_schedule`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, build_lr_schedule(cfg))


def apply_hyperparameters(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Put the configured optim.* and train.max_iters into a resumed optimiser and schedule
    (train.resume_allow_changes): the lr of the next step follows the new schedule."""
    o = cfg.optim
    schedule = build_lr_schedule(cfg)
    scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
    scheduler.base_lrs = [o.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group.update(initial_lr=o.lr, lr=o.lr * schedule(scheduler.last_epoch), weight_decay=o.weight_decay,
                     betas=tuple(as_list(o.betas)), eps=o.eps)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
