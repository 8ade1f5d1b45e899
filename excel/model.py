"""ExCEL: frozen CLIP (SVC/LVC) + text matrix (TSE) → CAMs, and the learnable adapter/decoder head."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from excel.backbone import DenseCLIPEncoder, DenseOutput
from excel.cam import surgery_cams
from excel.clip_loader import clip_tokenizer, load_clip, register_model_config
from excel.config import as_list
from excel.head import ExCELHead
from excel.lvc import lvc_shift
from excel.descriptions import load_descriptions
from excel.text_enrichment import (build_bank, class_embeddings, load_or_build_bank, save_bank, shared_cluster_sets,
                                   text_matrix)


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
    """The full model. Only `head` has trainable parameters; the text matrix is a fixed buffer."""

    def __init__(self, encoder: DenseCLIPEncoder, text: torch.Tensor, num_classes: int, head: ExCELHead,
                 lvc_mean_weight: float = 1.0, lvc_scale: float = 3.0):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes
        self.lvc_mean_weight = lvc_mean_weight
        self.lvc_scale = lvc_scale
        self.register_buffer("text", text, persistent=False)

    def forward(self, images: torch.Tensor) -> ExCELOutput:
        """B×3×H×W normalised images → :class:`ExCELOutput`."""
        dense = self.encoder(images)
        features, logits, affinity = self.head(dense.layer_outputs, dense.grid)
        return ExCELOutput(dense, features, logits, affinity)

    def static_cams(self, dense: DenseOutput) -> torch.Tensor:
        """Training-free CAMs (SPEC §4): B×C×h×w in [0, 1]."""
        return surgery_cams(dense.tokens, self.text, self.num_classes, dense.grid)

    def dynamic_cams(self, dense: DenseOutput, features: torch.Tensor) -> torch.Tensor:
        """CAMs with LVC (SPEC §7) from the cached SVC stream and adapter features F: B×C×h×w."""
        shift = lvc_shift(features.detach(), self.lvc_mean_weight, self.lvc_scale)
        tokens = self.encoder.lvc_tokens(dense, shift)
        return surgery_cams(tokens, self.text, self.num_classes, dense.grid)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits B×(C+1)×h×w for B×3×H×W normalised images."""
        dense = self.encoder(images, calibrate=False)
        return self.head(dense.layer_outputs, dense.grid)[1]


def clip_model_name(cfg: DictConfig) -> str:
    """The open_clip model name: the stem of clip.model_config when one is given, else clip.model."""
    return Path(cfg.clip.model_config).stem if cfg.clip.model_config else cfg.clip.model


def bank_cache_path(cfg: DictConfig) -> Path:
    """Where a run caches the knowledge-base bank it builds (when tse.bank is not given)."""
    return Path(cfg.tse.cache_dir) / f"{cfg.dataset.name}_{clip_model_name(cfg)}_K{cfg.tse.num_clusters}_bank.pt"


def load_clip_from_config(cfg: DictConfig, device: torch.device | str = "cpu") -> nn.Module:
    if cfg.clip.model_config:
        register_model_config(cfg.clip.model_config)
    return load_clip(clip_model_name(cfg), cfg.clip.pretrained, cfg.clip.quick_gelu, device=device)


def build_knowledge_base(cfg: DictConfig, out: str | None = None) -> Path:
    """Build the bank from tse.descriptions with the configured CLIP and save it (tools/build_knowledge_base.py)."""
    path = Path(out or cfg.tse.bank or bank_cache_path(cfg))
    clip_model = load_clip_from_config(cfg)
    tokenizer = clip_tokenizer(clip_model_name(cfg))
    descriptions = load_descriptions(cfg.tse.descriptions, as_list(cfg.dataset.categories))
    bank = build_bank(clip_model, tokenizer, descriptions, cfg.tse.num_clusters, cfg.tse.kmeans_seed)
    save_bank(bank, path)
    print(f"wrote {path}: {bank['centers'].shape[0]} attribute centres of dimension {bank['embed_dim']} "
          f"from {sum(map(len, descriptions.values()))} descriptions of {len(descriptions)} classes")
    for names in shared_cluster_sets(bank):
        print(f"warning: identical attribute-cluster sets for {', '.join(names)}; consider a larger tse.num_clusters")
    return path


def build_text_matrix(cfg: DictConfig, clip_model: nn.Module) -> torch.Tensor:
    """[enriched foreground; background] text embeddings T×D from the config (SPEC §3)."""
    model_name = clip_model_name(cfg)
    tokenizer = clip_tokenizer(model_name)
    templates = as_list(cfg.clip.templates)
    foreground = class_embeddings(clip_model, tokenizer, as_list(cfg.dataset.class_names), templates)
    background_names = as_list(cfg.dataset.background_names)
    background = (class_embeddings(clip_model, tokenizer, background_names, templates) if background_names
                  else foreground.new_zeros(0, foreground.shape[1]))
    centers = None
    if cfg.tse.enabled:
        bank = load_or_build_bank(clip_model, tokenizer, bank_path=cfg.tse.bank, cache_path=bank_cache_path(cfg),
                                  descriptions_path=cfg.tse.descriptions, class_keys=as_list(cfg.dataset.categories),
                                  num_clusters=cfg.tse.num_clusters, seed=cfg.tse.kmeans_seed)
        centers = bank["centers"]
    return text_matrix(foreground, background, centers, cfg.tse.keep_ratio)


def build_model(cfg: DictConfig, device: torch.device | str = "cpu") -> ExCEL:
    """ExCEL from a config: loads CLIP, builds the text matrix, keeps only the image tower."""
    clip_model = load_clip_from_config(cfg, device)
    text = build_text_matrix(cfg, clip_model)
    encoder = DenseCLIPEncoder(clip_model.visual, cfg.svc.layers, cfg.svc.enabled, cfg.svc.published_layer_records)
    h = cfg.head
    head = ExCELHead(encoder.num_layers, clip_model.visual.conv1.out_channels, cfg.dataset.num_classes,
                     adapter_hidden=h.adapter_hidden, adapter_dim=h.adapter_dim, dropout=h.dropout,
                     decoder_layers=h.decoder_layers, decoder_heads=h.decoder_heads,
                     decoder_mlp_ratio=h.decoder_mlp_ratio, affinity_scale=h.affinity_scale)
    return ExCEL(encoder, text, cfg.dataset.num_classes, head, cfg.lvc.mean_weight, cfg.lvc.scale).to(device)
