"""Losses and the learning-rate schedule against direct computations of docs/method.md §8."""
import math

import pytest
import torch
import torch.nn.functional as F

from excel.config import load_config
from excel.engine.losses import aff_loss, affinity_targets, radius_mask, seg_loss
from excel.engine.schedule import build_optimizer, build_scheduler
from excel.labels.refine import resize_bilinear


def test_seg_loss_balances_background_and_foreground():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, 0, :3] = 255
    bg, fg = [], []
    for b in range(2):
        for y in range(5):
            for x in range(6):
                lab = int(labels[b, y, x])
                if lab == 255:
                    continue
                ce = -torch.log_softmax(logits[b, :, y, x], 0)[lab]
                (bg if lab == 0 else fg).append(ce)
    expected = 0.5 * (sum(bg) / (len(bg) + 1e-6) + sum(fg) / (len(fg) + 1e-6))
    torch.testing.assert_close(seg_loss(logits, labels), expected)


def test_aff_loss_with_radius_and_ignored_positions():
    torch.manual_seed(0)
    h, w, radius = 4, 5, 1
    labels = torch.randint(0, 3, (2, h * 2, w * 2))
    labels[1, 0:2, 0:2] = 255
    aff = torch.rand(2, h * w, h * w)
    small = labels[:, ::2, ::2].flatten(1)                     # nearest downsampling by 2
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for b in range(2):
        for i in range(h * w):
            for j in range(h * w):
                yi, xi, yj, xj = i // w, i % w, j // w, j % w
                if max(abs(yi - yj), abs(xi - xj)) > radius or 255 in (small[b, i], small[b, j]):
                    continue
                if small[b, i] == small[b, j]:
                    pos_sum += 1 - aff[b, i, j]
                    n_pos += 1
                else:
                    neg_sum += aff[b, i, j]
                    n_neg += 1
    expected = 0.5 * pos_sum / (n_pos + 1) + 0.5 * neg_sum / (n_neg + 1)
    positives, negatives = affinity_targets(labels, (h, w), radius)
    torch.testing.assert_close(aff_loss(aff, positives, negatives), torch.as_tensor(expected))


def test_radius_mask_is_chebyshev_and_cached():
    mask = radius_mask(20, 20, 8, torch.device("cpu"))
    assert mask[0, 8] and mask[0, 8 * 20 + 8] and not mask[0, 9] and not mask[0, 9 * 20]
    assert radius_mask(20, 20, 8, torch.device("cpu")) is mask


@pytest.mark.parametrize("it,expected", [
    (0, 1e-3 * 1e-6),
    (25, 1e-3 * (1 - 0.5 * (1 - 1e-6))),
    (50, 1e-3 * (1 - 50 / 30000)),
    (15000, 1e-3 * 0.5),
    (29999, 1e-3 * (1 / 30000)),
])
def test_lr_schedule_values(it, expected):
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=0.01", "optim.warmup_iters=50",
                             "optim.warmup_ratio=1e-6", "optim.power=1.0", "train.max_iters=30000"])
    opt = build_optimizer(cfg, [param])
    sched = build_scheduler(cfg, opt)
    for _ in range(it):
        opt.step()
        sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], expected, rel_tol=1e-9)


def test_optimizer_is_fused_where_supported_and_matches_plain_adamw(device):
    cfg = load_config(None, ["optim.lr=1e-2", "optim.weight_decay=0.05", "optim.warmup_iters=0"])
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 7, generator=generator)
    grads = [torch.randn(3, 7, generator=generator) for _ in range(5)]
    fused_param, plain_param = (torch.nn.Parameter(start.clone().to(device)) for _ in range(2))
    fused = build_optimizer(cfg, [fused_param])
    o = cfg.optim
    plain = torch.optim.AdamW([plain_param], lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps,
                              foreach=False)
    for grad in grads:
        for param, optimizer in ((fused_param, fused), (plain_param, plain)):
            param.grad = grad.to(device)
            optimizer.step()
    cpu_fused = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)  # fused AdamW on CPUs
    assert fused.defaults["fused"] == (device.type == "cuda" or cpu_fused)
    torch.testing.assert_close(fused_param.detach(), plain_param.detach(), rtol=1e-5, atol=1e-6)  # moved ~5e-2
    assert not torch.allclose(fused_param.detach().cpu(), start)


def _bilinear_by_hand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Half-pixel-centred bilinear resize of an h×w map, one output pixel at a time."""
    h, w = x.shape
    out = torch.empty(size, dtype=x.dtype)

    def taps(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        return i0, min(i0 + 1, n_in - 1), src - i0

    for y in range(size[0]):
        y0, y1, ly = taps(y, h, size[0])
        for x_ in range(size[1]):
            x0, x1, lx = taps(x_, w, size[1])
            out[y, x_] = ((1 - ly) * ((1 - lx) * x[y0, x0] + lx * x[y0, x1])
                          + ly * ((1 - lx) * x[y1, x0] + lx * x[y1, x1]))
    return out


@pytest.mark.parametrize("size_in, size_out", [((3, 4), (7, 10)), ((5, 5), (5, 5)), ((6, 4), (3, 9)), ((20, 20), (320, 320))])
def test_loss_upsampling_matches_the_formula_and_interpolate(size_in, size_out):
    """L_seg upsamples the float32 logits with resize_bilinear (two products with cached matrices): the values
    and gradients of F.interpolate(bilinear, align_corners=False), to float32 rounding."""
    torch.manual_seed(0)
    maps = torch.randn(2, 3, *size_in, requires_grad=True)
    got = resize_bilinear(maps, size_out)
    assert got.shape == (2, 3, *size_out)
    by_hand = _bilinear_by_hand(maps[1, 2].detach().double(), size_out)
    torch.testing.assert_close(got[1, 2].double(), by_hand, rtol=1.3e-6, atol=1e-5)
    expected = F.interpolate(maps, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(expected)
    grad_got, = torch.autograd.grad((got * weights).sum(), maps)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), maps)
    # each gradient entry sums up to (H/h)·(W/w)·4 float32 products, in another order than the kernel's
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-5, atol=1e-5 * grad_expected.abs().max().item())
