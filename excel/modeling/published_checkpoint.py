"""Checkpoints of the authors' published code: their head parameters renamed onto :class:`ExCELHead`.

The published training saves the whole model's state dict (under DistributedDataParallel, every key
prefixed ``module.``): the frozen CLIP under ``encoder.``, the multi-layer adapter under
``decoder_fts_fuse.`` and the transformer decoder under ``decoder.``. Their modules correspond one to
one, with the same shapes, to ours (docs/method.md §6); per backbone layer i and decoder block j:

====================================================  ======================================
published                                             ExCELHead
====================================================  ======================================
decoder_fts_fuse.linears_modulelist.{i}.proj.*        adapter.mlps.{i}.0.*   Linear D_v→hidden
decoder_fts_fuse.linears_modulelist.{i}.proj_2.*      adapter.mlps.{i}.2.*   Linear hidden→dim
decoder_fts_fuse.linear_fuse.*                        adapter.fuse.*         1×1 conv L·dim→dim
decoder.transformer.resblocks.{j}.<name>              decoder.transformer.resblocks.{j}.<name>
decoder.linear_pred.*                                 decoder.classifier.*   1×1 conv dim→C+1
====================================================  ======================================

(``<name>``: ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj:
the decoder blocks use the names of CLIP's residual attention blocks, as ours do.)
"""
from __future__ import annotations

import re
from typing import Any, Mapping

ADAPTER_PREFIX = "decoder_fts_fuse."
DECODER_PREFIX = "decoder."
CLASSIFIER_KEY = "decoder.linear_pred.weight"

_RENAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^decoder_fts_fuse\.linears_modulelist\.(\d+)\.proj\.(weight|bias)$"), r"adapter.mlps.\1.0.\2"),
    (re.compile(r"^decoder_fts_fuse\.linears_modulelist\.(\d+)\.proj_2\.(weight|bias)$"), r"adapter.mlps.\1.2.\2"),
    (re.compile(r"^decoder_fts_fuse\.linear_fuse\.(weight|bias)$"), r"adapter.fuse.\1"),
    (re.compile(r"^decoder\.linear_pred\.(weight|bias)$"), r"decoder.classifier.\1"),
    (re.compile(r"^(decoder\.transformer\.resblocks\.\d+\..+)$"), r"\1"),
)


def is_published_state(state: Mapping[str, Any]) -> bool:
    """Whether a (prefix-free) state dict uses the published names (adapter or classifier present)."""
    return any(key.startswith(ADAPTER_PREFIX) or key == CLASSIFIER_KEY for key in state)


def convert_published_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(head state dict in ExCELHead names, keys that are not part of the head).

    Entries under the adapter / decoder prefixes that no rule knows keep their published name, so that
    the shape and key check of the loader reports them as unexpected instead of dropping them silently.
    """
    head: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if not key.startswith((ADAPTER_PREFIX, DECODER_PREFIX)):
            ignored.append(key)
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                head[pattern.sub(replacement, key)] = value
                break
        else:
            head[key] = value
    return head, ignored
