"""Frozen CLIP ViT image encoder with Static and Learnable Visual Calibration (docs/method.md §2, §7).

Our own forward over open_clip's modules and weights. The last `svc_layers` blocks run two streams:
the original CLIP stream x_o and the calibrated stream x_s, which adds the output of an
intra-correlation ("q-q / k-k / v-v") attention and skips the MLP. The forward also caches what
Learnable Visual Calibration needs (``lvc_values``; see excel/modeling/lvc.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DenseOutput:
    """What one frozen forward yields (N = 1 + h·w tokens, CLS first).

    tokens:        B×N×D   projected tokens P (calibrated stream when SVC is on)
    attn_maps:     K×B×N×N fp32 attention of the last K recorded blocks (head mean for plain blocks, head sum
                   for SVC blocks); K = the encoder's ``record_attention`` (all L blocks by default)
    layer_outputs: L×B×N×D_v  output tokens of every block (original stream)
    grid:          (h, w) patch grid
    calibrated:    B×N×D_v  calibrated stream before ln_post (CLS already from the original stream)
    lvc_values:    B×hw×D_v  U = Σ_l V_l W_lᵀ over the SVC layers (patch rows), for LVC
    num_heads:     attention heads per block
    """

    tokens: torch.Tensor
    attn_maps: torch.Tensor
    layer_outputs: torch.Tensor
    grid: tuple[int, int]
    calibrated: torch.Tensor | None = None
    lvc_values: torch.Tensor | None = None
    num_heads: int = 1


class DenseCLIPEncoder(nn.Module):
    """Dense forward of an open_clip ``VisionTransformer`` (frozen, eval mode, no grad).

    Args:
        visual: ``clip_model.visual`` of an open_clip CLIP with a ViT image tower.
        svc_layers: number of final blocks that run Static Visual Calibration.
        svc_enabled: when False the tokens P are CLIP's ordinary output tokens.
        published_layer_records: record the layer outputs as the published code ends up holding them.
            Its SVC blocks update tensors in place after they were recorded: the output of block
            L−S becomes the final calibrated stream, and the outputs of blocks L−S+1..L−1 gain the
            attention output of the next block. On by default, since the published numbers were produced
            this way; off: every record is the clean x_o (docs/method.md §2).
        record_attention: number of final blocks whose attention maps are recorded (None: all). The other
            blocks run fused attention (``scaled_dot_product_attention``: flash / memory-efficient kernels
            where the device has them), since nothing reads their maps.

    The attention softmax of the recorded blocks and of the calibration runs in fp32 under autocast.
    """

    def __init__(self, visual: nn.Module, svc_layers: int = 5, svc_enabled: bool = True,
                 published_layer_records: bool = True, record_attention: int | None = None):
        super().__init__()
        blocks = visual.transformer.resblocks
        if not 0 < svc_layers <= len(blocks):
            raise ValueError(f"svc.layers={svc_layers} must be in 1..{len(blocks)} (the model has {len(blocks)} blocks)")
        self.visual = visual
        self.svc_layers = svc_layers
        if record_attention is not None and not 0 < record_attention <= len(blocks):
            raise ValueError(f"record_attention={record_attention} must be in 1..{len(blocks)}")
        self.record_attention = len(blocks) if record_attention is None else record_attention
        self.svc_enabled = svc_enabled
        self.published_layer_records = published_layer_records and svc_enabled
        self.patch_size = visual.conv1.kernel_size[0]
        self.num_heads = blocks[0].attn.num_heads
        pos = visual.positional_embedding.detach()
        side = int(round((pos.shape[0] - 1) ** 0.5))
        if side * side != pos.shape[0] - 1:
            raise ValueError("the pretrained positional embedding is not a square grid")
        self.pretrained_grid = side
        self.requires_grad_(False)

    def store_autocast_weights(self, dtype: torch.dtype) -> None:
        """Hold the weights that only ever run under autocast in ``dtype`` (bf16 or fp16): each block's q/k/v
        projection and MLP, about 90 % of the backbone.

        Autocast casts them to its dtype at every call; stored cast, a forward under autocast of ``dtype``
        computes the same numbers without those per-call copies, and the backbone takes about half its fp32
        memory. The weights of the steps kept in fp32 (patch embedding, layer norms, the output projection
        that the SVC update uses, the final projection) stay fp32. The forward then needs autocast of
        ``dtype``, as :class:`~excel.modeling.model.ExCEL` runs it.
        """
        for block in self.visual.transformer.resblocks:
            for module in (block.attn, block.mlp.c_fc, block.mlp.c_proj):
                for param in module.parameters(recurse=False):       # attn: in_proj only, not out_proj
                    param.data = param.data.to(dtype)

    def train(self, mode: bool = True) -> "DenseCLIPEncoder":
        """The backbone always stays in eval mode."""
        return super().train(False)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks L."""
        return len(self.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        """Token width D_v of the blocks."""
        return self.visual.conv1.out_channels

    def positional_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1 + h·w)×D_v: the pretrained grid bilinearly resized to h×w (always from the pretrained grid)."""
        pos = self.visual.positional_embedding
        cls_pos, grid_pos = pos[:1], pos[1:]
        if (h, w) != (self.pretrained_grid, self.pretrained_grid):
            g = self.pretrained_grid
            grid_pos = grid_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bilinear", align_corners=False)
            grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(h * w, -1)
        return torch.cat([cls_pos, grid_pos], dim=0)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """B×3×H×W → tokens B×N×D_v after ln_pre, and the grid (h, w). The patch embedding runs in the weights'
        precision even under autocast: every later error grows from its rounding (docs/precision.md)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B×3×H×W, got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}×{W} is not divisible by the patch size {p}; "
                             f"resize or pad the input to a multiple of {p}")
        visual = self.visual
        with torch.autocast(images.device.type, enabled=False):
            x = visual.conv1(images.to(visual.conv1.weight.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(h, w).to(x.dtype)
        return visual.ln_pre(x), (h, w)

    def _qkv(self, block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of a block, each B×H×N×d."""
        attn = block.attn
        B, N, D = x.shape
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        qkv = qkv.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        """B×H×N×d → B×N×(H·d)."""
        B, H, N, d = x.shape
        return x.transpose(1, 2).reshape(B, N, H * d)

    @staticmethod
    def attention_map(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ/√d) in fp32: B×H×N×d each → B×H×N×N.

        When 1/√d is a power of two (d = 16, 64, 256: ViT-B and ViT-L have 64) the scale multiplies q, which
        is exact in any precision: the same numbers with one pass over the large N×N map fewer. Otherwise
        it multiplies the fp32 product (scaling the half-precision q would add a rounding of its own).
        """
        scale = q.shape[-1] ** -0.5
        if math.log2(scale).is_integer():
            return torch.softmax(((q * scale) @ k.transpose(-2, -1)).float(), dim=-1)
        return torch.softmax((q @ k.transpose(-2, -1)).float() * scale, dim=-1)

    @staticmethod
    def calibration_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SVC intra-correlation attention summed over heads: B×N×N (docs/method.md §2).

        The mean of the q-q, k-k and v-v maps, summed over the heads; the maps are added in place, in
        the order of the definition, so no further B×H×N×N map is allocated.
        """
        attention_map = DenseCLIPEncoder.attention_map
        mean = attention_map(q, q)
        return mean.add_(attention_map(k, k)).add_(attention_map(v, v)).div_(3).sum(dim=1)

    @staticmethod
    def calibrated_update(calib: torch.Tensor, v: torch.Tensor, out_proj: nn.Linear) -> torch.Tensor:
        """The SVC stream's update from one block, in fp32 even under autocast (the CAMs are made of this
        stream): calibration maps B×N×N, values B×H×N×d → B×N×D_v."""
        with torch.autocast(v.device.type, enabled=False):
            mixed = calib.float().unsqueeze(1) @ v.float()
            return F.linear(DenseCLIPEncoder._merge(mixed), out_proj.weight.float(),
                            None if out_proj.bias is None else out_proj.bias.float())

    @torch.no_grad()
    def forward(self, images: torch.Tensor, calibrate: bool = True) -> DenseOutput:
        """B×3×H×W (normalised) → :class:`DenseOutput`.

        With `calibrate=False` the SVC stream is skipped (for callers that only need the recorded maps
        and layer outputs, e.g. the decoder at inference): `tokens` are then CLIP's ordinary tokens.
        The published layer records need the SVC stream, so they keep it on.
        """
        calibrate = (calibrate or self.published_layer_records) and self.svc_enabled
        x, grid = self.embed(images)
        blocks = self.visual.transformer.resblocks
        first_svc = len(blocks) - self.svc_layers
        first_recorded = len(blocks) - self.record_attention
        attn_maps, layer_outputs = [], []
        x_s, lvc_values = None, None
        for index, block in enumerate(blocks):
            svc = index >= first_svc
            if svc and x_s is None:
                x_s = x.clone()
            q, k, v = self._qkv(block, x)
            out_proj = block.attn.out_proj
            if index >= first_recorded:
                attn = self.attention_map(q, k)
                attn_maps.append(attn.sum(dim=1) if svc else attn.mean(dim=1))
                mixed = attn.to(v.dtype) @ v
            else:
                mixed = F.scaled_dot_product_attention(q, k, v)
            attn_out = block.ls_1(out_proj(self._merge(mixed)))
            if svc and index > first_svc and self.published_layer_records:
                layer_outputs[-1] = layer_outputs[-1] + attn_out
            x = x + attn_out
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            layer_outputs.append(x)
            if svc and calibrate:
                x_s = x_s + self.calibrated_update(self.calibration_attention(q, k, v), v, out_proj)
                values = F.linear(self._merge(v)[:, 1:], out_proj.weight)
                lvc_values = values if lvc_values is None else lvc_values + values
        if calibrate:
            x_s = torch.cat([x[:, :1], x_s[:, 1:]], dim=1)
            tokens = self.project(x_s)
            if self.published_layer_records:
                layer_outputs[first_svc - 1] = x_s
        else:
            x_s, tokens = None, self.project(x)
        return DenseOutput(tokens=tokens, attn_maps=torch.stack(attn_maps), layer_outputs=torch.stack(layer_outputs),
                           grid=grid, calibrated=x_s, lvc_values=lvc_values, num_heads=self.num_heads)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """B×N×D_v → B×N×D: ln_post and the visual projection, in fp32 (the tokens P the CAMs are made of)."""
        with torch.autocast(x.device.type, enabled=False):
            x = self.visual.ln_post(x.float())
            return x @ self.visual.proj if self.visual.proj is not None else x
