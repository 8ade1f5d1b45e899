"""The config key `precision`: half-precision forwards and training steps on the CPU, and training-free labels
that agree with fp32's (docs/precision.md)."""
import numpy as np
import pytest
import torch
import yaml

from excel.builders import build_model, build_par
from excel.config import ConfigError, load_config
from excel.engine.schedule import build_optimizer, build_scheduler
from excel.engine.step import training_step
from excel.labels.pseudo_label import predict_image
from excel.modeling.cam import surgery_cams
from excel.prep.synthetic import render_scene
from excel.utils.precision import autocast, grad_scaler
from fixtures_clip import tiny_overrides

HALF = ["bf16", "fp16"]
LABEL_AGREEMENT = 0.995                 # share of pixels whose training-free label equals fp32's
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny_cfg(tiny_clip_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return load_config("configs/voc.yaml", tiny_overrides(tiny_clip_files, root / "cache", **{
        "tse.enabled": False, "dataset.background_names": "[]", "train.batch_size": 2}))


def model_in(cfg, precision: str):
    torch.manual_seed(0)                # the same head initialisation for every precision
    cfg = cfg.copy()
    cfg.precision = precision
    return build_model(cfg)


@pytest.mark.parametrize("precision", HALF)
def test_surgery_cams_accept_half_tokens(precision):
    """The crash of a half-precision forward: half tokens times the fp32 text matrix."""
    torch.manual_seed(0)
    tokens, text = torch.randn(2, 17, 8), torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cams = surgery_cams(tokens.to(dtype), text, 3, (4, 4))
    assert cams.dtype == torch.float32
    torch.testing.assert_close(cams, surgery_cams(tokens.to(dtype).float(), text, 3, (4, 4)))


@pytest.mark.parametrize("precision", HALF)
def test_half_forward_runs_in_half_and_returns_fp32(tiny_cfg, precision):
    model = model_in(tiny_cfg, precision).eval()
    images = torch.randn(2, 3, 64, 64)
    mlp_outputs = []
    model.encoder.visual.transformer.resblocks[0].mlp.register_forward_hook(lambda m, i, o: mlp_outputs.append(o))
    out = model(images)
    assert mlp_outputs[0].dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]   # the blocks in half
    assert out.dense.layer_outputs.dtype == torch.float32                   # the residual stream in fp32
    assert out.logits.dtype == out.affinity.dtype == out.features.dtype == torch.float32
    assert out.dense.attn_maps.dtype == torch.float32
    for cams in (model.static_cams(out.dense), model.dynamic_cams(out.dense, out.features)):
        assert cams.dtype == torch.float32 and torch.isfinite(cams).all()
    reference = model_in(tiny_cfg, "fp32").eval()(images)
    torch.testing.assert_close(out.logits, reference.logits, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("precision", HALF)
@pytest.mark.parametrize("dynamic", [False, True])
def test_half_training_step_runs_on_cpu(tiny_cfg, precision, dynamic):
    model = model_in(tiny_cfg, precision)
    optimizer = build_optimizer(tiny_cfg, model.head.parameters())
    scheduler = build_scheduler(tiny_cfg, optimizer)
    scaler = grad_scaler(torch.device("cpu"), precision)
    assert not scaler.is_enabled()                  # no loss scaling on a CPU
    before = [p.detach().clone() for p in model.head.parameters()]
    step = training_step(model, torch.randn(2, 3, 64, 64), torch.tensor([[1.0] + [0] * 19, [0, 1.0] + [0] * 18]),
                         0, tiny_cfg, build_par(tiny_cfg), optimizer, scheduler, scaler, dynamic=dynamic)
    assert torch.isfinite(step["loss"]) and step["loss"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.head.parameters())          # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters()))


def test_gradient_scaler_only_for_fp16_on_cuda():
    assert not grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    """The demo's config: the tiny CLIP pretrained on synthetic scenes (text enrichment off: no bank to build)."""
    root = tmp_path_factory.mktemp("precision_demo")
    return load_config("configs/demo.yaml", ["tse.enabled=false", f"tse.cache_dir={root}", "device=cpu"])


def scenes(count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised 1×3×H×W image, 1×5 multi-hot label) of freshly drawn synthetic scenes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        scene = render_scene(rng, 160, 192)
        image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float()
        classes = torch.zeros(1, 5)
        classes[0, [c - 1 for c in scene.labels]] = 1
        out.append(((image - IMAGENET_MEAN) / IMAGENET_STD, classes))
    return out


@pytest.mark.parametrize("precision", HALF)
def test_training_free_labels_agree_with_fp32(demo_cfg, precision):
    """Labels of synthetic scenes through the whole training-free path (SVC CAMs, attention affinity, PAR)
    with the demo's pretrained tiny CLIP in half precision against fp32: equal on >= 99.5 % of the pixels."""
    cfg, par = demo_cfg, build_par(demo_cfg)
    models = {p: model_in(cfg, p) for p in ("fp32", precision)}
    agree = total = 0
    for image, classes in scenes(8, seed=11):
        size = tuple(image.shape[-2:])
        labels = {p: predict_image(m, image, classes, size, mode="training_free", input_size=cfg.cam.input_size,
                                   box_threshold=cfg.cam.box_threshold, affinity_layers=cfg.cam.affinity_layers,
                                   par=par).label for p, m in models.items()}
        agree += int((labels["fp32"] == labels[precision]).sum())
        total += labels["fp32"].numel()
    assert agree / total >= LABEL_AGREEMENT, agree / total


def test_precision_is_checked_and_the_old_key_refused(tmp_path):
    assert load_config("configs/voc.yaml").precision == "fp32"
    assert load_config("configs/voc.yaml", ["precision=bf16"]).precision == "bf16"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"_base_": "configs/voc.yaml", "train": {"amp": True}}))
    with pytest.raises(ConfigError, match=r"^config key 'train.amp' in .*old.yaml is no longer read: .*precision") as info:
        load_config(old)
    assert "\n" not in str(info.value)


def test_a_saved_config_with_the_old_key_still_loads():
    """Checkpoints written before `precision` hold train.amp in their config: dropped there, not refused."""
    from excel.config import load_config_text

    cfg = load_config_text("train:\n  amp: false\n  max_iters: 7\n", "checkpoint old.pth")
    assert cfg.train.max_iters == 7 and cfg.precision == "fp32" and "amp" not in cfg.train


def test_tf32_is_enabled_on_cuda_only(monkeypatch):
    from excel.utils.precision import enable_tf32

    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda mode: calls.append(mode))
    enable_tf32(torch.device("cpu"))
    assert calls == []
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    enable_tf32(torch.device("cuda", 0))
    assert calls == ["high"] and torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("precision", HALF)
def test_patch_embedding_and_svc_stream_stay_fp32_under_autocast(tiny_cfg, precision):
    """Their rounding would grow through every later layer (docs/precision.md): under autocast they give
    exactly what they give in fp32."""
    encoder = model_in(tiny_cfg, "fp32").encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    calib = torch.rand(2, 17, 17).softmax(-1)
    values = torch.randn(2, encoder.num_heads, 17, encoder.width // encoder.num_heads)
    out_proj = encoder.visual.transformer.resblocks[-1].attn.out_proj
    tokens, grid = encoder.embed(images)
    update = encoder.calibrated_update(calib, values, out_proj)
    with autocast(torch.device("cpu"), precision):
        half_tokens, half_grid = encoder.embed(images)
        half_update = encoder.calibrated_update(calib, values, out_proj)
    assert half_grid == grid and half_tokens.dtype == half_update.dtype == torch.float32
    assert torch.equal(half_tokens, tokens) and torch.equal(half_update, update)


@pytest.mark.parametrize("precision", HALF)
def test_backbone_weights_stored_in_half_give_the_autocast_numbers(tiny_cfg, precision):
    """In bf16/fp16 the model holds the blocks' q/k/v projections and MLPs in half (autocast would cast them at
    every call); the weights of the fp32 steps stay fp32, and every output equals that of a model whose
    backbone is all fp32 running under the same autocast."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    stored = model_in(tiny_cfg, precision).eval()
    plain = model_in(tiny_cfg, "fp32").eval()
    plain.precision = precision
    visual = stored.encoder.visual
    for block in visual.transformer.resblocks:
        assert {block.attn.in_proj_weight.dtype, block.attn.in_proj_bias.dtype, block.mlp.c_fc.weight.dtype,
                block.mlp.c_fc.bias.dtype, block.mlp.c_proj.weight.dtype, block.mlp.c_proj.bias.dtype} == {dtype}
        assert block.attn.out_proj.weight.dtype == block.ln_1.weight.dtype == block.ln_2.weight.dtype == torch.float32
    assert visual.conv1.weight.dtype == visual.ln_post.weight.dtype == visual.proj.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in stored.head.parameters())
    images = torch.randn(2, 3, 64, 64)
    a, b = stored(images), plain(images)
    for name in ("tokens", "attn_maps", "layer_outputs", "calibrated", "lvc_values"):
        assert torch.equal(getattr(a.dense, name), getattr(b.dense, name)), name
    assert torch.equal(a.logits, b.logits) and torch.equal(a.affinity, b.affinity)
    assert torch.equal(stored.dynamic_cams(a.dense, a.features), plain.dynamic_cams(b.dense, b.features))
