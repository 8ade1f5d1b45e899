"""What a config value may be: one :class:`Rule` per key, and the checks that give one clear line when a
value breaks its rule (the table itself, ``RULES``, sits next to ``DEFAULTS`` in :mod:`excel.config_schema`).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


@dataclass(frozen=True)
class Rule:
    """What one config key accepts: a kind, an optional numeric range or choices, and whether null is allowed.

    kind: ``int``, ``float``, ``bool``, ``str`` or ``list``; ``item`` is the kind of a list's entries.
    ``low``/``high`` bound numbers (and list entries); ``open_low``/``open_high`` exclude the bound.
    ``min_len``/``max_len`` bound a list's length; ``choices`` lists the allowed values of a string.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    item: str | None = None
    min_len: int = 0
    max_len: int | None = None
    pattern: str = ""               # a string must match this regular expression in full ...
    pattern_text: str = ""          # ... described so ("auto, cpu, cuda or cuda:N")


def int_rule(low: int | None = None, high: int | None = None, nullable: bool = False) -> Rule:
    """An integer in [low, high] (either bound optional)."""
    return Rule("int", low, high, nullable=nullable)


def float_rule(low: float | None = None, high: float | None = None, open_low: bool = False,
               open_high: bool = False) -> Rule:
    """A finite number (an integer is accepted) between low and high; open_* excludes a bound."""
    return Rule("float", low, high, open_low, open_high)


def str_rule(*choices: str, nullable: bool = False, pattern: str = "", pattern_text: str = "") -> Rule:
    """A non-empty string: one of ``choices`` when given, matching ``pattern`` (described by ``pattern_text``)."""
    return Rule("str", choices=choices, nullable=nullable, pattern=pattern, pattern_text=pattern_text)


def list_rule(item: str, min_len: int = 0, max_len: int | None = None, low: float | None = None,
              high: float | None = None, open_low: bool = False, open_high: bool = False) -> Rule:
    """A list of ``item`` values (int, float or str), numbers within the bounds."""
    return Rule("list", low, high, open_low, open_high, item=item, min_len=min_len, max_len=max_len)


_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a non-empty string",
               "list": "a list"}
MAX_SHOWN_ITEMS = 4            # a long default list is cut after this many entries in an error message


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _range_text(rule: Rule) -> str:
    """The range of a rule in words, e.g. '>= 1', '> 0', 'in (0, 1]'; empty when unbounded."""
    if rule.low is not None and rule.high is not None:
        return (f"in {'(' if rule.open_low else '['}{_number_text(rule.low)}, "
                f"{_number_text(rule.high)}{')' if rule.open_high else ']'}")
    if rule.low is not None:
        return f"{'>' if rule.open_low else '>='} {_number_text(rule.low)}"
    if rule.high is not None:
        return f"{'<' if rule.open_high else '<='} {_number_text(rule.high)}"
    return ""


def accepted_values(rule: Rule) -> str:
    """What a rule accepts, in words: 'an integer >= 1', 'a list of 2 numbers > 0', 'one of a, b'."""
    if rule.pattern_text:
        text = rule.pattern_text
    elif rule.choices:
        text = "one of " + ", ".join(rule.choices)
    elif rule.kind == "list":
        if rule.max_len is not None and rule.max_len == rule.min_len:
            count = f"{rule.min_len} "
        else:
            count = f"at least {rule.min_len} " if rule.min_len > 1 else ""
        items = {"int": "integers", "float": "numbers", "str": "non-empty strings"}[rule.item]
        article = "a non-empty list" if rule.min_len == 1 and rule.max_len != 1 else "a list"
        text = " ".join(part for part in (f"{article} of {count}{items}", _range_text(rule)) if part)
    else:
        text = " ".join(part for part in (_KIND_NAMES[rule.kind], _range_text(rule)) if part)
    return text + (", or null" if rule.nullable else "")


def _in_range(value: float, rule: Rule) -> bool:
    if rule.low is not None and (value < rule.low or (rule.open_low and value == rule.low)):
        return False
    return rule.high is None or (value < rule.high or (not rule.open_high and value == rule.high))


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str) and bool(value.strip())
    return isinstance(value, list)


def _fits(value: Any, rule: Rule) -> bool:
    if not _is_kind(value, rule.kind):
        return False
    if rule.kind == "list":
        if len(value) < rule.min_len or (rule.max_len is not None and len(value) > rule.max_len):
            return False
        return all(_is_kind(item, rule.item) and (rule.item == "str" or _in_range(item, rule)) for item in value)
    if rule.choices:
        return value in rule.choices
    if rule.pattern:
        return re.fullmatch(rule.pattern, value) is not None
    return rule.kind not in ("int", "float") or _in_range(value, rule)


def shown_default(default: Any) -> str:
    """A default as messages and docs show it: null, a long list cut after MAX_SHOWN_ITEMS entries."""
    if default is None:
        return "null"
    if isinstance(default, list) and len(default) > MAX_SHOWN_ITEMS:
        return "[" + ", ".join(map(repr, default[:MAX_SHOWN_ITEMS])) + f", ... ({len(default)} entries)]"
    return str(default)


def check_value(key: str, value: Any, rule: Rule, default: Any) -> None:
    """Raise ConfigError naming the key, the value, what it accepts and its default if ``value`` breaks ``rule``."""
    if value is None and rule.nullable:
        return
    if value is None or not _fits(value, rule):
        shown = "null" if value is None else repr(value)
        raise ConfigError(f"{key}={shown} is not valid: use {accepted_values(rule)} (default: {shown_default(default)})")


def check_device(name: str) -> None:
    """Fail when ``device`` names a GPU that this machine does not have (its form is checked by its rule)."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available on this machine (no usable GPU or a CPU-only "
                          f"torch build); use device=cpu or device=auto")
    count = torch.cuda.device_count()
    if ":" in name and int(name.split(":")[1]) >= count:
        raise ConfigError(f"device={name}: only {count} GPU(s) are visible (cuda:0 to cuda:{count - 1}, "
                          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                          f"pick one of them or use device=auto")
