"""Text Semantic Enrichment: class embeddings, the knowledge-base bank and attribute hunting (docs/method.md §3)."""
import json
import re

import pytest
import torch
import torch.nn.functional as F

from excel.modeling import text_enrichment as tse
from excel.modeling.clip_loader import clip_tokenizer

CLASSES = ["disc", "square", "star"]


def write_descriptions(path, extra=""):
    data = {c: [f"a clean origami {c}. it is shape number {i}{extra}." for i in range(6)] for c in CLASSES}
    path.write_text(json.dumps(data))
    return path


def test_hunt_attributes_matches_plain_formula_and_keeps_published_count():
    torch.manual_seed(0)
    for K, dropped in ((112, 11), (224, 22)):
        text = F.normalize(torch.randn(4, 16), dim=-1)
        centers = torch.randn(K, 16)
        enriched = tse.hunt_attributes(text, centers, keep_ratio=0.9)
        logits = text @ centers.T
        for c in range(4):
            order = torch.argsort(logits[c], descending=True)
            kept = order[: K - dropped]
            weights = torch.softmax(logits[c, kept], 0)
            expected = F.normalize(weights @ centers[kept] + text[c], dim=0)
            torch.testing.assert_close(enriched[c], expected, atol=1e-6, rtol=0)


def test_hunt_attributes_keep_all():
    text = F.normalize(torch.randn(2, 8), dim=-1)
    centers = torch.randn(10, 8)
    expected = F.normalize(torch.softmax(text @ centers.T, -1) @ centers + text, dim=-1)
    torch.testing.assert_close(tse.hunt_attributes(text, centers, keep_ratio=1.0), expected)


def test_class_embeddings_average_normalised_templates(tiny_clip):
    tokenizer = clip_tokenizer("tiny-clip-test")
    templates = ["a clean origami {}.", "a photo of a {}."]
    got = tse.class_embeddings(tiny_clip, tokenizer, ["cat", "dog"], templates)
    for i, name in enumerate(["cat", "dog"]):
        with torch.no_grad():
            each = F.normalize(tiny_clip.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1)
        torch.testing.assert_close(got[i], F.normalize(each.mean(0), dim=0), atol=1e-6, rtol=0)


def test_text_matrix_enriches_foreground_only():
    fg, bg = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(2, 8), dim=-1)
    centers = torch.randn(5, 8)
    text = tse.text_matrix(fg, bg, centers, 0.9)
    torch.testing.assert_close(text[3:], bg)
    assert not torch.allclose(text[:3], fg)
    torch.testing.assert_close(tse.text_matrix(fg, bg, None), torch.cat([fg, bg]))


def _bank(tiny_clip, tmp_path, descriptions, k=4, bank_path=None, classes=CLASSES):
    return tse.load_or_build_bank(tiny_clip, clip_tokenizer("tiny-clip-test"), bank_path=bank_path,
                                  cache_path=tmp_path / "cache" / "bank.pt", descriptions_path=str(descriptions),
                                  class_keys=classes, num_clusters=k)


def test_bank_is_cached_and_rebuilt_when_inputs_change(tiny_clip, tmp_path, monkeypatch):
    descriptions = write_descriptions(tmp_path / "d.json")
    first = _bank(tiny_clip, tmp_path, descriptions)
    assert first["centers"].shape == (4, tiny_clip.text_projection.shape[1])

    calls = []
    real_build = tse.build_bank
    monkeypatch.setattr(tse, "build_bank", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    again = _bank(tiny_clip, tmp_path, descriptions)
    assert calls == [] and torch.equal(again["centers"], first["centers"])

    write_descriptions(descriptions, extra=" with a twist")
    changed = _bank(tiny_clip, tmp_path, descriptions)
    assert calls == [1] and changed["descriptions_sha256"] != first["descriptions_sha256"]

    other_k = _bank(tiny_clip, tmp_path, descriptions, k=5)
    assert calls == [1, 1] and other_k["centers"].shape[0] == 5


def test_bank_rebuilt_for_other_weights(tiny_clip, tmp_path):
    import copy

    descriptions = write_descriptions(tmp_path / "d.json")
    first = _bank(tiny_clip, tmp_path, descriptions)
    other = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        other.text_projection.mul_(2)
    rebuilt = _bank(other, tmp_path, descriptions)
    assert rebuilt["clip_fingerprint"] != first["clip_fingerprint"]


def test_existing_bank_file_is_used_as_is_and_checked(tiny_clip, tmp_path):
    D = tiny_clip.text_projection.shape[1]
    path = tmp_path / "given.pt"
    tse.save_bank({"centers": torch.randn(4, D)}, path)
    bank = _bank(tiny_clip, tmp_path, tmp_path / "no-descriptions-needed.json", bank_path=str(path))
    assert bank["centers"].shape == (4, D)
    with pytest.raises(tse.KnowledgeBankError, match="has 4 attribute centres but tse.num_clusters=7"):
        _bank(tiny_clip, tmp_path, tmp_path / "x.json", k=7, bank_path=str(path))
    tse.save_bank({"centers": torch.randn(4, D + 1)}, path)
    with pytest.raises(tse.KnowledgeBankError, match="built for another CLIP"):
        _bank(tiny_clip, tmp_path, tmp_path / "x.json", bank_path=str(path))
    tse.save_bank({"centers": torch.randn(4, D), "clip_fingerprint": "0" * 32}, path)
    with pytest.raises(tse.KnowledgeBankError, match="other CLIP weights"):
        _bank(tiny_clip, tmp_path, tmp_path / "x.json", bank_path=str(path))


def test_existing_bank_for_other_classes_is_refused(tiny_clip, tmp_path):
    descriptions = write_descriptions(tmp_path / "d.json")
    path = tmp_path / "given.pt"
    built = _bank(tiny_clip, tmp_path, descriptions, bank_path=str(path))     # built for CLASSES, saved at path
    assert built["classes"] == list(CLASSES)
    torch.testing.assert_close(_bank(tiny_clip, tmp_path, descriptions, bank_path=str(path))["centers"],
                               built["centers"])
    for other in ([*CLASSES[:-1], "teapot"], list(reversed(CLASSES)), list(CLASSES[:-1])):
        with pytest.raises(tse.KnowledgeBankError, match=re.escape(f"tse.bank: {path} was built for the classes "
                                                                   f"{list(CLASSES)} but dataset.categories is "
                                                                   f"{other}")):
            _bank(tiny_clip, tmp_path, descriptions, bank_path=str(path), classes=other)


def test_published_bank_formats_without_classes_are_accepted(tiny_clip, tmp_path):
    D = tiny_clip.text_projection.shape[1]
    centers = torch.randn(4, D)
    for name, content in (("list.pt", [centers.T.contiguous(), torch.zeros(3, 4)]), ("dict.pt", {"centers": centers})):
        torch.save(content, tmp_path / name)
        bank = _bank(tiny_clip, tmp_path, tmp_path / "unused.json", bank_path=str(tmp_path / name),
                     classes=["anything", "else"])
        torch.testing.assert_close(bank["centers"], centers)


def test_column_wise_bank_list_is_accepted(tmp_path):
    centers = torch.randn(6, 8)
    path = tmp_path / "list_bank.pt"
    torch.save([centers.T.contiguous(), torch.zeros(3, 6)], path)
    torch.testing.assert_close(tse.read_bank(path)["centers"], centers)


def test_too_many_clusters_is_a_clear_error(tiny_clip, tmp_path):
    descriptions = write_descriptions(tmp_path / "d.json")
    with pytest.raises(tse.KnowledgeBankError, match="tse.num_clusters=50 is larger than the number of descriptions"):
        _bank(tiny_clip, tmp_path, descriptions, k=50)


def test_published_bank_file_enriches_like_the_published_aggregation(tiny_clip, tmp_path):
    """A bank of the structure the authors publish (`attributes_text/*_embedding_bank.pth`: a list
    [D×K float64 centres stored column-wise, C×K float flags]) used through tse.bank: the text matrix equals
    the published aggregation written on the D×K matrix (sort, drop the lowest (1 − 0.9)·K, softmax, mix)."""
    D, K = tiny_clip.text_projection.shape[1], 20
    gen = torch.Generator().manual_seed(0)
    columns = F.normalize(torch.randn(K, D, generator=gen, dtype=torch.float64), dim=1).T.contiguous()
    flags = (torch.rand(len(CLASSES), K, generator=gen) > 0.7).float()
    path = tmp_path / "pascal_voc_desc_clip_ViT-B-16_gpt4.0_cluster_20_embedding_bank.pth"
    torch.save([columns, flags], path)

    bank = _bank(tiny_clip, tmp_path, tmp_path / "unused.json", k=K, bank_path=str(path))
    torch.testing.assert_close(bank["class_clusters"], flags)
    fg = F.normalize(torch.randn(len(CLASSES), D, generator=gen), dim=1)
    bg = F.normalize(torch.randn(2, D, generator=gen), dim=1)
    text = tse.text_matrix(fg, bg, bank["centers"], keep_ratio=0.9)

    bank32 = columns.float()                                        # D×K, as the published code multiplies it
    logits = fg @ bank32
    order = logits.argsort(dim=-1, descending=True)
    drop = int((1 - 0.9) * K)
    weights = torch.zeros_like(logits)
    for c in range(len(CLASSES)):
        kept = order[c, :K - drop]
        weights[c, kept] = torch.softmax(logits[c, kept], dim=0)
    expected = F.normalize(torch.cat([weights @ bank32.T + fg, bg]), dim=1)
    torch.testing.assert_close(text, expected, rtol=1e-5, atol=1e-6)


def test_published_bank_with_inconsistent_flags_is_a_clear_error(tmp_path):
    path = tmp_path / "bank.pth"
    torch.save([torch.randn(8, 6, dtype=torch.float64), torch.zeros(3, 5)], path)
    with pytest.raises(tse.KnowledgeBankError, match=r"class flags of shape \(3, 5\); expected C×6"):
        tse.read_bank(path)
