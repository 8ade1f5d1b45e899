"""A straightforward PAR (one neighbour tensor, no sparse operator) and realistic test images, shared by
the PAR and refinement tests as the reference the fast implementation is compared against."""
import math

import torch
from torch import nn


class StraightforwardPAR(nn.Module):
    """PAR written the direct way: a B×C×M×H×W neighbour tensor, torch.std, and every iteration one
    shifted multiply-add per neighbour (dilation-major order), as docs/method.md §5 reads."""

    def __init__(self, dilations=(1, 2, 4, 8, 12, 24), num_iter=20, temperature=0.3, position_weight=0.01):
        super().__init__()
        self.offsets = [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]
        self.margin, self.num_iter, self.temperature = max(dilations), num_iter, temperature
        distances = torch.tensor([math.hypot(dy, dx) for dy, dx in self.offsets], dtype=torch.float32)
        position = -(distances / (distances.std() + 1e-8) / temperature) ** 2
        self.position = position_weight * position.softmax(dim=0)

    def shifted(self, x):
        height, width = x.shape[-2:]
        m = self.margin
        padded = torch.nn.functional.pad(x, [m] * 4, mode="replicate")
        return [padded[..., m + dy:m + dy + height, m + dx:m + dx + width] for dy, dx in self.offsets]

    def affinity(self, image):
        neighbours = torch.stack(self.shifted(image), dim=2)
        std = neighbours.std(dim=2, keepdim=True)
        color = -((neighbours - image.unsqueeze(2)).abs() / (std + 1e-8) / self.temperature) ** 2
        return color.mean(dim=1).softmax(dim=1) + self.position.to(image.dtype).view(1, -1, 1, 1)

    def forward(self, image, masks):
        image = torch.nn.functional.interpolate(image.to(masks.dtype), size=masks.shape[-2:], mode="bilinear",
                                                align_corners=True)
        weights = self.affinity(image)
        for _ in range(self.num_iter):
            out = torch.zeros_like(masks)
            for index, neighbour in enumerate(self.shifted(masks)):
                out += neighbour * weights[:, index:index + 1]
            masks = out
        return masks


def realistic_image(batch, height, width, seed=0):
    """uint8-quantised images /255: flat regions with sharp edges, gradients and pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.rand(batch, 3, 4, 5, generator=generator)
    image = torch.nn.functional.interpolate(blocks, size=(height, width), mode="nearest")
    ramp = torch.linspace(0, 0.2, width).view(1, 1, 1, width)
    noise = 0.02 * torch.randn(batch, 3, height, width, generator=generator)
    return ((image * 0.8 + ramp + noise).clamp(0, 1) * 255).to(torch.uint8) / 255
