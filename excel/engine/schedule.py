"""AdamW with linear warm-up then polynomial decay (docs/method.md §8)."""
from __future__ import annotations

import torch


class WarmupPoly:
    """lr factor at iteration `it`: warm-up 1 − (1 − it/warmup)(1 − ratio), then (1 − it/max_iters)^power."""

    def __init__(self, max_iters: int, warmup_iters: int, warmup_ratio: float = 1e-6, power: float = 1.0):
        self.max_iters, self.warmup_iters = max_iters, warmup_iters
        self.warmup_ratio, self.power = warmup_ratio, power

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            return 1 - (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
        return max(0.0, 1 - it / self.max_iters) ** self.power


def build_optimizer(params, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def build_scheduler(optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int,
                    warmup_ratio: float, power: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupPoly(max_iters, warmup_iters, warmup_ratio, power))
