"""An exponential moving average of the head's weights (``train.ema_decay``), for evaluation.

After every optimiser step the average moves towards the trained weights: ``avg ← decay·avg + (1 − decay)·w``
(the first step copies them), through :class:`torch.optim.swa_utils.AveragedModel`. Training itself, the
dynamic CAMs of LVC included, always uses the trained weights; validation and the checkpoint's ``head``
entry, which every inference tool loads, hold the average. A checkpoint of such a run keeps the trained
weights under ``head_trained`` and the number of averaged steps under ``ema_updates``, so that a resumed
run continues both exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

TRAINED_KEY = "head_trained"     # checkpoint entry of the trained (not averaged) head weights
UPDATES_KEY = "ema_updates"      # checkpoint entry: optimiser steps folded into the average so far


class HeadAverage:
    """The exponential moving average of ``head``'s parameters and buffers with weight ``decay`` per step."""

    def __init__(self, head: nn.Module, decay: float):
        self.averaged = AveragedModel(head, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def update(self, head: nn.Module) -> None:
        """Fold ``head``'s current weights into the average (after an optimiser step)."""
        self.averaged.update_parameters(head)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the head's own parameter names."""
        return self.averaged.module.state_dict()

    def checkpoint_entries(self, head: nn.Module) -> dict[str, Any]:
        """What a checkpoint stores: ``head`` (the average), the trained weights and the update count."""
        return {"head": self.state_dict(), TRAINED_KEY: head.state_dict(),
                UPDATES_KEY: int(self.averaged.n_averaged.item())}

    def load(self, state: Mapping[str, Any]) -> None:
        """Continue the average of a resumed checkpoint; one written without averaging starts it afresh."""
        if TRAINED_KEY in state:
            self.averaged.module.load_state_dict(state["head"])
            self.averaged.n_averaged.fill_(int(state[UPDATES_KEY]))

    @contextmanager
    def in_place_of(self, head: nn.Module) -> Iterator[None]:
        """Run the enclosed code with the averaged weights in ``head``; the trained ones are put back after."""
        trained = {key: value.clone() for key, value in head.state_dict().items()}
        head.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            head.load_state_dict(trained)


def trained_head_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint ``state`` with the trained weights as its ``head``: what a resumed run optimises further.
    (Without averaging the stored ``head`` is the trained one.)"""
    if TRAINED_KEY not in state:
        return dict(state)
    return {**state, "head": state[TRAINED_KEY]}
