"""ExCEL: exploring CLIP's dense knowledge for weakly supervised semantic segmentation.

The public API (imported on first use, so that ``import excel`` stays cheap)::

    from excel import Predictor, build_model, load_config, run_pseudo_labels, run_segmentation, train
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name → the module that defines it.
_HOMES = {
    "load_config": "excel.config",
    "build_model": "excel.builders",
    "train": "excel.engine.trainer",
    "run_pseudo_labels": "excel.evaluation.infer_lam",
    "run_segmentation": "excel.evaluation.segment",
    "Predictor": "excel.evaluation.predictor",
}
__all__ = ["Predictor", "__version__", "build_model", "load_config", "run_pseudo_labels", "run_segmentation",
           "train"]

if TYPE_CHECKING:
    from excel.builders import build_model
    from excel.config import load_config
    from excel.engine.trainer import train
    from excel.evaluation.infer_lam import run_pseudo_labels
    from excel.evaluation.predictor import Predictor
    from excel.evaluation.segment import run_segmentation


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'excel' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
