"""The config → object steps that training and evaluation share: CLIP, text matrix, model, PAR, datasets.

The math modules never see the config; they take tensors and plain arguments. This module reads the
config keys (see excel/config_schema.py) and builds the objects the pipeline runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from excel.config import ConfigError, as_list
from excel.data.dataset import SampleTransform, SegmentationDataset
from excel.data.transforms import TrainAugment
from excel.labels.par import PAR
from excel.modeling.backbone import DenseCLIPEncoder
from excel.modeling.clip_loader import clip_tokenizer, load_clip, register_model_config
from excel.modeling.head import ExCELHead
from excel.modeling.model import ExCEL
from excel.modeling.text_enrichment import (
    class_embeddings,
    load_or_build_bank,
    text_matrix,
)
from excel.utils.precision import autocast_dtype, enable_tf32


def clip_model_name(cfg: DictConfig) -> str:
    """The open_clip model name: the stem of clip.model_config when one is given, else clip.model."""
    return Path(cfg.clip.model_config).stem if cfg.clip.model_config else cfg.clip.model


def bank_cache_path(cfg: DictConfig) -> Path:
    """Where a run caches the knowledge-base bank it builds (when tse.bank is not given)."""
    return Path(cfg.tse.cache_dir) / f"{cfg.dataset.name}_{clip_model_name(cfg)}_K{cfg.tse.num_clusters}_bank.pt"


def build_clip(cfg: DictConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen open_clip model of clip.model / clip.model_config with clip.pretrained weights."""
    if cfg.clip.model_config:
        register_model_config(cfg.clip.model_config)
    return load_clip(clip_model_name(cfg), cfg.clip.pretrained, cfg.clip.quick_gelu, device=device)


def build_text_matrix(cfg: DictConfig, clip_model: nn.Module) -> torch.Tensor:
    """[enriched foreground; background] text embeddings T×D from the config (docs/method.md §3)."""
    tokenizer = clip_tokenizer(clip_model_name(cfg))
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


def build_head(cfg: DictConfig, num_layers: int, width: int) -> ExCELHead:
    """The learnable adapter + decoder head (docs/method.md §6) for a backbone of num_layers × width tokens."""
    spec = cfg.head
    return ExCELHead(num_layers, width, cfg.dataset.num_classes, adapter_hidden=spec.adapter_hidden,
                     adapter_dim=spec.adapter_dim, dropout=spec.dropout, decoder_layers=spec.decoder_layers,
                     decoder_heads=spec.decoder_heads, decoder_mlp_ratio=spec.decoder_mlp_ratio,
                     affinity_scale=spec.affinity_scale)


def build_model(cfg: DictConfig, device: torch.device | str = "cpu") -> ExCEL:
    """ExCEL from a config: loads CLIP, builds the text matrix, keeps only the image tower. On CUDA, fp32
    matrix products may use TF32 from here on (training and every inference path build their model here).
    In bf16 or fp16 the backbone's autocast-only weights are stored in that dtype (same numbers, less memory
    and no per-forward casts: :meth:`DenseCLIPEncoder.store_autocast_weights`)."""
    enable_tf32(torch.device(device))
    clip_model = build_clip(cfg, device)
    depth = len(clip_model.visual.transformer.resblocks)
    for key, value in (("svc.layers", cfg.svc.layers), ("cam.affinity_layers", cfg.cam.affinity_layers)):
        if value > depth:
            raise ConfigError(f"{key}={value} exceeds the {depth} blocks of the CLIP image encoder "
                              f"{clip_model_name(cfg)}; use at most {depth}")
    text = build_text_matrix(cfg, clip_model)
    encoder = DenseCLIPEncoder(clip_model.visual, cfg.svc.layers, cfg.svc.enabled, cfg.svc.published_layer_records,
                               record_attention=cfg.cam.affinity_layers)
    if cfg.precision != "fp32":
        encoder.store_autocast_weights(autocast_dtype(cfg.precision))
    head = build_head(cfg, encoder.num_layers, encoder.width)
    return ExCEL(encoder, text, cfg.dataset.num_classes, head, cfg.lvc.mean_weight, cfg.lvc.scale,
                 cfg.precision).to(device)


def build_par(cfg: DictConfig) -> PAR:
    """PAR with the config's dilations, iterations and weights (docs/method.md §5)."""
    return PAR(dilations=tuple(as_list(cfg.par.dilations)), num_iter=cfg.par.iters,
               color_temperature=cfg.par.color_temperature, position_weight=cfg.par.position_weight,
               position_temperature=cfg.par.position_temperature)


def build_dataset(cfg: DictConfig, split: str, transform: SampleTransform | None = None, *,
                  with_mask: bool | str = "auto", with_labels: bool = True) -> SegmentationDataset:
    """The dataset.* split ``split``; raises when dataset.root is not set."""
    data = cfg.dataset
    if data.root is None:
        raise ConfigError("dataset.root is not set; point it at the dataset folder (see README, and prepare "
                          "split lists with tools/make_splits.py)")
    return SegmentationDataset(data.root, split, data.split_dir, data.name, data.num_classes,
                               image_transform=transform, with_mask=with_mask, with_labels=with_labels,
                               seed=cfg.train.seed)


def build_train_augment(cfg: DictConfig) -> TrainAugment:
    """Random rescale, flip and crop of train.* (docs/method.md §8)."""
    return TrainAugment(cfg.train.crop_size, tuple(as_list(cfg.train.scale_range)),
                        max_class_ratio=cfg.train.max_class_ratio, normalization=cfg.dataset.normalize)
