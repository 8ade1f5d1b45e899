"""Writing and checking attribute-description files (tools/generate_descriptions.py).

Turns free-form language-model replies into clean description lists, checks that every description
starts with its class's template sentence, that none repeats and that none names another class
(with aliases: "plane" is the aeroplane class), and saves the file.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping, Sequence

from excel.classes import COCO_CATEGORIES, VOC_CATEGORIES
from excel.io import write_json
from excel.modeling.description_file import dedupe_key

DEFAULT_PREFIX_TEMPLATE = "a clean origami {}."
DESCRIPTIONS_PER_CLASS = 20

DATASET_CLASS_KEYS: dict[str, tuple[str, ...]] = {"voc": VOC_CATEGORIES, "coco": COCO_CATEGORIES}

_PERSON_WORDS = (
    "person", "people", "human", "man", "men", "woman", "women", "child", "children", "kid",
    "boy", "girl", "adult", "someone", "somebody", "rider", "driver", "passenger", "pilot",
    "cyclist", "jockey", "player", "skier", "surfer", "skater", "hand", "finger",
)
_PLANE_WORDS = ("airplane", "aeroplane", "plane", "aircraft", "airliner", "jet")
_MOTORBIKE_WORDS = ("motorbike", "motorcycle", "scooter", "moped")
_TABLE_WORDS = ("dining table", "diningtable", "table")
_PLANT_WORDS = ("potted plant", "pottedplant", "houseplant", "plant")
_SOFA_WORDS = ("sofa", "couch", "settee")
_TV_WORDS = ("tv", "tvmonitor", "television", "monitor")

CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "person": _PERSON_WORDS,
    "aeroplane": _PLANE_WORDS,
    "airplane": _PLANE_WORDS,
    "bicycle": ("bicycle", "bike"),
    "bird": ("bird",),
    "boat": ("boat", "ship", "yacht", "sailboat", "canoe", "kayak"),
    "bus": ("bus",),
    "car": ("car", "automobile", "taxi"),
    "cat": ("cat", "kitten"),
    "cow": ("cow", "cattle", "calf", "bull"),
    "diningtable": _TABLE_WORDS,
    "dining table": _TABLE_WORDS,
    "dog": ("dog", "puppy"),
    "horse": ("horse", "pony", "foal"),
    "motorbike": _MOTORBIKE_WORDS,
    "motorcycle": _MOTORBIKE_WORDS,
    "pottedplant": _PLANT_WORDS,
    "potted plant": _PLANT_WORDS,
    "sheep": ("sheep", "lamb"),
    "sofa": _SOFA_WORDS,
    "couch": _SOFA_WORDS,
    "train": ("train", "locomotive"),
    "tvmonitor": _TV_WORDS,
    "tv": _TV_WORDS,
    "truck": ("truck", "lorry"),
    "traffic light": ("traffic light", "traffic signal"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "backpack": ("backpack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("tie", "necktie"),
    "suitcase": ("suitcase", "luggage"),
    "skis": ("skis", "ski"),
    "sports ball": ("sports ball", "ball"),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "wine glass": ("wine glass", "wineglass"),
    "cup": ("cup", "mug"),
    "knife": ("knife",),
    "hot dog": ("hot dog", "hotdog"),
    "donut": ("donut", "doughnut"),
    "mouse": ("mouse", "mice"),
    "remote": ("remote", "remote control"),
    "cell phone": ("cell phone", "cellphone", "phone", "smartphone"),
    "refrigerator": ("refrigerator", "fridge"),
    "teddy bear": ("teddy bear", "teddy"),
    "hair drier": ("hair drier", "hairdrier", "hair dryer", "hairdryer", "blow dryer"),
}


def description_prefix(class_key: str, prefix_template: str = DEFAULT_PREFIX_TEMPLATE) -> str:
    """The template sentence every description of ``class_key`` starts with."""
    return prefix_template.format(class_key)


def alias_words(class_key: str, aliases: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """Words and phrases that name ``class_key``: the key, its spaced form and its aliases."""
    table = CLASS_ALIASES if aliases is None else aliases
    spaced = " ".join(re.findall(r"[a-z0-9]+", class_key.lower()))
    return tuple(dict.fromkeys([class_key.lower(), spaced, *table.get(class_key, ())]))


def _word_text(text: str) -> str:
    """Lower-case words of ``text`` joined by single spaces (punctuation and hyphens dropped)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith("fe"):
        return word[:-2] + "ves"
    return word + "s"


def _name_pattern(names: Sequence[str]) -> re.Pattern[str]:
    """Regex matching any of ``names`` (singular or plural) as whole words, longest first."""
    forms = set()
    for name in names:
        words = _word_text(name).split()
        if words:
            forms.add(" ".join(words))
            forms.add(" ".join([*words[:-1], _plural(words[-1])]))
    if not forms:
        return re.compile(r"(?!)")
    alternatives = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b")


def _mention_patterns(
    class_keys: Sequence[str], aliases: Mapping[str, Sequence[str]] | None
) -> dict[str, re.Pattern[str]]:
    return {key: _name_pattern(alias_words(key, aliases)) for key in class_keys}


def _other_class_mentions(body: str, class_key: str, patterns: Mapping[str, re.Pattern[str]]) -> list[str]:
    """Other classes named in ``body``; a name inside one of the class's own names does not count.

    E.g. "bear" inside "teddy bear" is ignored for ``teddy bear``, while "hot dogs" in a ``dog``
    sentence still names ``hot dog``.
    """
    text = _word_text(body)
    own_pattern = patterns.get(class_key)
    own_spans = [match.span() for match in own_pattern.finditer(text)] if own_pattern else []

    def outside_own_names(match: re.Match[str]) -> bool:
        return not any(start <= match.start() and match.end() <= end for start, end in own_spans)

    return [other for other, pattern in patterns.items()
            if other != class_key and any(outside_own_names(match) for match in pattern.finditer(text))]


def find_other_class_mentions(
    description: str,
    class_key: str,
    class_keys: Sequence[str],
    prefix_template: str = DEFAULT_PREFIX_TEMPLATE,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Keys of the classes in ``class_keys`` other than ``class_key`` that ``description`` names.

    The template prefix is ignored; names match as whole words, singular or plural, including
    the aliases of ``aliases`` (default :data:`CLASS_ALIASES`; e.g. "rider" names ``person``).
    """
    prefix = description_prefix(class_key, prefix_template)
    body = description[len(prefix):] if description.startswith(prefix) else description
    return _other_class_mentions(body, class_key, _mention_patterns(class_keys, aliases))


def validate_descriptions(
    descriptions: Mapping[str, Sequence[str]],
    class_keys: Sequence[str],
    prefix_template: str = DEFAULT_PREFIX_TEMPLATE,
    per_class: int | None = DESCRIPTIONS_PER_CLASS,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Review a knowledge base; return one message per problem (empty list: all good).

    Checks, for every class of ``class_keys``: the count (``per_class``, None skips it), the
    template prefix, lower case, a non-empty sentence after the prefix, duplicates, and
    sentences that name another class of ``class_keys`` (see :func:`find_other_class_mentions`).
    Classes not in ``class_keys`` are reported as unexpected.
    """
    patterns = _mention_patterns(class_keys, aliases)
    problems = [f"unexpected class {key!r} (not one of the dataset classes)"
                for key in descriptions if key not in class_keys]
    for key in class_keys:
        entries = list(descriptions.get(key, ()))
        if not entries:
            problems.append(f"class {key!r}: no descriptions")
            continue
        if per_class is not None and len(entries) != per_class:
            problems.append(f"class {key!r}: {len(entries)} descriptions, expected {per_class}")
        prefix = description_prefix(key, prefix_template)
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            where = f"class {key!r}, description {index}"
            if not entry.startswith(prefix):
                problems.append(f"{where}: does not start with {prefix!r}: {entry!r}")
            elif not entry[len(prefix):].strip():
                problems.append(f"{where}: nothing follows the prefix")
            if entry != entry.lower():
                problems.append(f"{where}: not lower case: {entry!r}")
            previous = seen.setdefault(dedupe_key(entry), index)
            if previous != index:
                problems.append(f"{where}: duplicate of description {previous}: {entry!r}")
            body = entry[len(prefix):] if entry.startswith(prefix) else entry
            for other in _other_class_mentions(body, key, patterns):
                problems.append(f"{where}: names another class {other!r}: {entry!r}")
    return problems


def save_descriptions(descriptions: Mapping[str, Sequence[str]], path: str | os.PathLike) -> None:
    """Write ``descriptions`` as 2-space-indented JSON (key order kept), atomically."""
    write_json(path, {key: list(entries) for key, entries in descriptions.items()})


_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+\s*[.):\]]|\d+\s+-)\s*")
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)


def _json_string_list(text: str) -> list[str] | None:
    """The list of strings in a JSON reply (a list, or an object holding one list), else None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        lists = [item for item in value.values() if isinstance(item, list)]
        value = lists[0] if len(lists) == 1 else None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def parse_description_list(reply: str) -> list[str]:
    """Extract candidate sentences from a language-model reply.

    Understands a JSON list of strings (optionally inside a ```json fence or wrapped in a
    one-key object) and numbered or bulleted lines; other lines (headings, remarks) are dropped.
    """
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    as_json = _json_string_list(text.strip())
    if as_json is None:
        start, end = text.find("["), text.rfind("]")
        as_json = _json_string_list(text[start:end + 1]) if 0 <= start < end else None
    if as_json is not None:
        return [item.strip() for item in as_json if item.strip()]
    items = []
    for line in text.splitlines():
        marker = _LIST_MARKER.match(line)
        if marker:
            item = line[marker.end():].strip().strip('"').strip(",").strip('"').strip()
            if item:
                items.append(item)
    return items


def normalise_description(
    text: str, class_key: str, prefix_template: str = DEFAULT_PREFIX_TEMPLATE
) -> str:
    """Lower-case one sentence, collapse whitespace, end it with a period, prefix the template.

    A sentence that already starts with the template sentence (any case, any punctuation after
    it) keeps a single prefix.
    Returns an empty string when nothing but the prefix is left.
    """
    prefix = description_prefix(class_key, prefix_template)
    stem = prefix.rstrip(".").lower()
    body = " ".join(text.lower().split()).strip().strip('"').strip()
    if body.startswith(stem):
        body = body[len(stem):].lstrip(".:,;- ")
    if not body:
        return ""
    if body[-1] not in ".!?":
        body += "."
    return f"{prefix} {body}"


def clean_descriptions(
    candidates: Sequence[str],
    class_key: str,
    class_keys: Sequence[str],
    prefix_template: str = DEFAULT_PREFIX_TEMPLATE,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Normalise candidate sentences; drop empty ones, duplicates and ones naming another class."""
    patterns = _mention_patterns(class_keys, aliases)
    prefix = description_prefix(class_key, prefix_template)
    kept: dict[str, str] = {}
    for candidate in candidates:
        description = normalise_description(candidate, class_key, prefix_template)
        if not description or _other_class_mentions(description[len(prefix):], class_key, patterns):
            continue
        kept.setdefault(dedupe_key(description), description)
    return list(kept.values())
