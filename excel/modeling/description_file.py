"""Attribute-description files: the knowledge base of Text Semantic Enrichment (docs/method.md §3).

A description file is a JSON object that maps every foreground class key, in dataset order, to a list
of short visual-attribute sentences, e.g. ``"a clean origami aeroplane. it has a tall vertical fin at
the tail."``. Training and inference only read them (this module); writing and checking them is the
offline work of :mod:`excel.prep.description_authoring`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence


class DescriptionError(ValueError):
    """A description file that is missing pieces or is not the expected JSON object of string lists."""


def dedupe_key(description: str) -> str:
    """The form two descriptions share when they say the same thing (case, spacing, final period)."""
    return " ".join(description.lower().split()).rstrip(".")


def read_description_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a description file and check that it is a JSON object of lists of strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"description file {path} does not exist; pass the path of a description JSON file "
            f"(e.g. prompts/voc_descriptions.json) or write one with tools/generate_descriptions.py"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DescriptionError(
            f"description file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
            f"give a JSON file mapping class keys to lists of sentences"
        ) from error
    except json.JSONDecodeError as error:
        raise DescriptionError(
            f"description file {path} is not valid JSON ({error.msg} at line {error.lineno}, "
            f"column {error.colno}); fix the file or regenerate it"
        ) from error
    if not isinstance(content, dict):
        raise DescriptionError(
            f"description file {path} must hold a JSON object mapping class keys to lists of "
            f"strings, found a {type(content).__name__}"
        )
    for key, entries in content.items():
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise DescriptionError(
                f"description file {path}: the value of class {key!r} must be a list of strings"
            )
    return content


def load_descriptions(
    path: str | os.PathLike, class_keys: Sequence[str], per_class: int | None = None
) -> dict[str, list[str]]:
    """Load the descriptions of ``class_keys`` (in that order) from a description file.

    Raises with the file name when the file is missing or malformed, when a class has no
    descriptions or fewer than ``per_class``, or when a class lists a description twice.
    Classes of the file that are not in ``class_keys`` are ignored.
    """
    content = read_description_file(path)
    loaded = {}
    for key in class_keys:
        entries = content.get(key)
        if not entries:
            raise DescriptionError(
                f"description file {path} has no descriptions for class {key!r}; add them under "
                f"the key {key!r} (keys present: {sorted(content)})"
            )
        if per_class is not None and len(entries) < per_class:
            raise DescriptionError(
                f"description file {path}: class {key!r} has {len(entries)} descriptions, at "
                f"least {per_class} are needed"
            )
        seen = {}
        for index, entry in enumerate(entries):
            previous = seen.setdefault(dedupe_key(entry), index)
            if previous != index:
                raise DescriptionError(
                    f"description file {path}: class {key!r} lists the same description twice "
                    f"(entries {previous} and {index}: {entry!r}); remove or rewrite one"
                )
        loaded[key] = list(entries)
    return loaded
