"""The synthetic shapes dataset, its captions, and the committed tiny CLIP checkpoint."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from excel.classes import IGNORE_INDEX
from excel.io import read_image, read_mask
from excel.modeling.clip_loader import load_clip, register_model_config
from excel.prep import tiny_clip, tiny_clip_data, tiny_clip_encode
from excel.prep.synthetic import (
    BACKGROUND_KINDS,
    CLASS_NAMES,
    COLOURS,
    SceneObject,
    boundary_band,
    object_mask,
    polygon_mask,
    render_scene,
)
from excel.prep.synthetic_captions import caption, caption_pairs, sample_caption
from excel.prep.synthetic_dataset import dataset_scene, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "assets" / "tiny_clip_synthetic.pt"
CONFIG = REPO / "configs" / "tiny_clip.json"
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def named_classes(text: str) -> list[str]:
    """Class names a caption mentions, in order, repeats kept."""
    return [w for w in re.findall(r"[a-z]+", text) if w in CLASS_NAMES]


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

def test_polygon_mask_matches_point_in_polygon_reference():
    vertices = np.array([[3.0, 2.0], [17.0, 5.0], [9.0, 11.0], [12.0, 18.0], [2.0, 14.0]])
    ys, xs = np.mgrid[0:20, 0:20].astype(np.float32) + 0.5
    inside = polygon_mask(xs, ys, vertices)
    contour = vertices.astype(np.float32).reshape(-1, 1, 2)
    for y in range(20):
        for x in range(20):
            distance = cv2.pointPolygonTest(contour, (x + 0.5, y + 0.5), True)
            if abs(distance) > 1e-3:
                assert inside[y, x] == (distance > 0), (x, y)


def test_object_masks_have_expected_geometry():
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    disc = SceneObject(1, "red", (32.0, 32.0), 20.0, 0.0, 0.45)
    ring = SceneObject(5, "red", (32.0, 32.0), 20.0, 0.0, 0.5)
    square = SceneObject(2, "red", (32.0, 32.0), 20.0, 0.0, 0.45)
    assert abs(object_mask(disc, xs, ys).sum() - np.pi * 400) < 0.03 * np.pi * 400
    assert abs(object_mask(ring, xs, ys).sum() - np.pi * 300) < 0.05 * np.pi * 300
    assert not object_mask(ring, xs, ys)[32, 32] and object_mask(disc, xs, ys)[32, 32]
    half_side = 20.0 / np.sqrt(2)                  # angle 0: axis-aligned square inscribed in the radius
    reference = (np.abs(xs - 32) <= half_side) & (np.abs(ys - 32) <= half_side)
    assert (object_mask(square, xs, ys) != reference).sum() <= 4 * 2 * half_side * 0.1


def test_boundary_band_matches_neighbourhood_reference():
    rng = np.random.default_rng(3)
    label = np.zeros((12, 14), np.uint8)
    label[3:8, 2:9] = 1
    label[6:11, 7:13] = rng.integers(2, 4)
    band = boundary_band(label, 1)
    for y in range(12):
        for x in range(14):
            window = label[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            assert band[y, x] == (window.min() != window.max()), (x, y)


def test_render_scene_shapes_values_and_visibility():
    rng = np.random.default_rng(0)
    for _ in range(12):
        scene = render_scene(rng, 96, 128)
        assert scene.image.shape == (96, 128, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (96, 128) and scene.mask.dtype == np.uint8
        assert set(np.unique(scene.mask).tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE_INDEX}
        assert 1 <= len(scene.objects) <= 3 and scene.background in BACKGROUND_KINDS
        assert scene.labels == sorted({o.class_index for o in scene.objects})
        assert (scene.mask == IGNORE_INDEX).any()


def test_render_scene_is_deterministic_by_seed():
    a = render_scene(np.random.default_rng(7), 64, 64)
    b = render_scene(np.random.default_rng(7), 64, 64)
    c = render_scene(np.random.default_rng(8), 64, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.objects == b.objects
    assert not np.array_equal(a.image, c.image)


def test_render_scene_rejects_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        render_scene(np.random.default_rng(0), 16, 64)
    with pytest.raises(ValueError, match="max_objects"):
        render_scene(np.random.default_rng(0), 64, 64, max_objects=4)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

def test_caption_names_exactly_the_drawn_objects():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scene = render_scene(rng, 96, 96)
        text = caption(scene.objects)
        assert named_classes(text) == [o.class_name for o in scene.objects]
        assert sorted(CLASS_NAMES.index(n) + 1 for n in set(named_classes(text))) == scene.labels
        named_colours = [w for w in re.findall(r"[a-z]+", text) if w in COLOURS]
        assert named_colours == [o.colour for o in scene.objects]
        assert text.startswith("a photo of ") and text.endswith(".")


def test_caption_wording():
    objects = (SceneObject(1, "red", (0.0, 0.0), 10.0, 0.0, 0.45),
               SceneObject(4, "orange", (0.0, 0.0), 10.0, 0.0, 0.45))
    assert caption(objects) == "a photo of a red disc and an orange star."
    assert caption(objects[:1], with_colour=False) == "a photo of a disc."
    assert caption(objects[1:], template="a clean origami {}.", background="stripes") == \
        "a clean origami an orange star on stripes."
    with pytest.raises(ValueError):
        caption(())


def test_sampled_captions_are_true_of_their_scene():
    rng = np.random.default_rng(2)
    for _ in range(40):
        scene = render_scene(rng, 96, 96)
        cap = sample_caption(scene, rng)
        objects = Counter(o.class_index for o in scene.objects)
        named = Counter(CLASS_NAMES.index(n) + 1 for n in named_classes(cap.text))
        assert named == Counter(cap.classes)
        if cap.complete:
            assert named == objects
        else:
            assert len(cap.classes) == 1 and cap.classes[0] in objects
        if cap.colours is not None:
            pairs = Counter((o.class_index, o.colour) for o in scene.objects)
            assert all(pairs[p] >= n for p, n in Counter(zip(cap.classes, cap.colours)).items())
        assert cap.background in (None, scene.background)


def test_caption_pairs_are_deterministic():
    first = [next(caption_pairs(5, size=64)) for _ in range(2)]
    stream = caption_pairs(5, size=64)
    image, text = next(stream)
    assert image.shape == (64, 64, 3) and named_classes(text)
    assert np.array_equal(first[0][0], first[1][0]) and first[0][1] == first[1][1] == text


# ----------------------------------------------------------------------------------------------
# Dataset on disk
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, num_train=4, num_val=2, seed=11, min_size=64, max_size=96)
    return root


def test_dataset_layout_and_masks_match_labels(dataset_root):
    labels = json.loads((dataset_root / "splits" / "labels.json").read_text())
    for split, count in (("train", 4), ("val", 2)):
        ids = (dataset_root / "splits" / f"{split}.txt").read_text().split()
        assert ids == (dataset_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == count
        for image_id in ids:
            image = read_image(dataset_root / "JPEGImages" / f"{image_id}.jpg")
            mask = read_mask(dataset_root / "SegmentationClass" / f"{image_id}.png")
            aug = read_mask(dataset_root / "SegmentationClassAug" / f"{image_id}.png")
            assert np.array_equal(mask, aug)
            assert image.shape == mask.shape + (3,) and 64 <= mask.shape[0] <= 96 and 64 <= mask.shape[1] <= 96
            present = sorted(int(v) for v in np.unique(mask) if v not in (0, 255))
            assert present and labels[image_id] == present
            assert np.array_equal(mask, dataset_scene(11, split, int(image_id.split("_")[1]), 64, 96).mask)
    assert not list(dataset_root.rglob("*.tmp"))


def test_dataset_is_deterministic_by_seed(dataset_root, tmp_path):
    write_synthetic_dataset(tmp_path / "again", num_train=4, num_val=2, seed=11, min_size=64, max_size=96)
    write_synthetic_dataset(tmp_path / "other", num_train=4, num_val=2, seed=12, min_size=64, max_size=96)
    files = sorted(p.relative_to(dataset_root) for p in dataset_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert all((dataset_root / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    mask = Path("SegmentationClass") / "train_00000.png"
    assert (dataset_root / mask).read_bytes() != (tmp_path / "other" / mask).read_bytes()


def test_dataset_scene_rejects_bad_split_and_sizes():
    with pytest.raises(ValueError, match="split"):
        dataset_scene(0, "test", 0)
    with pytest.raises(ValueError, match="min_size"):
        dataset_scene(0, "train", 0, min_size=100, max_size=90)


# ----------------------------------------------------------------------------------------------
# Committed checkpoint
# ----------------------------------------------------------------------------------------------

def test_checkpoint_is_small_and_loads_strictly():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing; run tools/pretrain_tiny_clip.py"
    assert CHECKPOINT.stat().st_size <= 15_000_000          # issue limit: 15 MB
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    model = open_clip.create_model(register_model_config(CONFIG), pretrained=None)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    assert len(model.visual.transformer.resblocks) == 12
    assert model.visual.patch_size == (16, 16)


def test_checkpoint_classifies_held_out_shapes():
    model = load_clip("tiny_clip", str(CHECKPOINT), model_config=str(CONFIG))
    tokenizer = open_clip.get_tokenizer("tiny_clip")
    rng = np.random.default_rng([2024, 5])
    scenes = [render_scene(rng, 160, 160, max_objects=1) for _ in range(100)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        image = F.normalize(model.encode_image((images - IMAGENET_MEAN) / IMAGENET_STD), dim=-1)
        text = F.normalize(model.encode_text(tokenizer([f"a photo of a {n}." for n in CLASS_NAMES])), dim=-1)
    predicted = (image @ text.T).argmax(1) + 1
    truth = torch.tensor([s.objects[0].class_index for s in scenes])
    assert (predicted == truth).float().mean() >= 0.80         # 0.93 for the committed asset; chance is 0.2


def test_render_scene_colour_restriction():
    scene = render_scene(np.random.default_rng(4), 96, 96, colours=["black"], texture_contrast=0.0)
    assert {o.colour for o in scene.objects} == {"black"}
    with pytest.raises(ValueError, match="colours"):
        render_scene(np.random.default_rng(4), 96, 96, colours=["mauve"])


# ----------------------------------------------------------------------------------------------
# Pretraining tool
# ----------------------------------------------------------------------------------------------

def _caption_true_of(scene, cap) -> bool:
    """Plain reference: is the caption a true statement about the scene?"""
    objects = [(o.class_index, o.colour) for o in scene.objects]
    named = list(zip(cap.classes, cap.colours or [None] * len(cap.classes)))
    remaining = list(objects)
    for class_index, colour in named:
        match = next((o for o in remaining if o[0] == class_index and colour in (None, o[1])), None)
        if match is None:
            return False
        remaining.remove(match)
    if cap.complete and remaining:
        return False
    return cap.background in (None, scene.background)


def test_caption_matches_agree_with_reference():
    rng = np.random.default_rng(6)
    scenes = [render_scene(rng, 64, 64, max_objects=2, colours=["red", "blue"]) for _ in range(24)]
    captions = [sample_caption(s, rng) for s in scenes]
    batch = tiny_clip_data.make_batch(scenes, captions, open_clip.get_tokenizer("ViT-B-16"))
    matches = tiny_clip_data.caption_matches(batch)
    reference = torch.tensor([[_caption_true_of(s, c) for c in captions] for s in scenes])
    assert torch.equal(matches, reference) and matches.diagonal().all()
    assert matches.sum() > len(scenes)                         # some captions fit other images too


def test_multi_positive_contrastive_reduces_to_infonce():
    logits = torch.randn(5, 5)
    identity = torch.eye(5, dtype=torch.bool)
    expected = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    assert torch.allclose(tiny_clip.multi_positive_contrastive(logits, identity), expected, atol=1e-6)


def test_curriculum_schedule():
    curriculum = tiny_clip_data.Curriculum(steps=100, final_size=160)
    assert [curriculum.image_size(s) for s in (0, 59, 60, 79, 80, 99)] == [96, 96, 128, 128, 160, 160]
    assert curriculum.easy_share(0) == 1.0 and curriculum.easy_share(20) == 0.5 and curriculum.easy_share(60) == 0.0


def test_patch_shares_match_pixel_loop_reference():
    scene = render_scene(np.random.default_rng(8), 64, 96, ignore_band=2)
    shares = tiny_clip_data.patch_shares(scene)
    kind = BACKGROUND_KINDS.index(scene.background)
    assert shares.shape == (4 * 6, len(CLASS_NAMES) + len(BACKGROUND_KINDS))
    for row in range(4):
        for col in range(6):
            block = scene.mask[16 * row:16 * row + 16, 16 * col:16 * col + 16]
            labelled = block[block != IGNORE_INDEX]
            expected = np.zeros(shares.shape[1], np.float32)
            for value in labelled:
                expected[value - 1 if value else len(CLASS_NAMES) + kind] += 1 / labelled.size
            assert np.allclose(shares[row * 6 + col], expected, atol=1e-6)
    assert shares[:, len(CLASS_NAMES):].sum() > 0 and shares[:, :len(CLASS_NAMES)].sum() > 0


def test_patch_grounding_is_soft_cross_entropy_over_labelled_patches():
    tokens = F.normalize(torch.randn(2, 3, 4), dim=-1)
    prompts = F.normalize(torch.randn(5, 4), dim=-1)
    shares = torch.rand(2, 3, 5)
    shares = shares / shares.sum(-1, keepdim=True)
    shares[1, 2] = 0                                           # a patch of ignored pixels only
    scale = torch.tensor(7.0)
    terms = [-(shares[b, n] * F.log_softmax(scale * prompts @ tokens[b, n], dim=0)).sum()
             for b in range(2) for n in range(3) if not (b == 1 and n == 2)]
    assert torch.allclose(tiny_clip.patch_grounding(tokens, prompts, shares, scale), torch.stack(terms).mean(), atol=1e-6)


def test_tapped_layer_tokens_match_a_forward_cut_at_that_layer():
    torch.manual_seed(0)
    model = open_clip.create_model(register_model_config(CONFIG), pretrained=None).eval()
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        cls_embedding, patches, tapped = tiny_clip_encode.encode_image_tokens(model, images, tap_layer=7)
        assert torch.allclose(cls_embedding, model.encode_image(images), atol=1e-5)
        visual = model.visual
        x = visual.ln_pre(torch.cat([visual.class_embedding.expand(2, 1, -1),
                                     visual.conv1(images).flatten(2).transpose(1, 2)], 1) + visual.positional_embedding)
        for block in visual.transformer.resblocks[:7]:
            x = block(x)
        assert torch.allclose(tapped, visual.ln_post(x[:, 1:]) @ visual.proj, atol=1e-5)
        _, same, final = tiny_clip_encode.encode_image_tokens(model, images, tap_layer=12)
        assert torch.allclose(same, patches, atol=1e-6) and torch.allclose(final, patches, atol=1e-6)


def test_grounding_weight_scales_only_the_grounding_term_of_the_total():
    torch.manual_seed(0)
    model = open_clip.create_model(register_model_config(CONFIG), pretrained=None)
    tokenizer = open_clip.get_tokenizer("tiny_clip")
    heads = tiny_clip.TrainingHeads(model.text_projection.shape[1])
    batch = tiny_clip_data.draw_batch(np.random.default_rng(0), 4, 96, tokenizer)
    prompts = tokenizer(tiny_clip_encode.presence_prompts())
    with torch.no_grad():
        plain = tiny_clip.training_losses(model, heads, batch, prompts, ground_layer=7)
        weighted = tiny_clip.training_losses(model, heads, batch, prompts, ground_layer=7, ground_weight=4.0)
    parts = ["contrastive", "cls_presence", "text_content"]
    assert torch.allclose(plain["total"], sum(plain[k] for k in parts) + plain["grounding"], atol=1e-5)
    assert torch.allclose(weighted["total"], sum(plain[k] for k in parts) + 4.0 * plain["grounding"], atol=1e-5)
    assert plain["grounding"] > 0.1
