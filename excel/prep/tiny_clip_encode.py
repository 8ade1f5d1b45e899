"""The tiny CLIP's forward as its pretraining and evaluation use it: CLS and patch embeddings at any
patch grid (optionally of an inner layer), prompt embeddings, the presence prompts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from excel.prep.synthetic import BACKGROUND_KINDS, CLASS_NAMES
from excel.prep.tiny_clip_data import BACKGROUND_TEMPLATE, PRESENCE_TEMPLATE


def positions_for_grid(visual: nn.Module, height: int, width: int) -> torch.Tensor:
    """The positional embedding (1 + h·w)×W for an h×w patch grid, bilinearly resized from the
    model's own grid when they differ (as the segmentation pipeline does)."""
    table = visual.positional_embedding
    grid = visual.grid_size
    if (height, width) == tuple(grid):
        return table
    patches = table[1:].reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
    return torch.cat([table[:1], patches.flatten(2)[0].T], dim=0)


def encode_image_tokens(model: nn.Module, images: torch.Tensor,
                        tap_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CLS embedding B×D and patch embeddings B×n×D (ln_post and projection applied to both) of
    images B×3×H×W of any size divisible by the patch size; with `tap_layer` = l (1-based), also the
    patch embeddings of layer l's output tokens (same ln_post and projection), else None."""
    visual = model.visual
    patches = visual.conv1(images)                                               # B×W×h×w
    positions = positions_for_grid(visual, patches.shape[2], patches.shape[3])
    patches = patches.flatten(2).transpose(1, 2)                                 # B×n×W
    cls_token = visual.class_embedding.expand(patches.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls_token, patches], dim=1) + positions)
    tapped = None
    for layer, block in enumerate(visual.transformer.resblocks, start=1):
        x = block(x)
        if layer == tap_layer:
            tapped = visual.ln_post(x[:, 1:]) @ visual.proj
    x = visual.ln_post(x) @ visual.proj
    return x[:, 0], x[:, 1:], tapped


def encode_prompts(model: nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings T×D."""
    return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def presence_prompts() -> list[str]:
    """Prompts whose presence the patch loss predicts: the classes, then the background kinds."""
    return ([PRESENCE_TEMPLATE.format(name) for name in CLASS_NAMES]
            + [BACKGROUND_TEMPLATE.format(kind) for kind in BACKGROUND_KINDS])
