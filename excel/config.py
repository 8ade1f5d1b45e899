"""Configuration: OmegaConf YAML files with `section.key=value` command-line overrides.

Every key a run can set is declared in :data:`excel.config_schema.DEFAULTS`; a YAML file or an
override that names any other key is rejected with the list of valid keys. A YAML file may start from another one with
``_base_: other.yaml`` (resolved relative to the file). A path under configs/, prompts/ or assets/ (the
config file's own included) is read from the package when the current folder lacks it (excel/resources.py).
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

from excel.config_rules import ConfigError, check_device, check_value
from excel.config_schema import DEFAULTS, RULES
from excel.io import write_text
from excel.resources import locate


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    keys: list[str] = []
    for key, value in node.items():
        keys.extend(_valid_keys(value, f"{prefix}{key}."))
    return keys


RETIRED_KEYS = {"train.amp": "it was replaced by the top-level key precision (fp32, bf16 or fp16)"}


def _key_error(key: str, source: str) -> ConfigError:
    if key in RETIRED_KEYS:
        return ConfigError(f"config key '{key}' in {source} is no longer read: {RETIRED_KEYS[key]}; "
                           f"remove it and set e.g. precision=bf16")
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
    return _finish(_read_yaml(locate(path)) if path is not None else {}, overrides)


def load_config_text(text: str, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults ← a resolved config saved as YAML text (e.g. a checkpoint's ``config``) ← overrides.

    Saved configs hold every key of their day: retired keys (:data:`RETIRED_KEYS`) are dropped, not refused.
    """
    data = _sections(lambda: OmegaConf.create(text), f"the config in {source}")
    for key in RETIRED_KEYS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
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
    _locate_packaged_files(cfg)
    if cfg.dataset.class_file is not None:
        apply_class_file(cfg, Path(cfg.dataset.class_file))
    validate_config(cfg)
    return cfg


def _locate_packaged_files(cfg: DictConfig) -> None:
    """Point every value that names a packaged file (configs/..., prompts/..., assets/...) missing from the
    current folder at the package's copy (:func:`excel.resources.locate`); other values stay as given."""
    for key in _valid_keys(DEFAULTS):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and (found := locate(value)) != Path(value):
            OmegaConf.update(cfg, key, str(found))


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
