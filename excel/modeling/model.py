"""ExCEL: frozen CLIP (SVC/LVC) + text matrix (TSE) → CAMs, and the learnable adapter/decoder head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from excel.modeling.backbone import DenseCLIPEncoder, DenseOutput
from excel.modeling.cam import surgery_cams
from excel.modeling.head import ExCELHead
from excel.modeling.lvc import lvc_shift, lvc_stream
from excel.utils.precision import autocast, autocast_dtype


@dataclass
class ExCELOutput:
    """One forward: the frozen backbone's dense output and the head's outputs.

    features: B×C_a×h×w adapter features F;  logits: B×(C+1)×h×w;  affinity: B×hw×hw decoder affinity Â.
    """

    dense: DenseOutput
    features: torch.Tensor
    logits: torch.Tensor
    affinity: torch.Tensor


class ExCEL(nn.Module):
    """The full model. Only `head` has trainable parameters; the text matrix is a fixed buffer.

    ``precision`` (fp32, bf16, fp16) is the autocast dtype of the backbone and head forward; the CAMs,
    the LVC stream's projection and the returned features, logits and affinity are fp32 (docs/precision.md).
    """

    def __init__(self, encoder: DenseCLIPEncoder, text: torch.Tensor, num_classes: int, head: ExCELHead,
                 lvc_mean_weight: float = 1.0, lvc_scale: float = 3.0, precision: str = "fp32"):
        super().__init__()
        autocast_dtype(precision)               # an unknown value fails here, not at the first forward
        self.precision = precision
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes
        self.lvc_mean_weight = lvc_mean_weight
        self.lvc_scale = lvc_scale
        self.register_buffer("text", text, persistent=False)

    def forward(self, images: torch.Tensor, calibrate: bool = True) -> ExCELOutput:
        """B×3×H×W normalised images → :class:`ExCELOutput`: the frozen dense forward, then the head.

        The one forward path of training, validation, pseudo labels and inference. ``calibrate=False``
        skips the SVC stream (inference needs only the layer records the head reads).
        """
        with autocast(images.device, self.precision):
            dense = self.encoder(images, calibrate=calibrate)
            features, logits, affinity = self.head(dense.layer_outputs, dense.grid)
        return ExCELOutput(dense, features.float(), logits.float(), affinity.float())

    def encode(self, images: torch.Tensor, calibrate: bool = True) -> DenseOutput:
        """The frozen dense forward alone (no head), in the model's precision."""
        with autocast(images.device, self.precision):
            return self.encoder(images, calibrate=calibrate)

    def static_cams(self, dense: DenseOutput) -> torch.Tensor:
        """Training-free CAMs (docs/method.md §4): B×C×h×w in [0, 1]."""
        return surgery_cams(dense.tokens, self.text, self.num_classes, dense.grid)

    def dynamic_cams(self, dense: DenseOutput, features: torch.Tensor) -> torch.Tensor:
        """CAMs with LVC (docs/method.md §7) from the cached SVC stream and adapter features F: B×C×h×w."""
        shift = lvc_shift(features.detach(), self.lvc_mean_weight, self.lvc_scale)
        tokens = self.encoder.project(lvc_stream(dense, shift).float())
        return surgery_cams(tokens, self.text, self.num_classes, dense.grid)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits B×(C+1)×h×w for B×3×H×W normalised images."""
        return self(images, calibrate=False).logits
