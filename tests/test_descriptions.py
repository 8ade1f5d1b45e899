import json
import os
from pathlib import Path

import pytest

from excel.classes import COCO_CATEGORIES, VOC_CATEGORIES
from excel.modeling.description_file import load_descriptions
from excel.prep.description_authoring import (
    clean_descriptions,
    find_other_class_mentions,
    normalise_description,
    parse_description_list,
    save_descriptions,
    validate_descriptions,
)

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
SHIPPED = [("voc_descriptions.json", VOC_CATEGORIES), ("coco_descriptions.json", COCO_CATEGORIES)]


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def prefixed(key: str, bodies: list[str]) -> list[str]:
    return [f"a clean origami {key}. {body}" for body in bodies]


@pytest.mark.parametrize("file_name,class_keys", SHIPPED)
def test_shipped_file_has_twenty_unique_prefixed_lower_case_descriptions(file_name, class_keys):
    path = PROMPTS / file_name
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert list(raw) == list(class_keys)
    loaded = load_descriptions(path, class_keys, per_class=20)
    assert list(loaded) == list(class_keys)
    for key in class_keys:
        entries = loaded[key]
        assert len(entries) == 20 and len(set(entries)) == 20, key
        for entry in entries:
            assert entry.startswith(f"a clean origami {key}. "), entry
            assert entry == entry.lower() and entry.endswith("."), entry
            assert len(entry) > len(f"a clean origami {key}. ") + 5, entry


@pytest.mark.parametrize("file_name,class_keys", SHIPPED)
def test_shipped_file_passes_review(file_name, class_keys):
    loaded = load_descriptions(PROMPTS / file_name, class_keys, per_class=20)
    assert validate_descriptions(loaded, class_keys) == []


def test_shipped_file_is_two_space_indented():
    text = (PROMPTS / "voc_descriptions.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "aeroplane": [\n    "a clean origami aeroplane. ')


def test_load_keeps_class_order_and_ignores_other_classes(tmp_path):
    content = {"dog": prefixed("dog", ["it barks."]), "cat": prefixed("cat", ["it purrs."]), "cow": ["x"]}
    loaded = load_descriptions(write_json(tmp_path / "d.json", content), ["cat", "dog"])
    assert list(loaded) == ["cat", "dog"]
    assert loaded["cat"] == content["cat"]


def test_load_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_descriptions(path, ["cat"])


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"cat": ["a", }', "not valid JSON"),
        ('["a clean origami cat. it purrs."]', "JSON object"),
        ('{"cat": "a clean origami cat. it purrs."}', "list of strings"),
        ('{"cat": ["a clean origami cat. it purrs.", 3]}', "list of strings"),
        ('{"dog": ["a clean origami dog. it barks."]}', "no descriptions for class 'cat'"),
        ('{"cat": []}', "no descriptions for class 'cat'"),
        ('{"cat": ["a clean origami cat. it purrs.", "a clean origami cat. it  purrs."]}', "twice"),
    ],
)
def test_load_bad_content_raises_naming_file(tmp_path, content, message):
    path = tmp_path / "broken_descriptions.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        load_descriptions(path, ["cat"])
    assert str(path) in str(error.value) and message in str(error.value)


def test_load_too_few_descriptions_raises_naming_file(tmp_path):
    path = write_json(tmp_path / "short.json", {"cat": prefixed("cat", ["it purrs.", "it naps."])})
    with pytest.raises(ValueError, match=r"short\.json.*'cat' has 2 descriptions, at least 3"):
        load_descriptions(path, ["cat"], per_class=3)
    assert len(load_descriptions(path, ["cat"], per_class=2)["cat"]) == 2


def test_validate_reports_each_kind_of_problem():
    descriptions = {
        "cat": prefixed("cat", ["it purrs.", "it purrs."]) + ["a clean origami dog. it barks."],
        "horse": prefixed("horse", ["its riders sit on a saddle.", "It Has A Mane."]),
        "person": [],
        "zebra": prefixed("zebra", ["it has stripes."]),
    }
    problems = validate_descriptions(descriptions, ["cat", "horse", "person"], per_class=3)
    joined = "\n".join(problems)
    assert "unexpected class 'zebra'" in joined
    assert "class 'horse': 2 descriptions, expected 3" in joined
    assert "class 'cat', description 1: duplicate of description 0" in joined
    assert "class 'cat', description 2: does not start with 'a clean origami cat.'" in joined
    assert "class 'horse', description 0: names another class 'person'" in joined
    assert "class 'horse', description 1: not lower case" in joined
    assert "class 'person': no descriptions" in joined
    assert len(problems) == 7


def test_validate_accepts_a_clean_knowledge_base():
    descriptions = {"cat": prefixed("cat", ["it purrs.", "it has whiskers."]),
                    "horse": prefixed("horse", ["it wears a saddle.", "it has a mane."])}
    assert validate_descriptions(descriptions, ["cat", "horse"], per_class=2) == []


def test_validate_flags_nothing_after_prefix():
    problems = validate_descriptions({"cat": ["a clean origami cat.  "]}, ["cat"], per_class=None)
    assert problems == ["class 'cat', description 0: nothing follows the prefix"]


@pytest.mark.parametrize(
    "description,class_key,expected",
    [
        ("a clean origami horse. a jockey rides it.", "horse", ["person"]),
        ("a clean origami horse. it wears a saddle.", "horse", []),
        ("a clean origami teddy bear. it is a soft teddy bear toy.", "teddy bear", []),
        ("a clean origami teddy bear. it looks like a small bear.", "teddy bear", ["bear"]),
        ("a clean origami hot dog. a hot dog has a sausage.", "hot dog", []),
        ("a clean origami dog. it steals hot dogs.", "dog", ["hot dog"]),
        ("a clean origami carrot. it lies next to knives and forks.", "carrot", ["fork", "knife"]),
        ("a clean origami bird. it sits on a bird-table.", "bird", ["dining table"]),
        ("a clean origami cat. it catches its prey.", "cat", []),
        ("a clean origami bus. it has buses behind it.", "bus", []),
    ],
)
def test_find_other_class_mentions(description, class_key, expected):
    assert sorted(find_other_class_mentions(description, class_key, COCO_CATEGORIES)) == expected


def test_mentions_use_spaced_form_of_joined_voc_keys():
    found = find_other_class_mentions("a clean origami chair. it stands at a dining table.", "chair", VOC_CATEGORIES)
    assert found == ["diningtable"]


def test_save_writes_ordered_two_space_json_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "nested" / "out.json"
    content = {"dog": ["b", "a"], "cat": ["c"]}
    save_descriptions(content, path)
    assert path.read_text(encoding="utf-8") == '{\n  "dog": [\n    "b",\n    "a"\n  ],\n  "cat": [\n    "c"\n  ]\n}\n'
    assert os.listdir(path.parent) == ["out.json"]


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = write_json(tmp_path / "out.json", {"cat": ["old"]})

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_descriptions({"cat": ["new"]}, path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"cat": ["old"]}
    assert os.listdir(tmp_path) == ["out.json"]


@pytest.mark.parametrize(
    "reply",
    [
        '["it has fur.", "it has a tail."]',
        'Here you go:\n```json\n["it has fur.", "it has a tail."]\n```\nEnjoy!',
        '{"descriptions": ["it has fur.", "it has a tail."]}',
        "Sure, here are two:\n1. it has fur.\n2) it has a tail.\nHope this helps.",
        "- it has fur.\n* \"it has a tail.\",",
        'The list: ["it has fur.", "it has a tail."] as asked.',
    ],
)
def test_parse_description_list_formats(reply):
    assert parse_description_list(reply) == ["it has fur.", "it has a tail."]


def test_parse_description_list_without_a_list_is_empty():
    assert parse_description_list("I cannot help with that.") == []


@pytest.mark.parametrize(
    "text,expected",
    [
        ("It Has  Fur", "a clean origami cat. it has fur."),
        ("a clean origami cat. it has fur.", "a clean origami cat. it has fur."),
        ("A Clean Origami Cat: it has fur!", "a clean origami cat. it has fur!"),
        ('"it has fur."', "a clean origami cat. it has fur."),
        ("a clean origami cat.", ""),
        ("   ", ""),
    ],
)
def test_normalise_description(text, expected):
    assert normalise_description(text, "cat") == expected


def test_clean_descriptions_dedupes_and_drops_other_class_mentions():
    candidates = ["it has fur.", "It has fur", "it chases the dog.", "", "it has a tail."]
    assert clean_descriptions(candidates, "cat", ["cat", "dog"]) == [
        "a clean origami cat. it has fur.",
        "a clean origami cat. it has a tail.",
    ]
