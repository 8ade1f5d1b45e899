"""Configuration: OmegaConf YAML files with `section.key=value` command-line overrides.

Every key a run can set is declared in :data:`DEFAULTS`; a YAML file or an override that names any
other key is rejected with the list of valid keys. A YAML file may start from another one with
``_base_: other.yaml`` (resolved relative to the file).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

from excel.classes import VOC_CATEGORIES
from excel.config_rules import (
    ConfigError,
    Rule,
    check_device,
    check_value,
    float_rule,
    int_rule,
    list_rule,
    str_rule,
)
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
        "retain_freed_memory": True,        # glibc keeps freed memory for the next iteration (utils/allocator.py)
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


_BOOL = Rule("bool")
_PATH = str_rule(nullable=True)
_POSITIVE = float_rule(0.0, open_low=True)
_NON_NEGATIVE = float_rule(0.0)
_UNIT = float_rule(0.0, 1.0)

# Every key of DEFAULTS → the values it accepts (checked when a config is loaded; tests keep both in step).
RULES: dict[str, Rule] = {
    "dataset.name": str_rule("voc", "coco", "custom"),
    "dataset.root": _PATH,
    "dataset.split_dir": _PATH,
    "dataset.train_split": str_rule(),
    "dataset.val_split": str_rule(),
    "dataset.split": str_rule(),
    "dataset.num_classes": int_rule(1, 254),       # class indices 1..254 (0 background, 255 ignore)
    "dataset.class_file": _PATH,
    "dataset.categories": list_rule("str", min_len=1),
    "dataset.class_names": list_rule("str", min_len=1),
    "dataset.background_names": list_rule("str"),
    "dataset.normalize": str_rule("imagenet", "clip"),
    "clip.model": str_rule(),
    "clip.pretrained": _PATH,
    "clip.model_config": _PATH,
    "clip.quick_gelu": _BOOL,
    "clip.templates": list_rule("str", min_len=1),
    "tse.enabled": _BOOL,
    "tse.descriptions": _PATH,
    "tse.num_clusters": int_rule(1),
    "tse.keep_ratio": float_rule(0.0, 1.0, open_low=True),
    "tse.kmeans_seed": int_rule(0),
    "tse.bank": _PATH,
    "tse.cache_dir": str_rule(),
    "svc.enabled": _BOOL,
    "svc.layers": int_rule(1),
    "svc.published_layer_records": _BOOL,
    "lvc.enabled": _BOOL,
    "lvc.start_iter": int_rule(0),
    "lvc.mean_weight": _NON_NEGATIVE,
    "lvc.scale": _POSITIVE,
    "cam.box_threshold": _UNIT,
    "cam.val_box_threshold": _UNIT,
    "cam.affinity_layers": int_rule(1),
    "cam.input_size": int_rule(16),
    "par.iters": int_rule(0),
    "par.dilations": list_rule("int", min_len=1, low=1),
    "par.color_temperature": _POSITIVE,
    "par.position_temperature": _POSITIVE,
    "par.position_weight": _NON_NEGATIVE,
    "head.adapter_dim": int_rule(1),
    "head.adapter_hidden": int_rule(1),
    "head.dropout": float_rule(0.0, 1.0, open_high=True),
    "head.decoder_layers": int_rule(1),
    "head.decoder_heads": int_rule(1),
    "head.decoder_mlp_ratio": _POSITIVE,
    "head.affinity_scale": _POSITIVE,
    "train.max_iters": int_rule(1),
    "train.batch_size": int_rule(1),
    "train.seed": int_rule(0),
    "train.amp": _BOOL,
    "train.overwrite": _BOOL,
    "train.resume_allow_changes": _BOOL,
    "train.retain_freed_memory": _BOOL,
    "train.crop_size": int_rule(16),
    "train.scale_range": list_rule("float", min_len=2, max_len=2, low=0.0, open_low=True),
    "train.max_class_ratio": float_rule(0.0, 1.0, open_low=True),
    "train.num_workers": int_rule(0),
    "train.eval_interval": int_rule(1),
    "train.log_interval": int_rule(1),
    "train.aff_weight": _NON_NEGATIVE,
    "train.aff_radius": int_rule(1),
    "train.aff_switch_iter": int_rule(0, nullable=True),
    "train.eval_max_images": int_rule(1, nullable=True),
    "optim.lr": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.betas": list_rule("float", min_len=2, max_len=2, low=0.0, high=1.0, open_high=True),
    "optim.eps": _POSITIVE,
    "optim.warmup_iters": int_rule(0),
    "optim.warmup_ratio": _UNIT,
    "optim.power": _NON_NEGATIVE,
    "infer.resize": int_rule(16),
    "infer.scales": list_rule("float", min_len=1, low=0.0, open_low=True),
    "infer.flip": _BOOL,
    "infer.flip_unit_scale": _BOOL,
    "infer.save_overlays": _BOOL,
    "infer.skip_existing": _BOOL,
    "infer.logit_stride": int_rule(1),
    "crf.enabled": _BOOL,
    "crf.iters": int_rule(1),
    "crf.gaussian_sxy": _POSITIVE,
    "crf.gaussian_compat": _NON_NEGATIVE,
    "crf.bilateral_sxy": _POSITIVE,
    "crf.bilateral_srgb": _POSITIVE,
    "crf.bilateral_compat": _NON_NEGATIVE,
    "crf.workers": int_rule(0),
    "device": str_rule(pattern=r"auto|cpu|cuda(:\d+)?", pattern_text="auto, cpu, cuda or cuda:N"),
    "work_dir": str_rule(),
}

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


def _sections(parse: Callable[[], Any], what: str) -> dict:
    """The mapping of sections that ``parse()`` yields; a parse error or another type names ``what``."""
    try:
        data = OmegaConf.to_container(parse()) or {}
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse {what}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of sections")
    return data


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read one YAML file (following `_base_`) into a plain dict, checking its keys."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through _base_")
    data = _sections(lambda: OmegaConf.load(path), f"config file {path}")
    base = data.pop("_base_", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"config file {path}: _base_={base!r} must name another YAML file "
                          f"(relative to {path.parent})")
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
    data = _sections(lambda: OmegaConf.create(text), f"the config in {source}")
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
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise ConfigError(f"override '{item}' cannot be parsed ({_first_line(err)}); check its brackets "
                              f"and quotes, e.g. '{key}=[a, b]'") from err
    check_rules(cfg)                # before the class file is read; the classes it sets are checked below
    if cfg.dataset.class_file is not None:
        apply_class_file(cfg, Path(cfg.dataset.class_file))
    validate_config(cfg)
    return cfg


def read_class_file(path: Path) -> tuple[list[str], list[str]]:
    """Category names and prompt names from a class file: one class a line, `name` or `name: prompt name`."""
    if not path.is_file():
        raise ConfigError(f"dataset.class_file: file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"dataset.class_file: {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                          f"give a text file with one class a line") from err
    categories, prompts = [], []
    for number, line in enumerate(lines, start=1):
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


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split("\n")[0].split())


def _default(key: str) -> Any:
    node: Any = DEFAULTS
    for part in key.split("."):
        node = node[part]
    return node


def _plain_value(cfg: DictConfig, key: str) -> Any:
    """The resolved value of a dotted key as plain Python (lists as lists)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: cannot read its value ({_first_line(err)}); give a plain value") from err
    return value


def check_rules(cfg: DictConfig) -> None:
    """Every key against its rule in :data:`RULES`.

    Keys of DEFAULTS without a rule are tolerated here (a test requires that every key has one).
    """
    for section, node in cfg.items():
        if isinstance(DEFAULTS.get(section), dict) and not isinstance(node, DictConfig):
            raise ConfigError(f"{section}={node!r} is not valid: {section} is a section; set its keys as "
                              f"{section}.<key>=value")
    for key in _valid_keys(DEFAULTS):
        if key in RULES:
            check_value(key, _plain_value(cfg, key), RULES[key], _default(key))


def validate_config(cfg: DictConfig) -> None:
    """Every key against its rule (:func:`check_rules`), then the checks that span several keys."""
    check_rules(cfg)
    data = cfg.dataset
    for key in ("class_names", "categories"):
        names = data[key]
        if len(names) != data.num_classes:
            raise ConfigError(
                f"dataset.{key} has {len(names)} entries but dataset.num_classes={data.num_classes}; "
                f"give one name per foreground class"
            )
    if cfg.lvc.enabled and not cfg.svc.enabled:
        raise ConfigError("lvc.enabled=true needs svc.enabled=true (LVC shifts the SVC attention)")
    if cfg.cam.input_size % 16 or cfg.infer.resize % 16 or cfg.train.crop_size % 16:
        raise ConfigError("cam.input_size, infer.resize and train.crop_size must be multiples of 16")
    low, high = as_list(cfg.train.scale_range)
    if low > high:
        raise ConfigError(f"train.scale_range=[{low}, {high}]: the first (smallest) scale must not exceed the second")
    if cfg.head.adapter_dim % cfg.head.decoder_heads:
        raise ConfigError(f"head.adapter_dim={cfg.head.adapter_dim} must be a multiple of "
                          f"head.decoder_heads={cfg.head.decoder_heads} (attention splits it across heads)")
    for template in as_list(cfg.clip.templates):
        if template.count("{}") != 1 or _formats_badly(template):
            raise ConfigError(f"clip.templates entry {template!r} must contain exactly one '{{}}' where the "
                              f"class name goes (and no other braces), e.g. 'a photo of a {{}}.'")
    check_device(cfg.device)


def _formats_badly(template: str) -> bool:
    try:
        template.format("name")
    except (IndexError, KeyError, ValueError):
        return True
    return False


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def as_list(value: ListConfig | Iterable) -> list:
    """A plain Python list from a config list."""
    return list(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)
