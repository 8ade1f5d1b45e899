"""The dense CLIP forward with SVC and LVC against plain reference computations (docs/method.md §2, §7)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from excel.modeling.backbone import DenseCLIPEncoder
from excel.modeling.lvc import lvc_shift, lvc_stream


def reference_forward(visual, images, svc_layers=5, shift=None):
    """docs/method.md §2 and §7 written out head by head; `shift` (B×hw×hw) is LVC's E added to every head's A_c."""
    B, _, H, W = images.shape
    h, w = H // 16, W // 16
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    pos = visual.positional_embedding
    g = int((pos.shape[0] - 1) ** 0.5)
    grid = F.interpolate(pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                         align_corners=False).permute(0, 2, 3, 1).reshape(h * w, -1)
    x = torch.cat([visual.class_embedding.expand(B, 1, -1), x], 1) + torch.cat([pos[:1], grid])
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    x_s = None
    for i, block in enumerate(blocks):
        svc = i >= len(blocks) - svc_layers
        if svc and x_s is None:
            x_s = x.clone()
        y = block.ln_1(x)
        qkv = y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
        q, k, v = qkv.chunk(3, dim=-1)
        d = q.shape[-1] // heads
        outs, calib_outs = [], []
        calib_sum = 0
        for hd in range(heads):
            qh, kh, vh = (t[..., hd * d:(hd + 1) * d] for t in (q, k, v))
            outs.append(torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, -1) @ vh)
            if svc:
                a_c = sum(torch.softmax(t @ t.transpose(1, 2) / d ** 0.5, -1) for t in (qh, kh, vh)) / 3
                if shift is not None:
                    a_c = a_c.clone()
                    a_c[:, 1:, 1:] += shift
                calib_sum = calib_sum + a_c
        x = x + block.attn.out_proj(torch.cat(outs, -1))
        x = x + block.mlp(block.ln_2(x))
        if svc:
            for hd in range(heads):
                calib_outs.append(calib_sum @ v[..., hd * d:(hd + 1) * d])
            x_s = x_s + block.attn.out_proj(torch.cat(calib_outs, -1))
    x_s = torch.cat([x[:, :1], x_s[:, 1:]], 1)
    return visual.ln_post(x_s) @ visual.proj


@pytest.fixture()
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 96)


def test_svc_off_equals_open_clip_tokens(tiny_clip):
    visual = tiny_clip.visual
    images = torch.randn(2, 3, 64, 64)
    out = DenseCLIPEncoder(visual, svc_enabled=False)(images)
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    torch.testing.assert_close(out.tokens[:, 0], pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens[:, 1:], tokens @ visual.proj, atol=1e-5, rtol=1e-5)


def test_svc_forward_matches_reference(tiny_clip, images, device):
    out = DenseCLIPEncoder(copy.deepcopy(tiny_clip.visual).to(device))(images.to(device))
    with torch.no_grad():
        expected = reference_forward(tiny_clip.visual, images)
    torch.testing.assert_close(out.tokens.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_recorded_maps_mix_head_mean_and_head_sum(tiny_clip, images):
    encoder = DenseCLIPEncoder(tiny_clip.visual)
    out = encoder(images)
    row_sums = out.attn_maps.sum(-1)                      # softmax rows: mean → 1, sum over H heads → H
    torch.testing.assert_close(row_sums[:7], torch.ones_like(row_sums[:7]))
    torch.testing.assert_close(row_sums[7:], torch.full_like(row_sums[7:], encoder.num_heads))


def test_lvc_from_cache_equals_second_pass(tiny_clip, images, device):
    encoder = DenseCLIPEncoder(copy.deepcopy(tiny_clip.visual).to(device))
    out = encoder(images.to(device))
    features = torch.randn(2, 16, *out.grid)
    shift = lvc_shift(features)
    with torch.no_grad():
        expected = reference_forward(tiny_clip.visual, images, shift=shift)
        got = encoder.project(lvc_stream(out, shift.to(device))).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, out.tokens, atol=1e-3)   # the shift does change the tokens


def test_lvc_shift_matches_plain_formula():
    torch.manual_seed(2)
    features = torch.randn(3, 8, 4, 5)
    shift = lvc_shift(features)
    r = features.flatten(2)
    r = r / r.norm(dim=1, keepdim=True)
    s = torch.einsum("bci,bcj->bij", r, r)
    s = (s - s.mean()) * 3.0
    expected = torch.zeros_like(s)
    for b in range(3):
        for i in range(20):
            keep = s[b, i] >= 0
            expected[b, i, keep] = torch.softmax(s[b, i, keep], 0)
    torch.testing.assert_close(shift, expected)


@pytest.mark.parametrize("size", [(320, 320), (320, 480)])
def test_output_shapes(tiny_clip, size):
    H, W = size
    encoder = DenseCLIPEncoder(tiny_clip.visual)
    out = encoder(torch.randn(2, 3, H, W))
    h, w = H // 16, W // 16
    N = 1 + h * w
    assert out.grid == (h, w)
    assert out.tokens.shape == (2, N, tiny_clip.visual.output_dim)
    assert out.attn_maps.shape == (12, 2, N, N)
    assert out.layer_outputs.shape == (12, 2, N, 128)
    assert out.lvc_values.shape == (2, h * w, 128)


def test_size_not_divisible_by_16_is_rejected(tiny_clip):
    with pytest.raises(ValueError, match="330×320 is not divisible by the patch size 16"):
        DenseCLIPEncoder(tiny_clip.visual)(torch.randn(1, 3, 330, 320))


def test_backbone_is_frozen_and_stays_in_eval(tiny_clip):
    encoder = DenseCLIPEncoder(tiny_clip.visual)
    encoder.train()
    assert not encoder.training and not tiny_clip.visual.training
    assert not any(p.requires_grad for p in encoder.parameters())


def aliased_records(visual, images, svc_layers=5):
    """The published dual-path forward with its in-place updates, recording tensors (not copies) per block."""
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    x, _ = DenseCLIPEncoder(visual).embed(images)
    records, x_ori = [], None
    for i, block in enumerate(blocks):
        source = x_ori if x_ori is not None else x
        y = block.ln_1(source)
        q, k, v = (y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        d = q.shape[-1] // heads
        split = [tuple(t[..., h * d:(h + 1) * d] for t in (q, k, v)) for h in range(heads)]
        ori, calib_sum = [], 0
        for qh, kh, vh in split:
            ori.append(torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, -1) @ vh)
            calib_sum = calib_sum + sum(torch.softmax(t @ t.transpose(1, 2) / d ** 0.5, -1) for t in (qh, kh, vh)) / 3
        ori_res = block.attn.out_proj(torch.cat(ori, -1))
        if i < len(blocks) - svc_layers:
            x = x + ori_res
            x = x + block.mlp(block.ln_2(x))
            records.append(x)
            continue
        res = block.attn.out_proj(torch.cat([calib_sum @ v[..., h * d:(h + 1) * d] for h in range(heads)], -1))
        if x_ori is None:
            x_ori = x + ori_res
        else:
            x_ori += ori_res                         # in place: changes the previous block's record
        x_ori = x_ori + block.mlp(block.ln_2(x_ori))
        x += res                                     # in place: the layer L−S record becomes x_s
        records.append(x_ori)
    x[:, 0] = x_ori[:, 0]
    return torch.stack(records)


def test_published_layer_records_follow_the_in_place_updates(tiny_clip, images):
    published = DenseCLIPEncoder(tiny_clip.visual)(images)
    clean = DenseCLIPEncoder(tiny_clip.visual, published_layer_records=False)(images)
    with torch.no_grad():
        expected = aliased_records(tiny_clip.visual, images)
    torch.testing.assert_close(published.layer_outputs, expected, atol=1e-5, rtol=1e-5)
    changed = [not torch.allclose(a, b) for a, b in zip(published.layer_outputs, clean.layer_outputs)]
    assert changed == [False] * 6 + [True] * 5 + [False]
    torch.testing.assert_close(published.tokens, clean.tokens)
    assert DenseCLIPEncoder(tiny_clip.visual)(images, calibrate=False).calibrated is not None


def test_config_default_reproduces_the_published_records():
    """Every shipped config builds the encoder with the in-place (published) layer records."""
    from excel.config import load_config
    from excel.apps.ablation.sweep import load_sweep
    for name in ("voc", "coco", "demo", "custom_example"):
        cfg = load_config(f"configs/{name}.yaml", ["dataset.class_file=null"])
        assert cfg.svc.published_layer_records is True, name
    sweep = load_sweep("configs/ablations/voc.yaml")
    for variant in sweep.variants:
        assert sweep.config(variant).svc.published_layer_records is True, variant


@pytest.mark.parametrize("recorded", [1, 6])
def test_fused_attention_in_unrecorded_blocks_equals_the_explicit_form(tiny_clip, images, recorded):
    """Blocks whose maps nothing reads run scaled_dot_product_attention: the outputs equal the reference
    (explicit softmax) forward and the all-explicit encoder up to float32 rounding; the maps kept are the
    last ones of the all-explicit encoder."""
    explicit = DenseCLIPEncoder(tiny_clip.visual)(images)
    fused = DenseCLIPEncoder(tiny_clip.visual, record_attention=recorded)(images)
    with torch.no_grad():
        expected = reference_forward(tiny_clip.visual, images)
    torch.testing.assert_close(fused.tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.layer_outputs, explicit.layer_outputs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.lvc_values, explicit.lvc_values, atol=1e-5, rtol=1e-5)
    assert fused.attn_maps.shape[0] == recorded
    torch.testing.assert_close(fused.attn_maps, explicit.attn_maps[-recorded:], atol=1e-6, rtol=1e-5)


def test_recorded_attention_count_is_checked(tiny_clip):
    with pytest.raises(ValueError, match="record_attention=13 must be in 1..12"):
        DenseCLIPEncoder(tiny_clip.visual, record_attention=13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 32])
def test_attention_maps_equal_the_definition_exactly(head_dim, dtype):
    """softmax(q·kᵀ/√d) with the scale on q where 1/√d is a power of two (d = 64) gives the very numbers of the
    scaled product; the calibration maps, added in place, equal ((A_qq + A_kk + A_vv) / 3) summed over heads."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, head_dim).to(dtype) for _ in range(3))
    scale = head_dim ** -0.5

    def plain(a, b):
        return torch.softmax((a @ b.transpose(-2, -1)).float() * scale, dim=-1)

    assert torch.equal(DenseCLIPEncoder.attention_map(q, k), plain(q, k))
    calibration = DenseCLIPEncoder.calibration_attention(q, k, v)
    assert torch.equal(calibration, ((plain(q, q) + plain(k, k) + plain(v, v)) / 3).sum(dim=1))
