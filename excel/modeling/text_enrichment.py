"""Text side of ExCEL: prompt-ensemble class embeddings and Text Semantic Enrichment (docs/method.md §3).

The knowledge base is a bank of K attribute centres (k-means over the CLIP embeddings of LLM-written
class descriptions). Each foreground class embedding is enriched with a softmax-weighted mix of the
attributes it correlates with most ("attribute hunting"); background words are used as they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from excel.io import atomic_write
from excel.modeling.description_file import load_descriptions

log = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1


class KnowledgeBankError(ValueError):
    """A knowledge-base bank that does not fit the configured CLIP or K."""


@torch.no_grad()
def encode_texts(clip_model: nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised CLIP text embeddings: len(texts)×D."""
    device = next(clip_model.parameters()).device
    chunks = [clip_model.encode_text(tokenizer(list(texts[i:i + batch_size])).to(device)).float()
              for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1)


def class_embeddings(clip_model: nn.Module, tokenizer: Callable, names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """One embedding per name: the normalised mean of its normalised template embeddings. len(names)×D."""
    prompts = [template.format(name) for name in names for template in templates]
    embeddings = encode_texts(clip_model, tokenizer, prompts).reshape(len(names), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def descriptions_digest(descriptions: dict[str, list[str]]) -> str:
    """A stable hash of the descriptions (order of classes and sentences included)."""
    return hashlib.sha256(json.dumps(descriptions, ensure_ascii=False).encode()).hexdigest()


def text_tower_fingerprint(clip_model: nn.Module) -> str:
    """A hash of the text-encoder weights, so a bank is rebuilt when the CLIP weights change."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(clip_model.state_dict().items()):
        if not name.startswith("visual."):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cluster_attributes(embeddings: torch.Tensor, num_clusters: int, seed: int = 0) -> torch.Tensor:
    """k-means (scikit-learn, `random_state=seed`) over description embeddings M×D → centres K×D."""
    from sklearn.cluster import KMeans

    if embeddings.shape[0] < num_clusters:
        raise KnowledgeBankError(f"tse.num_clusters={num_clusters} is larger than the number of descriptions "
                                 f"({embeddings.shape[0]}); lower it or add descriptions")
    kmeans = KMeans(n_clusters=num_clusters, random_state=seed).fit(embeddings.cpu().numpy())
    return torch.from_numpy(kmeans.cluster_centers_).float()


def build_bank(clip_model: nn.Module, tokenizer: Callable, descriptions: dict[str, list[str]],
               num_clusters: int, seed: int = 0) -> dict:
    """Bank dict: `centers` K×D plus the metadata that decides when it must be rebuilt."""
    sentences = [sentence.lower() for sentences in descriptions.values() for sentence in sentences]
    embeddings = encode_texts(clip_model, tokenizer, sentences)
    centers = cluster_attributes(embeddings, num_clusters, seed)
    owners = torch.tensor([i for i, s in enumerate(descriptions.values()) for _ in s])
    labels = torch.from_numpy(np.argmin(torch.cdist(embeddings.cpu(), centers).numpy(), axis=1))
    membership = torch.zeros(len(descriptions), num_clusters)
    membership[owners, labels] = 1.0
    return {
        "centers": centers,
        "class_clusters": membership,            # C×K: which clusters each class's descriptions fall in
        "classes": list(descriptions),
        "num_clusters": num_clusters,
        "embed_dim": centers.shape[1],
        "descriptions_sha256": descriptions_digest(descriptions),
        "clip_fingerprint": text_tower_fingerprint(clip_model),
        "kmeans_seed": seed,
        "format_version": BANK_FORMAT_VERSION,
    }


def shared_cluster_sets(bank: dict) -> list[list[str]]:
    """Groups of classes whose descriptions fall into identical cluster sets (a sign that K is too small)."""
    groups: dict[bytes, list[str]] = {}
    for name, row in zip(bank["classes"], bank["class_clusters"]):
        groups.setdefault(row.numpy().tobytes(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def save_bank(bank: dict, path: str | os.PathLike) -> None:
    """Write a bank dict with ``torch.save``, atomically."""
    atomic_write(path, lambda tmp: torch.save(bank, tmp))


def read_bank(path: str | os.PathLike) -> dict:
    """A bank file as a dict with `centers` K×D (finite values).

    Also reads the banks the authors publish (`attributes_text/*_embedding_bank.pth`): a list
    [D×K attribute centres (column-wise, float64), C×K float flags of the clusters each class's
    descriptions fall in]; they become `centers` K×D (float32) and `class_clusters` C×K.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise KnowledgeBankError(f"tse.bank: cannot read {path} ({type(err).__name__}: {reason})") from err
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], torch.Tensor):
        data = _published_bank(data, path)
    if not isinstance(data, dict) or not isinstance(data.get("centers"), torch.Tensor) or data["centers"].ndim != 2:
        raise KnowledgeBankError(f"tse.bank: {path} holds no `centers` tensor of shape K×D")
    if not bool(torch.isfinite(data["centers"]).all()):
        raise KnowledgeBankError(f"tse.bank: {path} holds non-finite (NaN or infinite) attribute centres; it cannot "
                                 "enrich the class embeddings: rebuild it with tools/build_knowledge_base.py")
    return data


def _published_bank(data: list | tuple, path: str | os.PathLike) -> dict:
    """[D×K centres, C×K flags] → {'centers': K×D float32, 'class_clusters': C×K}."""
    columns = data[0]
    if columns.ndim != 2:
        raise KnowledgeBankError(f"tse.bank: {path} holds a list whose first tensor has shape {tuple(columns.shape)}; "
                                 "expected the attribute centres as a D×K matrix")
    bank = {"centers": columns.T.float().contiguous()}
    if len(data) > 1 and isinstance(data[1], torch.Tensor):
        flags = data[1]
        if flags.ndim != 2 or flags.shape[1] != columns.shape[1]:
            raise KnowledgeBankError(f"tse.bank: {path} holds centres of shape {tuple(columns.shape)} (D×K) but "
                                     f"class flags of shape {tuple(flags.shape)}; expected C×{columns.shape[1]}")
        bank["class_clusters"] = flags.float()
    return bank


def check_bank(bank: dict, path: str | os.PathLike, num_clusters: int, embed_dim: int,
               fingerprint: str | None, classes: Sequence[str] | None = None) -> None:
    """Raise unless the bank fits K, the embedding size and, where the bank records them, the CLIP weights
    and the classes (``classes``: dataset.categories in order; banks without stored classes, such as the
    published [D×K tensor, flags] list, have nothing to compare and pass)."""
    stored = bank.get("classes")
    if classes is not None and stored is not None and list(stored) != list(classes):
        raise KnowledgeBankError(f"tse.bank: {path} was built for the classes {list(stored)} but "
                                 f"dataset.categories is {list(classes)}; use the bank of this dataset or "
                                 "build one with tools/build_knowledge_base.py")
    k, d = bank["centers"].shape
    if k != num_clusters:
        raise KnowledgeBankError(f"tse.bank: {path} has {k} attribute centres but tse.num_clusters={num_clusters}; "
                                 f"set tse.num_clusters={k} or rebuild the bank")
    if d != embed_dim:
        raise KnowledgeBankError(f"tse.bank: {path} has {d}-d centres but the CLIP text embedding is {embed_dim}-d; "
                                 f"it was built for another CLIP model: rebuild it with tools/build_knowledge_base.py")
    if fingerprint is not None and bank.get("clip_fingerprint") not in (None, fingerprint):
        raise KnowledgeBankError(f"tse.bank: {path} was built with other CLIP weights than clip.pretrained; "
                                 f"rebuild it with tools/build_knowledge_base.py")


def load_or_build_bank(clip_model: nn.Module, tokenizer: Callable, *, bank_path: str | None,
                       cache_path: str | os.PathLike, descriptions_path: str | None,
                       class_keys: Sequence[str], num_clusters: int, seed: int = 0) -> dict:
    """The bank for TSE.

    An existing `bank_path` is used as is (after checking K, the embedding size and, when recorded, the
    weights and the classes, which must equal `class_keys` in order). Otherwise the bank cached at
    `cache_path` is reused when its descriptions, CLIP weights and K match, and rebuilt from
    `descriptions_path` when any of them changed.
    """
    embed_dim = clip_model.text_projection.shape[1]
    fingerprint = text_tower_fingerprint(clip_model)
    if bank_path is not None and Path(bank_path).is_file():
        bank = read_bank(bank_path)
        check_bank(bank, bank_path, num_clusters, embed_dim, fingerprint, class_keys)
        return bank
    if descriptions_path is None:
        raise KnowledgeBankError("TSE needs tse.descriptions (a descriptions JSON) or an existing tse.bank file")
    descriptions = load_descriptions(descriptions_path, list(class_keys))
    digest = descriptions_digest(descriptions)
    target = Path(bank_path) if bank_path is not None else Path(cache_path)
    if target.is_file():
        try:
            cached = read_bank(target)
        except KnowledgeBankError as err:       # a damaged cache is rebuilt, never blamed on tse.bank
            log.warning("knowledge bank %s is unreadable or damaged (%s): rebuilding it",
                        target, str(err).removeprefix("tse.bank: "))
            cached = {}
        if (cached.get("descriptions_sha256") == digest and cached.get("clip_fingerprint") == fingerprint
                and cached.get("num_clusters") == num_clusters and cached.get("kmeans_seed", seed) == seed):
            return cached
        if cached:
            log.info("knowledge bank %s is stale (descriptions, weights or K changed): rebuilding", target)
    bank = build_bank(clip_model, tokenizer, descriptions, num_clusters, seed)
    save_bank(bank, target)
    for names in shared_cluster_sets(bank):
        log.warning("classes with identical attribute-cluster sets (K may be too small): %s", ", ".join(names))
    return bank


def hunt_attributes(class_text: torch.Tensor, centers: torch.Tensor, keep_ratio: float = 0.9) -> torch.Tensor:
    """Enriched class embeddings C×D from class embeddings C×D and attribute centres K×D.

    logits = class·centresᵀ; the int((1 − keep_ratio)·K) lowest are dropped; the softmax-weighted mix
    of the centres is added to the class embedding, which is then L2-normalised.
    """
    logits = class_text @ centers.T
    num_drop = int((1 - keep_ratio) * centers.shape[0])
    if num_drop > 0:
        lowest = logits.topk(num_drop, dim=-1, largest=False).indices
        logits = logits.scatter(-1, lowest, float("-inf"))
    return F.normalize(torch.softmax(logits, dim=-1) @ centers + class_text, dim=-1)


def text_matrix(foreground: torch.Tensor, background: torch.Tensor, centers: torch.Tensor | None,
                keep_ratio: float = 0.9) -> torch.Tensor:
    """[T_1..T_C, b_1..b_Cbg]: T×D, foreground rows enriched when `centers` is given (TSE on)."""
    if centers is not None:
        foreground = hunt_attributes(foreground, centers.to(foreground), keep_ratio)
    return torch.cat([foreground, background], dim=0)
