"""The learnable head: multi-layer adapter, transformer decoder and decoder affinity (docs/method.md §6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, Transformer
from torch import nn


class LayerAdapter(nn.Module):
    """Fuses the patch tokens of every backbone layer into one feature map.

    Each layer's tokens (B×hw×D_v) pass through their own MLP D_v→hidden→dim; the L maps are
    concatenated and fused by a 1×1 conv, then Dropout2d: B×dim×h×w.
    """

    def __init__(self, num_layers: int, in_dim: int, hidden: int = 256, dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
            for _ in range(num_layers)
        )
        self.fuse = nn.Conv2d(num_layers * dim, dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, layer_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """layer_tokens L×B×(1+hw)×D_v, CLS first → B×dim×h×w (a view of B×hw×dim tokens).

        The CLS row goes through the MLPs too and is dropped after the fuse: one extra row per image
        costs less than copying every layer's patch rows out of the records.
        """
        maps = torch.cat([mlp(tokens) for mlp, tokens in zip(self.mlps, layer_tokens)], dim=-1)
        return self.dropout(token_map(pointwise_conv(self.fuse, maps)[:, 1:], grid))


def pointwise_conv(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv applied to B×hw×C_in tokens as one matrix product: B×hw×C_out.

    The same arithmetic as the conv on B×C_in×h×w maps, without its im2col buffers and layout copies.
    """
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


def token_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B×hw×C tokens → the B×C×h×w map they form (a view, no copy)."""
    return tokens.transpose(1, 2).unflatten(2, grid)


class SegDecoder(nn.Module):
    """Pre-LN transformer blocks over the hw feature tokens, then a 1×1 conv to class logits."""

    def __init__(self, dim: int, num_classes: int, layers: int = 3, heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.transformer = Transformer(dim, layers, heads, mlp_ratio, act_layer=QuickGELU)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B×dim×h×w → logits B×num_classes×h×w."""
        tokens = self.transformer(features.flatten(2).transpose(1, 2))
        return token_map(pointwise_conv(self.classifier, tokens), features.shape[-2:])


def decoder_affinity(features: torch.Tensor, scale: float = 3.0) -> torch.Tensor:
    """Â = sigmoid((S − mean(S))·scale), S = cosine similarities of the feature tokens: B×C×h×w → B×hw×hw.

    The mean is taken over the whole batch tensor (as published).
    """
    f = F.normalize(features.flatten(2), dim=1)
    sim = f.transpose(1, 2) @ f
    return torch.sigmoid((sim - sim.mean()) * scale)


class ExCELHead(nn.Module):
    """Adapter + decoder; returns the features F, the logits and the affinity Â."""

    def __init__(self, num_layers: int, in_dim: int, num_classes: int, adapter_hidden: int = 256,
                 adapter_dim: int = 256, dropout: float = 0.1, decoder_layers: int = 3,
                 decoder_heads: int = 8, decoder_mlp_ratio: float = 4.0, affinity_scale: float = 3.0):
        super().__init__()
        self.adapter = LayerAdapter(num_layers, in_dim, adapter_hidden, adapter_dim, dropout)
        self.decoder = SegDecoder(adapter_dim, num_classes + 1, decoder_layers, decoder_heads, decoder_mlp_ratio)
        self.affinity_scale = affinity_scale

    def forward(self, layer_outputs: torch.Tensor, grid: tuple[int, int]):
        """layer_outputs L×B×N×D_v (CLS first) → (F B×dim×h×w, logits B×(C+1)×h×w, Â B×hw×hw)."""
        features = self.adapter(layer_outputs, grid)
        logits = self.decoder(features)
        return features, logits, decoder_affinity(features, self.affinity_scale)
