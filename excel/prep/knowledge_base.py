"""Building a Text Semantic Enrichment bank offline (tools/build_knowledge_base.py, docs/method.md §3)."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from excel.builders import bank_cache_path, build_clip, clip_model_name
from excel.config import as_list
from excel.data.layout import dataset_folders
from excel.io import check_output_file
from excel.modeling.clip_loader import clip_tokenizer
from excel.modeling.description_file import load_descriptions
from excel.modeling.text_enrichment import build_bank, save_bank, shared_cluster_sets

log = logging.getLogger(__name__)


def build_knowledge_base(cfg: DictConfig, out: str | None = None) -> Path:
    """Cluster the descriptions of tse.descriptions with the configured CLIP into a bank file; returns its path."""
    path = Path(out or cfg.tse.bank or bank_cache_path(cfg))
    check_output_file(path, dataset_folders(Path(cfg.dataset.root)) if cfg.dataset.root is not None else ())
    clip_model = build_clip(cfg)
    tokenizer = clip_tokenizer(clip_model_name(cfg))
    descriptions = load_descriptions(cfg.tse.descriptions, as_list(cfg.dataset.categories))
    bank = build_bank(clip_model, tokenizer, descriptions, cfg.tse.num_clusters, cfg.tse.kmeans_seed)
    save_bank(bank, path)
    log.info("wrote %s: %d attribute centres of dimension %d from %d descriptions of %d classes", path,
             bank["centers"].shape[0], bank["embed_dim"], sum(map(len, descriptions.values())), len(descriptions))
    for names in shared_cluster_sets(bank):
        log.warning("identical attribute-cluster sets for %s; consider a larger tse.num_clusters", ", ".join(names))
    return path
