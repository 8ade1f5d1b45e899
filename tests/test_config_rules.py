"""Every config key has a rule and a meaning; bad values fail at load with one line naming key, value and what to use."""
from pathlib import Path

import pytest
import torch
import yaml

from excel.apps.ablation.sweep import check_variants, load_sweep
from excel.config import ConfigError, load_config
from excel.config_schema import DEFAULTS, MEANINGS, RULES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def dotted_keys(node, prefix=""):
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    return [key for name, value in node.items() for key in dotted_keys(value, f"{prefix}{name}.")]


def test_every_default_key_has_a_rule_and_every_rule_a_key():
    keys = set(dotted_keys(DEFAULTS))
    assert keys - set(RULES) == set(), "give these DEFAULTS keys a rule in excel.config_schema.RULES"
    assert set(RULES) - keys == set(), "these rules name keys that DEFAULTS does not have"
    assert keys - set(MEANINGS) == set(), "say what these DEFAULTS keys mean in excel.config_schema.MEANINGS"
    assert set(MEANINGS) - keys == set(), "these meanings name keys that DEFAULTS does not have"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_pass(name):
    load_config(CONFIGS / name, ["dataset.class_file=null"])


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "ablations").glob("*.yaml")))
def test_shipped_sweeps_and_every_variant_pass(name):
    sweep = load_sweep(CONFIGS / "ablations" / name)
    check_variants(sweep, [])


@pytest.mark.parametrize("override,message", [
    ("train.max_iters=abc", "train.max_iters='abc' is not valid: use an integer >= 1 (default: 30000)"),
    ("train.max_iters=-5", "train.max_iters=-5 is not valid: use an integer >= 1"),
    ("train.max_iters=2.5", "train.max_iters=2.5 is not valid: use an integer >= 1"),
    ("train.batch_size=0", "train.batch_size=0 is not valid: use an integer >= 1 (default: 4)"),
    ("train.eval_interval=0", "train.eval_interval=0 is not valid: use an integer >= 1"),
    ("train.log_interval=0", "train.log_interval=0 is not valid: use an integer >= 1"),
    ("precision=fp8", "precision='fp8' is not valid: use one of fp32, bf16, fp16 (default: fp32)"),
    ("train.amp=true", "config key 'train.amp' in the command line is no longer read: it was replaced by the "
                       "top-level key precision"),
    ("train.eval_max_images=0", "train.eval_max_images=0 is not valid: use an integer >= 1, or null"),
    ("train.seed=null", "train.seed=null is not valid: use an integer >= 0 (default: 0)"),
    ("tse.num_clusters=0", "tse.num_clusters=0 is not valid: use an integer >= 1 (default: 112)"),
    ("tse.keep_ratio=0", "tse.keep_ratio=0 is not valid: use a number in (0, 1]"),
    ("par.iters=-1", "par.iters=-1 is not valid: use an integer >= 0 (default: 20)"),
    ("par.dilations=[1,0]", "par.dilations=[1, 0] is not valid: use a non-empty list of integers >= 1"),
    ("infer.scales=[]", "infer.scales=[] is not valid: use a non-empty list of numbers > 0"),
    ("infer.scales=[1.0,-0.5]", "infer.scales=[1.0, -0.5] is not valid: use a non-empty list of numbers > 0"),
    ("crf.workers=-1", "crf.workers=-1 is not valid: use an integer >= 0 (default: 2)"),
    ("optim.lr=0", "optim.lr=0 is not valid: use a number > 0"),
    ("optim.lr=.inf", "optim.lr=inf is not valid: use a number > 0"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] is not valid: use a list of 2 numbers in [0, 1)"),
    ("cam.box_threshold=1.5", "cam.box_threshold=1.5 is not valid: use a number in [0, 1]"),
    ("head.dropout=1", "head.dropout=1 is not valid: use a number in [0, 1)"),
    ("dataset.name=pascal", "dataset.name='pascal' is not valid: use one of voc, coco, custom (default: voc)"),
    ("dataset.num_classes=300", "dataset.num_classes=300 is not valid: use an integer in [1, 254]"),
    ("dataset.split=''", "dataset.split='' is not valid: use a non-empty string"),
    ("work_dir=null", "work_dir=null is not valid: use a non-empty string"),
    ("dataset.class_file=5", "dataset.class_file=5 is not valid: use a non-empty string, or null"),
    ("clip.templates=[]", "clip.templates=[] is not valid: use a non-empty list of non-empty strings"),
    ("device=gpu", "device='gpu' is not valid: use auto, cpu, cuda or cuda:N (default: auto)"),
    ("device=3", "device=3 is not valid: use auto, cpu, cuda or cuda:N"),
    ("dataset=5", "dataset=5 is not valid: dataset is a section"),
    ("train=5", "train=5 is not valid: train is a section; set its keys as train.<key>=value"),
    ("train.max_iters=${nowhere}", "train.max_iters: cannot read its value"),
    ("infer.scales=[0.5,", "override 'infer.scales=[0.5,' cannot be parsed"),
])
def test_bad_value_fails_at_load_with_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "voc.yaml", [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_bad_value_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"_base_": str(CONFIGS / "voc.yaml"), "train": {"batch_size": "four"}}))
    with pytest.raises(ConfigError, match=r"train.batch_size='four' is not valid: use an integer >= 1"):
        load_config(path)


def test_nullable_and_numeric_widening_accepted():
    cfg = load_config(CONFIGS / "voc.yaml", ["train.aff_switch_iter=null", "optim.lr=1", "train.eval_max_images=3",
                                             "infer.scales=[1]"])
    assert cfg.train.aff_switch_iter is None and cfg.optim.lr == 1 and list(cfg.infer.scales) == [1]


@pytest.mark.parametrize("override,message", [
    ("train.scale_range=[2.0,1.0]", r"train.scale_range=\[2.0, 1.0\]: the first \(smallest\) scale"),
    ("head.decoder_heads=3", "head.adapter_dim=256 must be a multiple of head.decoder_heads=3"),
    ("clip.templates=['a photo of {x}']", r"clip.templates entry 'a photo of \{x\}' must contain exactly one"),
    ("clip.templates=['a photo']", r"clip.templates entry 'a photo' must contain exactly one '\{\}'"),
])
def test_cross_key_checks(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "voc.yaml", [override])


def test_cuda_device_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda: CUDA is not available .*use device=cpu or device=auto"):
        load_config(CONFIGS / "voc.yaml", ["device=cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"device=cuda:7: only 1 GPU\(s\) are visible \(cuda:0 to cuda:0"):
        load_config(CONFIGS / "voc.yaml", ["device=cuda:7"])
    assert load_config(CONFIGS / "voc.yaml", ["device=cuda:0"]).device == "cuda:0"


def test_binary_class_file_is_a_config_error(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\x9f\x00\xff binary")
    with pytest.raises(ConfigError, match=r"dataset.class_file: .*classes.txt is not UTF-8 text"):
        load_config(CONFIGS / "custom_example.yaml", [f"dataset.class_file={classes}"])


def test_base_must_name_a_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("_base_: 5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: _base_=5 must name another YAML file"):
        load_config(path)


def test_long_default_list_is_cut_in_the_message():
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "voc.yaml", ["dataset.categories=cat"])
    assert str(info.value) == ("dataset.categories='cat' is not valid: use a non-empty list of non-empty strings "
                               "(default: ['aeroplane', 'bicycle', 'bird', 'boat', ... (20 entries)])")
