"""Configuration: OmegaConf YAML files with `section.key=value` command-line overrides.

Every key a run can set is declared in :data:`DEFAULTS`; a YAML file or an override that names any
other key is rejected with the list of valid keys. A YAML file may start from another one with
``_base_: other.yaml`` (resolved relative to the file).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from excel.classes import VOC_CATEGORIES
from excel.io import write_text

DEFAULTS: dict[str, Any] = {
    "dataset": {
        "name": "voc",                      # voc | coco | custom
        "root": None,                       # dataset folder (README layout)
        "split_dir": None,                  # folder of <split>.txt lists; default <root>/splits
        "train_split": "train_aug",
        "val_split": "val",
        "split": "train",                   # the split an inference tool reads
        "num_classes": 20,                  # foreground classes
        "class_file": None,                 # custom datasets: one class a line, "name" or "name: prompt name"
        "categories": list(VOC_CATEGORIES),       # plain names: tables, palettes, description keys
        "class_names": list(VOC_CATEGORIES),      # prompt names given to the text encoder
        "background_names": [],
        "normalize": "imagenet",            # imagenet | clip
    },
    "clip": {
        "model": "ViT-B-16",                # open_clip model name
        "pretrained": "openai",             # open_clip tag, or a local checkpoint file
        "model_config": None,               # optional open_clip model-config JSON to register
        "quick_gelu": True,                 # OpenAI weights were trained with QuickGELU
        "templates": ["a clean origami {}."],
    },
    "tse": {
        "enabled": True,
        "descriptions": None,               # JSON {category: [descriptions]}
        "num_clusters": 112,
        "keep_ratio": 0.9,
        "kmeans_seed": 0,
        "bank": None,                       # existing bank file used as is; else cached in cache_dir
        "cache_dir": "work_dirs/cache",
    },
    "svc": {
        "enabled": True,
        "layers": 5,
        "published_layer_records": True,    # adapter inputs as the published code's in-place updates leave them
                                            # (the published numbers); false: the clean layer outputs
    },
    "lvc": {
        "enabled": True,
        "start_iter": 14000,
        "mean_weight": 1.0,                 # S - mean_weight * mean(S)
        "scale": 3.0,
    },
    "cam": {
        "box_threshold": 0.79,              # pseudo labels (infer_lam)
        "val_box_threshold": 0.75,          # validation during training
        "affinity_layers": 6,
        "input_size": 320,                  # evaluation resize of the normalised image
    },
    "par": {
        "iters": 20,
        "dilations": [1, 2, 4, 8, 12, 24],
        "color_temperature": 0.3,
        "position_temperature": 0.3,
        "position_weight": 0.01,
    },
    "head": {
        "adapter_dim": 256,
        "adapter_hidden": 256,
        "dropout": 0.1,
        "decoder_layers": 3,
        "decoder_heads": 8,
        "decoder_mlp_ratio": 4.0,
        "affinity_scale": 3.0,
    },
    "train": {
        "max_iters": 30000,
        "batch_size": 4,
        "seed": 0,
        "amp": False,
        "crop_size": 320,
        "scale_range": [0.5, 2.0],
        "max_class_ratio": 0.75,
        "num_workers": 4,
        "eval_interval": 2000,
        "log_interval": 50,
        "aff_weight": 0.1,
        "aff_radius": 8,
        "aff_switch_iter": 24000,           # from then on L_aff targets come from the decoder; null: never
        "eval_max_images": None,            # cap the validation split (null: all)
        "overwrite": False,                 # a new run may replace the checkpoints already in work_dir
        "resume_allow_changes": False,      # --resume may change optim.*, max_iters, batch_size, seed
    },
    "optim": {
        "lr": 1.0e-3,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "warmup_iters": 50,
        "warmup_ratio": 1.0e-6,
        "power": 1.0,
    },
    "infer": {
        "resize": 320,
        "scales": [0.7, 1.0, 1.2, 1.5],
        "flip": True,
        "flip_unit_scale": False,           # also flip at scale 1.0 (the published COCO evaluation does)
        "save_overlays": False,
        "logit_stride": 1,                  # logits kept for the CRF at 1/stride resolution (4 saves memory)
        "skip_existing": False,             # keep images whose outputs exist (read back for the scores)
    },
    "crf": {
        "enabled": True,
        "iters": 10,
        "gaussian_sxy": 1,
        "gaussian_compat": 3,
        "bilateral_sxy": 67,
        "bilateral_srgb": 3,
        "bilateral_compat": 4,
        "workers": 2,
    },
    "device": "auto",                       # auto | cpu | cuda | cuda:N
    "work_dir": "work_dirs/run",
}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    keys: list[str] = []
    for key, value in node.items():
        keys.extend(_valid_keys(value, f"{prefix}{key}."))
    return keys


def _key_error(key: str, source: str) -> ConfigError:
    section = key.split(".")[0]
    related = [k for k in _valid_keys(DEFAULTS) if k.split(".")[0] == section]
    valid = related or sorted({k.split(".")[0] for k in _valid_keys(DEFAULTS)})
    return ConfigError(f"unknown config key '{key}' in {source}; valid keys: {', '.join(valid)}")


def _unknown_keys(cfg: Any, reference: Any, prefix: str = "") -> list[str]:
    if not isinstance(cfg, dict):
        return []
    unknown = []
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if not isinstance(reference, dict) or key not in reference:
            unknown.append(path)
        elif isinstance(reference[key], dict):
            unknown.extend(_unknown_keys(value, reference[key], f"{path}."))
    return unknown


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read one YAML file (following `_base_`) into a plain dict, checking its keys."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through _base_")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base = data.pop("_base_", None)
    for key in _unknown_keys(data, DEFAULTS):
        raise _key_error(key, str(path))
    if base is None:
        return data
    merged = OmegaConf.merge(_read_yaml(path.parent / base, seen + (path,)), data)
    return OmegaConf.to_container(merged)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults ← YAML file (with its `_base_` chain) ← `section.key=value` overrides, validated."""
    return _finish(_read_yaml(Path(path)) if path is not None else {}, overrides)


def load_config_text(text: str, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults ← a resolved config saved as YAML text (e.g. a checkpoint's ``config``) ← overrides."""
    try:
        data = OmegaConf.to_container(OmegaConf.create(text)) or {}
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse the config in {source}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"the config in {source} must hold a mapping of sections")
    for key in _unknown_keys(data, DEFAULTS):
        raise _key_error(key, source)
    return _finish(data, overrides)


def _finish(data: dict, overrides: Sequence[str]) -> DictConfig:
    """Merge ``data`` over the defaults, apply the overrides and the class file, validate."""
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), data)
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key = item.split("=", 1)[0].strip()
        try:
            cfg.merge_with_dotlist([item])
        except (ConfigAttributeError, ConfigKeyError) as err:
            raise _key_error(key, "the command line") from err
    if cfg.dataset.class_file:
        apply_class_file(cfg, Path(cfg.dataset.class_file))
    validate_config(cfg)
    return cfg


def read_class_file(path: Path) -> tuple[list[str], list[str]]:
    """Category names and prompt names from a class file: one class a line, `name` or `name: prompt name`."""
    if not path.is_file():
        raise ConfigError(f"dataset.class_file: file not found: {path}")
    categories, prompts = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, prompt = (part.strip() for part in line.partition(":"))
        if not name:
            raise ConfigError(f"dataset.class_file: {path}, line {number}: empty class name")
        if name in categories:
            raise ConfigError(f"dataset.class_file: {path}, line {number}: class {name!r} is listed twice")
        categories.append(name)
        prompts.append(prompt or name)
    if not categories:
        raise ConfigError(f"dataset.class_file: {path} lists no class")
    return categories, prompts


def apply_class_file(cfg: DictConfig, path: Path) -> None:
    """Set dataset.categories, dataset.class_names and dataset.num_classes from a class file."""
    categories, prompts = read_class_file(path)
    cfg.dataset.categories = categories
    cfg.dataset.class_names = prompts
    cfg.dataset.num_classes = len(categories)


def validate_config(cfg: DictConfig) -> None:
    """Cross-key checks that a single key's type cannot express."""
    data = cfg.dataset
    if data.name not in ("voc", "coco", "custom"):
        raise ConfigError(f"dataset.name={data.name!r}: use voc, coco or custom")
    if data.normalize not in ("imagenet", "clip"):
        raise ConfigError(f"dataset.normalize={data.normalize!r}: use imagenet or clip")
    for key in ("class_names", "categories"):
        names = data[key]
        if len(names) != data.num_classes:
            raise ConfigError(
                f"dataset.{key} has {len(names)} entries but dataset.num_classes={data.num_classes}; "
                f"give one name per foreground class"
            )
    if cfg.lvc.enabled and not cfg.svc.enabled:
        raise ConfigError("lvc.enabled=true needs svc.enabled=true (LVC shifts the SVC attention)")
    if not 0.0 < cfg.tse.keep_ratio <= 1.0:
        raise ConfigError(f"tse.keep_ratio={cfg.tse.keep_ratio} must be in (0, 1]")
    if cfg.cam.input_size % 16 or cfg.infer.resize % 16 or cfg.train.crop_size % 16:
        raise ConfigError("cam.input_size, infer.resize and train.crop_size must be multiples of 16")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def as_list(value: ListConfig | Iterable) -> list:
    """A plain Python list from a config list."""
    return list(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)
