"""Pretrain a tiny CLIP (configs/tiny_clip.json) on synthetic shape scenes, on a CPU.

Images come from excel.prep.synthetic, drawn on the fly; every image gets one random caption (all of its
objects, with or without colours, or a single object; sometimes a filler adjective, the background
kind or a class attribute). Training runs in two stages:

1. text warm-up: the text tower alone learns to predict, linearly from a caption's embedding, which
   classes, colours and background kind the caption names. Contrastive training from scratch stalls
   while all captions embed to nearly the same vector; this cheap stage separates them first.
2. joint training with four losses:
   * image–caption contrastive loss on the CLS embedding, every caption in the batch that is true
     of an image counting as a positive (captions repeat a lot with five classes);
   * presence: for every class prompt "a photo of a {class}." and background prompt
     "a photo of {kind}.", the CLS embedding's scaled similarity is a logit for "the image contains
     it" (binary cross-entropy with the objects and background drawn);
   * patch grounding at layer `--ground-layer` (default 7, the input of the five SVC layers of the
     12-layer tower): that layer's patch tokens, through ln_post and the projection, give a softmax
     over the same prompts whose target is the share of the patch's pixels showing each class or
     the background (its kind), weighted by `--ground-weight` (default 4; see assets/README.md) in
     the sum of the losses. This is region–phrase supervision from the renderer's masks, as
     grounded image–text pretraining uses; at this scale and budget, contrastive learning with
     caption-level signals alone (tried: log-mean-exp pooled patch presence on the final tokens)
     gives a tiny CLIP whose patch tokens do not localise. The last five layers see only the CLS
     losses, so CLIP's ordinary final patch tokens stay weakly localised, as in the real model;
   * the text-content loss of stage 1, kept on.
   A curriculum eases the start: a share of easy scenes (black objects on plain backgrounds) falling
   from 1 to 0 over the first 40% of the steps, and progressive resizing (96 px for 60% of the
   steps, 128 px for 20%, then the final size; the positional embedding is resized as the
   segmentation pipeline does).

Images are normalised with the ImageNet statistics (the pipeline's default, dataset.normalize=imagenet).
The weights are stored as a plain float16 state dict (excel.modeling.clip_loader reads them back as float32);
then zero-shot accuracy and a patch-level localisation check on held-out scenes are printed as JSON.

Example::

    python tools/pretrain_tiny_clip.py --out assets/tiny_clip_synthetic.pt
"""
from __future__ import annotations

import os

# On a shared CPU, OpenMP threads that busy-wait for each other burn several times the useful work;
# let them sleep instead (effective when this module is the first to load torch: its commands).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from excel.cli import run_command
from excel.io import atomic_write
from excel.modeling.clip_loader import register_model_config
from excel.prep.synthetic import BACKGROUND_KINDS, CLASS_NAMES, COLOURS, render_scene
from excel.prep.synthetic_captions import sample_caption
from excel.prep.tiny_clip_data import Batch, Curriculum, batch_stream, caption_matches, captions_content
from excel.prep.tiny_clip_encode import encode_image_tokens, presence_prompts
from excel.prep.tiny_clip_eval import evaluate
from excel.resources import locate

DEFAULT_CONFIG = "configs/tiny_clip.json"             # found in the package when not in the current folder
DEFAULT_OUT = "assets/tiny_clip_synthetic.pt"


# ----------------------------------------------------------------------------------------------
# Training heads
# ----------------------------------------------------------------------------------------------

class PresenceHead(nn.Module):
    """Scale and offset turning embedding–prompt similarities into presence logits."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def forward(self, embeddings: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """embeddings B×D (normalised), prompts K×D (normalised) → presence logits B×K."""
        return self.scale * embeddings @ prompts.T + self.bias


class TrainingHeads(nn.Module):
    """Parameters used only while pretraining (not part of the saved CLIP)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.cls_presence = PresenceHead()
        self.text_content = nn.Linear(embed_dim, len(CLASS_NAMES) + len(COLOURS) + len(BACKGROUND_KINDS))
        self.grounding_scale = nn.Parameter(torch.tensor(10.0))


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

def multi_positive_contrastive(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every positive pair shares the target mass.

    logits B×B (image i, caption j), positives B×B bool with a true diagonal.
    """
    targets = positives.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return 0.5 * (image_to_text + text_to_image)


def presence_targets(batch: Batch) -> torch.Tensor:
    """B×(5 + kinds) float: which classes and which background kind each image contains."""
    return torch.cat([(batch.image_classes > 0).float(), batch.image_background], dim=1)


def patch_grounding(tokens: torch.Tensor, prompts: torch.Tensor, shares: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy between each patch's softmax over the presence prompts and the share of its
    pixels showing each class or background kind. tokens B×n×D (normalised), prompts K×D
    (normalised), shares B×n×K; patches without labelled pixels do not count."""
    log_probabilities = (scale * tokens @ prompts.T).log_softmax(-1)
    labelled = shares.sum(-1)
    return -(shares * log_probabilities).sum(-1).sum() / labelled.sum().clamp(min=1)


def training_losses(model: nn.Module, heads: TrainingHeads, batch: Batch, prompt_tokens: torch.Tensor,
                    ground_layer: int | None = None, ground_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The pretraining losses of a batch and their sum (``total``).

    contrastive: CLS embedding vs captions; cls_presence: the CLS embedding's similarity with each
    presence prompt predicts whether the image contains it; text_content: the caption embedding
    predicts, linearly, which classes, colours and background it names; grounding (with `ground_layer`,
    weighted by `ground_weight` in the total): the patch embeddings of that layer's output match the
    prompts of what the patch shows.
    """
    cls_embedding, _, tapped = encode_image_tokens(model, batch.images, ground_layer)
    image = F.normalize(cls_embedding, dim=-1)
    text_embedding = model.encode_text(batch.tokens)
    text = F.normalize(text_embedding, dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.T
    prompts = F.normalize(model.encode_text(prompt_tokens), dim=-1)
    targets = presence_targets(batch)
    losses = {
        "contrastive": multi_positive_contrastive(logits, caption_matches(batch)),
        "cls_presence": F.binary_cross_entropy_with_logits(heads.cls_presence(image, prompts), targets),
        "text_content": F.binary_cross_entropy_with_logits(heads.text_content(text_embedding),
                                                           batch.caption_content),
    }
    if tapped is not None:
        losses["grounding"] = patch_grounding(F.normalize(tapped, dim=-1), prompts, batch.patch_shares,
                                              heads.grounding_scale)
    losses["total"] = sum(value * (ground_weight if name == "grounding" else 1.0) for name, value in losses.items())
    return losses


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def parameter_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only (not on norms, biases, embeddings or scales)."""
    no_decay_names = ("positional_embedding", "class_embedding", "token_embedding", "logit_scale")
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            if param.requires_grad:
                plain = param.ndim < 2 or any(n in name for n in no_decay_names)
                (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def optimise(parameters: list[torch.Tensor], optimiser: torch.optim.Optimizer, loss: torch.Tensor,
             lr: float) -> None:
    """One AdamW step at the given learning rate with gradient-norm clipping at 1."""
    for group in optimiser.param_groups:
        group["lr"] = lr
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimiser.step()


def warm_up_text(model: nn.Module, heads: TrainingHeads, tokenizer, steps: int, batch_size: int,
                 seed: int, lr: float) -> float:
    """Text tower alone: its caption embedding must predict (linearly) what the caption names.

    Contrastive training from scratch stalls while every caption embeds to nearly the same vector;
    this cheap text-only stage separates captions first. Returns the mean loss of the last 20 steps.
    """
    rng = np.random.default_rng([seed, 3])
    scenes = [render_scene(rng, 64, 64) for _ in range(512)]
    text_parameters = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    modules = [model, heads.text_content]
    optimiser = torch.optim.AdamW(parameter_groups(modules, 0.0), lr=lr, betas=(0.9, 0.98))
    recent: list[float] = []
    for step in tqdm(range(steps), desc="text warm-up", dynamic_ncols=True):
        captions = [sample_caption(scenes[i], rng) for i in rng.integers(0, len(scenes), batch_size)]
        logits = heads.text_content(model.encode_text(tokenizer([c.text for c in captions])))
        loss = F.binary_cross_entropy_with_logits(logits, captions_content(captions))
        optimise(text_parameters + list(heads.text_content.parameters()), optimiser, loss,
                 learning_rate(step, steps, lr, min(10, steps)))
        recent = (recent + [loss.item()])[-20:]
    return float(np.mean(recent)) if recent else float("nan")


def train(model: nn.Module, tokenizer, steps: int, batch_size: int, image_size: int, seed: int,
          lr: float, weight_decay: float, warmup: int, text_steps: int = 150,
          workers: int = 1, ground_layer: int | None = None, ground_weight: float = 1.0) -> dict[str, float]:
    """Text warm-up, then joint training, in place; returns the mean losses of the last 20 steps."""
    heads = TrainingHeads(model.text_projection.shape[1])
    model.train()
    text_loss = warm_up_text(model, heads, tokenizer, text_steps, 256, seed, 2 * lr)
    curriculum = Curriculum(steps, image_size)
    batches = batch_stream(seed, batch_size, curriculum, tokenizer, workers)
    optimiser = torch.optim.AdamW(parameter_groups([model, heads], weight_decay), lr=lr, betas=(0.9, 0.98))
    parameters = list(model.parameters()) + list(heads.parameters())
    prompt_tokens = tokenizer(presence_prompts())
    recent: list[dict[str, float]] = []
    progress = tqdm(range(steps), desc="pretrain", dynamic_ncols=True)
    for step in progress:
        losses = training_losses(model, heads, next(batches), prompt_tokens, ground_layer, ground_weight)
        optimise(parameters, optimiser, losses["total"], learning_rate(step, steps, lr, warmup))
        recent = (recent + [{k: v.item() for k, v in losses.items()}])[-20:]
        if step % 10 == 0 or step == steps - 1:
            progress.write(f"step {step} (size {curriculum.image_size(step)}, easy {curriculum.easy_share(step):.2f}): "
                           + ", ".join(f"{k} {v:.3f}" for k, v in recent[-1].items()))
    model.eval()
    return {"text_warm_up": text_loss, **{k: float(np.mean([r[k] for r in recent])) for k in recent[0]}}


# ----------------------------------------------------------------------------------------------
# Saving and entry point
# ----------------------------------------------------------------------------------------------

def save_half_state_dict(model: nn.Module, path: Path) -> None:
    """Write the model's state dict with floating tensors stored as float16 (atomically)."""
    state = {k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"checkpoint file to write (float16 state dict; default {DEFAULT_OUT})")
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG),
                        help=f"open_clip model-config JSON (default {DEFAULT_CONFIG})")
    parser.add_argument("--steps", type=int, default=3600, help="joint training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=160,
                        help="training resolution; must equal vision_cfg.image_size of the config "
                             "that later loads the checkpoint (its positional embedding grid)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=30, help="learning-rate warm-up steps")
    parser.add_argument("--text-steps", type=int, default=150, help="text-only warm-up steps (256 captions each)")
    parser.add_argument("--ground-layer", type=int, default=7,
                        help="layer (1-based) whose patch tokens learn to match the prompts of what they show; "
                             "7 is the input of the 5 SVC layers of a 12-layer model; 0 turns it off")
    parser.add_argument("--ground-weight", type=float, default=4.0,
                        help="weight of the grounding loss in the sum of the losses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=1, choices=(0, 1),
                        help="draw batches in a background process (1) or in the main one (0)")
    parser.add_argument("--eval-single", type=int, default=500, help="held-out single-object scenes")
    parser.add_argument("--eval-multi", type=int, default=200, help="held-out multi-object scenes")
    parser.add_argument("--summary", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.image_size % 16:
        parser.error(f"--image-size {args.image_size} must be a multiple of the patch size 16")
    if args.steps < 1 or args.batch_size < 2:
        parser.error("--steps must be ≥ 1 and --batch-size ≥ 2")
    return args


def main(argv: list[str] | None = None) -> None:
    """The command line of ``excel-pretrain-tiny-clip`` and tools/pretrain_tiny_clip.py."""
    args = parse_args(argv)
    run_command(lambda: pretrain(args), lambda: args.out.parent)


def pretrain(args: argparse.Namespace) -> None:
    """Pretrain, save the weights to ``args.out``, print (and with ``args.summary`` write) the evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_name = register_model_config(locate(args.config))
    model = open_clip.create_model(model_name, pretrained=None, force_image_size=args.image_size)
    tokenizer = open_clip.get_tokenizer(model_name)
    num_layers = len(model.visual.transformer.resblocks)
    if not 0 <= args.ground_layer <= num_layers:
        raise SystemExit(f"error: --ground-layer {args.ground_layer}: {args.config} has {num_layers} vision layers; "
                         f"use 1..{num_layers}, or 0 to turn grounding off")
    started = time.time()
    losses = train(model, tokenizer, args.steps, args.batch_size, args.image_size, args.seed,
                   args.lr, args.weight_decay, args.warmup, args.text_steps, args.workers,
                   args.ground_layer or None, args.ground_weight)
    train_seconds = time.time() - started
    save_half_state_dict(model, args.out)
    results = {"train_seconds": round(train_seconds, 1), "final_losses": losses,
               **evaluate(model, tokenizer, args.image_size, args.seed + 1, args.eval_single, args.eval_multi,
                          args.ground_layer or None),
               "args": {k: str(v) for k, v in vars(args).items()},
               "checkpoint_bytes": args.out.stat().st_size}
    text = json.dumps(results, indent=2)
    print(text)
    if args.summary is not None:
        atomic_write(args.summary, lambda tmp: tmp.write_text(text + "\n"))
