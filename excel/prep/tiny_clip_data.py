"""Batches for the tiny-CLIP pretraining (excel/prep/tiny_clip.py): scenes drawn on the fly with one
caption each, their targets (caption content, presence, per-patch class shares) and the curriculum."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from excel.data.transforms import normalization_constants
from excel.prep.synthetic import BACKGROUND_KINDS, CLASS_NAMES, COLOURS, Scene, render_scene
from excel.prep.synthetic_captions import Caption, sample_caption

ZERO_SHOT_TEMPLATES = ("a clean origami {}.", "a photo of a {}.")
PRESENCE_TEMPLATE = "a photo of a {}."
BACKGROUND_TEMPLATE = "a photo of {}."
COLOUR_INDEX = {name: i for i, name in enumerate(COLOURS)}


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """Images B×3×S×S (normalised), caption tokens B×L, and what images and captions assert."""

    images: torch.Tensor
    tokens: torch.Tensor
    image_classes: torch.Tensor      # B×5 object counts per class
    image_colours: torch.Tensor      # B×(5·colours) object counts per (class, colour)
    image_background: torch.Tensor   # B×kinds one-hot
    caption_classes: torch.Tensor    # B×5 counts named by the caption
    caption_colours: torch.Tensor    # B×(5·colours) counts named by the caption (0 if no colours)
    caption_has_colour: torch.Tensor  # B bool
    caption_complete: torch.Tensor   # B bool
    caption_background: torch.Tensor  # B×kinds one-hot, all 0 if no background named
    caption_content: torch.Tensor    # B×(5 + colours + kinds) multi-hot of what the caption names
    patch_shares: torch.Tensor       # B×n×(5 + kinds) share of each patch's labelled pixels per class /
                                     # background kind (rows of all-ignore patches are 0)


def normalise(images: np.ndarray) -> torch.Tensor:
    """B×H×W×3 uint8 RGB → B×3×H×W float32 with the ImageNet statistics (0–255 scale)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean, std = normalization_constants("imagenet")
    return (x - mean) / std


def _counts(classes: list[int], colours: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    by_class = np.bincount(np.asarray(classes) - 1, minlength=len(CLASS_NAMES))
    by_colour = np.zeros(len(CLASS_NAMES) * len(COLOURS), np.int64)
    if colours is not None:
        np.add.at(by_colour, [(c - 1) * len(COLOURS) + COLOUR_INDEX[k] for c, k in zip(classes, colours)], 1)
    return by_class, by_colour


def _background_one_hot(kind: str | None) -> np.ndarray:
    return np.asarray([kind == k for k in BACKGROUND_KINDS], np.float32)


def captions_content(captions: list[Caption]) -> torch.Tensor:
    """B×(5 + colours + kinds) multi-hot: the classes, colours and background kind each caption names."""
    content = torch.zeros(len(captions), len(CLASS_NAMES) + len(COLOURS) + len(BACKGROUND_KINDS))
    for row, cap in zip(content, captions):
        row[[c - 1 for c in cap.classes]] = 1
        row[[len(CLASS_NAMES) + COLOUR_INDEX[k] for k in cap.colours or ()]] = 1
        row[len(CLASS_NAMES) + len(COLOURS):] = torch.from_numpy(_background_one_hot(cap.background))
    return content


def patch_shares(scene: Scene, patch: int = 16) -> np.ndarray:
    """n×(5 + kinds) float32: for every patch (row-major), the share of its labelled pixels that belong
    to each class and to the background (counted under the scene's background kind); ignore-band
    pixels are left out, so a row sums to 1, or to 0 where every pixel is ignored."""
    height, width = scene.mask.shape
    blocks = scene.mask.reshape(height // patch, patch, width // patch, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(-1, patch * patch).astype(np.int64)
    counts = np.stack([(blocks == c).sum(1) for c in range(len(CLASS_NAMES) + 1)], axis=1).astype(np.float32)
    labelled = counts.sum(1, keepdims=True)
    shares = np.divide(counts, labelled, out=np.zeros_like(counts), where=labelled > 0)
    background = shares[:, :1] * _background_one_hot(scene.background)[None]
    return np.concatenate([shares[:, 1:], background], axis=1)


def make_batch(scenes: list[Scene], captions: list[Caption], tokenizer) -> Batch:
    """Tensors of a batch of scenes and their captions."""
    image_counts = [_counts([o.class_index for o in s.objects], [o.colour for o in s.objects]) for s in scenes]
    caption_counts = [_counts(list(c.classes), list(c.colours) if c.colours else None) for c in captions]
    return Batch(
        images=normalise(np.stack([s.image for s in scenes])),
        tokens=tokenizer([c.text for c in captions]),
        image_classes=torch.from_numpy(np.stack([c for c, _ in image_counts])),
        image_colours=torch.from_numpy(np.stack([q for _, q in image_counts])),
        image_background=torch.from_numpy(np.stack([_background_one_hot(s.background) for s in scenes])),
        caption_classes=torch.from_numpy(np.stack([c for c, _ in caption_counts])),
        caption_colours=torch.from_numpy(np.stack([q for _, q in caption_counts])),
        caption_has_colour=torch.tensor([c.colours is not None for c in captions]),
        caption_complete=torch.tensor([c.complete for c in captions]),
        caption_background=torch.from_numpy(np.stack([_background_one_hot(c.background) for c in captions])),
        caption_content=captions_content(captions),
        patch_shares=torch.from_numpy(np.stack([patch_shares(s) for s in scenes])),
    )


EASY_SCENE = {"colours": ("black",), "texture_contrast": 0.0}


@dataclass(frozen=True)
class Curriculum:
    """What step i of `steps` trains on: the image size (progressive resizing, small first) and the
    share of easy scenes (black objects on plain backgrounds), falling linearly from 1 to 0 over
    the first `easy_fraction` of the steps."""

    steps: int
    final_size: int
    sizes: tuple[int, ...] = (96, 128)
    size_fractions: tuple[float, ...] = (0.6, 0.2)
    easy_fraction: float = 0.4

    def image_size(self, step: int) -> int:
        boundary = 0.0
        for size, fraction in zip(self.sizes, self.size_fractions):
            boundary += fraction
            if step < boundary * self.steps:
                return min(size, self.final_size)
        return self.final_size

    def easy_share(self, step: int) -> float:
        return max(0.0, 1.0 - step / max(self.easy_fraction * self.steps, 1.0))


def draw_batch(rng: np.random.Generator, batch_size: int, image_size: int, tokenizer,
               easy_share: float = 0.0) -> Batch:
    """A batch of freshly drawn scenes, each with one sampled caption; a share of them easy."""
    scenes = [render_scene(rng, image_size, image_size, **(EASY_SCENE if rng.random() < easy_share else {}))
              for _ in range(batch_size)]
    return make_batch(scenes, [sample_caption(s, rng) for s in scenes], tokenizer)


class SceneBatches(torch.utils.data.IterableDataset):
    """The batches of a curriculum from one random stream (deterministic by seed with ≤ 1 worker)."""

    def __init__(self, seed: int, batch_size: int, curriculum: Curriculum, tokenizer) -> None:
        super().__init__()
        self.seed, self.batch_size, self.curriculum, self.tokenizer = seed, batch_size, curriculum, tokenizer

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        for step in range(self.curriculum.steps):
            yield draw_batch(rng, self.batch_size, self.curriculum.image_size(step), self.tokenizer,
                             self.curriculum.easy_share(step))


def batch_stream(seed: int, batch_size: int, curriculum: Curriculum, tokenizer, workers: int) -> Iterator[Batch]:
    """Batches drawn in the main process (workers=0) or in one background process (workers=1)."""
    if workers not in (0, 1):
        raise ValueError(f"--workers {workers}: use 0 or 1 (one random stream keeps runs reproducible)")
    dataset = SceneBatches(seed, batch_size, curriculum, tokenizer)
    if workers == 0:
        return iter(dataset)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=2))


def caption_matches(batch: Batch) -> torch.Tensor:
    """B×B bool: entry [i, j] says caption j is true of image i.

    A complete caption must name exactly the image's objects, a single-object caption one of them;
    colours and background are checked where the caption names them.
    """
    def agree(image_counts: torch.Tensor, caption_counts: torch.Tensor) -> torch.Tensor:
        img, cap = image_counts[:, None], caption_counts[None]
        exact = (img == cap).all(-1)
        at_least = (img >= cap).all(-1)
        return torch.where(batch.caption_complete[None], exact, at_least)

    classes_ok = agree(batch.image_classes, batch.caption_classes)
    colours_ok = agree(batch.image_colours, batch.caption_colours) | ~batch.caption_has_colour[None]
    named = batch.caption_background.sum(-1)[None]
    background_ok = (batch.image_background @ batch.caption_background.T) == named
    return classes_ok & colours_ok & background_ok


