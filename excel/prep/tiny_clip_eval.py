"""How well a pretrained tiny CLIP knows the scenes: zero-shot accuracy on single-object scenes and
patch-level localisation on multi-object scenes, all drawn from seeds its pretraining never uses."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from excel.classes import IGNORE_INDEX
from excel.prep.synthetic import BACKGROUND_KINDS, CLASS_NAMES, Scene, render_scene
from excel.prep.tiny_clip_data import ZERO_SHOT_TEMPLATES, normalise
from excel.prep.tiny_clip_encode import encode_image_tokens, encode_prompts, presence_prompts


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, tokenizer, scenes: list[Scene], template: str) -> float:
    """Top-1 accuracy of CLS-embedding classification of single-object scenes with one template."""
    texts = encode_prompts(model, tokenizer, [template.format(name) for name in CLASS_NAMES])
    correct = 0
    for start in range(0, len(scenes), 64):
        chunk = scenes[start:start + 64]
        cls_embedding, _, _ = encode_image_tokens(model, normalise(np.stack([s.image for s in chunk])))
        predicted = (F.normalize(cls_embedding, dim=-1) @ texts.T).argmax(1) + 1
        truth = torch.tensor([s.objects[0].class_index for s in chunk])
        correct += int((predicted == truth).sum())
    return correct / len(scenes)


def _confusion(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    valid = truth != IGNORE_INDEX
    index = truth[valid].astype(np.int64) * num_classes + prediction[valid]
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _scores(confusion: np.ndarray) -> dict[str, float]:
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = confusion.sum(1) > 0
    return {"pixel_accuracy": float(true_positive.sum() / confusion.sum()),
            "miou": float(np.mean(true_positive[present] / union[present]))}


@torch.no_grad()
def patch_similarities(model: nn.Module, tokenizer, scenes: list[Scene],
                       layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cosine similarity of every patch embedding with the presence prompts, B×(5+kinds)×h×w, for the
    final tokens and (with `layer`) for layer `layer`'s output tokens (else None), from one forward."""
    prompts = encode_prompts(model, tokenizer, presence_prompts())
    size = scenes[0].image.shape[0]
    grid = size // model.visual.patch_size[0]

    def as_maps(patches: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(patches, dim=-1) @ prompts.T
        return similarity.transpose(1, 2).reshape(len(patches), -1, grid, grid)

    final_maps, tapped_maps = [], []
    for start in range(0, len(scenes), 64):
        chunk = scenes[start:start + 64]
        _, final, tapped = encode_image_tokens(model, normalise(np.stack([s.image for s in chunk])), layer)
        final_maps.append(as_maps(final))
        if tapped is not None:
            tapped_maps.append(as_maps(tapped))
    return torch.cat(final_maps), (torch.cat(tapped_maps) if tapped_maps else None)


def localisation_scores(similarity: torch.Tensor, scenes: list[Scene]) -> dict[str, dict[str, float]]:
    """Pixel accuracy and mIoU (background + 5 classes) of patch-level labels vs the masks, from the
    patch–prompt similarities B×(5+kinds)×h×w of :func:`patch_similarities`.

    * ``background_prompts``: argmax over the 5 class prompts and the background prompts
      (a background prompt winning means background);
    * ``image_labels``: the same, restricted to the classes present in the image (as in WSSS,
      where image-level labels are known);
    * ``threshold``: argmax over the 5 classes, background where the best similarity is below a
      threshold; the best threshold on these same images is reported (an optimistic figure).
    """
    size = scenes[0].image.shape[0]
    similarity = F.interpolate(similarity, size=(size, size), mode="nearest")
    truth = np.stack([s.mask for s in scenes])
    classes = len(CLASS_NAMES)
    present = torch.zeros(len(scenes), classes + len(BACKGROUND_KINDS), dtype=torch.bool)
    present[:, classes:] = True
    for i, scene in enumerate(scenes):
        present[i, [c - 1 for c in scene.labels]] = True

    def as_labels(best: torch.Tensor) -> np.ndarray:
        return torch.where(best < classes, best + 1, torch.zeros_like(best)).numpy()

    results = {
        "background_prompts": _scores(_confusion(as_labels(similarity.argmax(1)), truth, classes + 1)),
        "image_labels": _scores(_confusion(
            as_labels(similarity.masked_fill(~present[:, :, None, None], -2).argmax(1)), truth, classes + 1)),
    }
    class_best, class_index = similarity[:, :classes].max(1)
    best = None
    for threshold in np.linspace(-0.2, 0.8, 21):
        labels = torch.where(class_best >= threshold, class_index + 1, torch.zeros_like(class_index))
        scores = _scores(_confusion(labels.numpy(), truth, classes + 1))
        if best is None or scores["miou"] > best["miou"]:
            best = {**scores, "threshold": float(threshold)}
    results["threshold"] = best
    return results


def evaluate(model: nn.Module, tokenizer, image_size: int, seed: int, num_single: int,
             num_multi: int, ground_layer: int | None = None) -> dict:
    """Zero-shot accuracy on single-object scenes and localisation on multi-object scenes (final
    tokens, and the grounded layer's tokens if any), all drawn from seeds the training never uses."""
    single_rng = np.random.default_rng([seed, 1])
    multi_rng = np.random.default_rng([seed, 2])
    singles = [render_scene(single_rng, image_size, image_size, max_objects=1) for _ in range(num_single)]
    multis = [render_scene(multi_rng, image_size, image_size) for _ in range(num_multi)]
    final, tapped = patch_similarities(model, tokenizer, multis, ground_layer)
    return {
        "zero_shot": {t: zero_shot_accuracy(model, tokenizer, singles, t) for t in ZERO_SHOT_TEMPLATES},
        "localisation": localisation_scores(final, multis),
        **({f"localisation_layer_{ground_layer}": localisation_scores(tapped, multis)} if tapped is not None else {}),
    }
