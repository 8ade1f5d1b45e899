"""Config loading: defaults, YAML chains, overrides and the errors for bad keys or values."""
from pathlib import Path

import pytest
import yaml

from excel.apps.ablation.sweep import load_sweep
from excel.config import ConfigError, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_published_values():
    voc = load_config(CONFIGS / "voc.yaml")
    assert (voc.tse.num_clusters, voc.cam.box_threshold, voc.lvc.start_iter, voc.train.max_iters) == (112, 0.79, 14000, 30000)
    assert len(voc.dataset.background_names) == 25 and voc.dataset.class_names[2] == "bird avian"
    coco = load_config(CONFIGS / "coco.yaml")
    assert (coco.tse.num_clusters, coco.cam.box_threshold, coco.lvc.start_iter, coco.train.max_iters) == (224, 0.88, 30000, 100000)
    assert len(coco.dataset.background_names) == 23 and coco.dataset.num_classes == 80
    assert coco.train.aff_switch_iter is None and coco.optim.warmup_iters == 200


@pytest.mark.parametrize("variant,changed", [
    ("full", {}),
    ("no_tse", {("tse", "enabled"): False}),
    ("no_svc", {("svc", "enabled"): False, ("lvc", "enabled"): False}),
    ("no_lvc", {("lvc", "enabled"): False}),
    ("static_only", {("tse", "enabled"): False, ("lvc", "enabled"): False}),
])
def test_the_voc_ablation_variants_change_only_their_switches(variant, changed):
    """The paper's module ablation (configs/ablations/voc.yaml): each variant is the published recipe with
    nothing but its switches changed."""
    base = load_config(CONFIGS / "voc.yaml")
    sweep = load_sweep(CONFIGS / "ablations" / "voc.yaml")
    assert set(sweep.variants) == {"full", "no_tse", "no_svc", "no_lvc", "static_only"}
    ablation = sweep.config(variant)
    for section in base:
        for key in (base[section] if hasattr(base[section], "keys") else [None]):
            if key is None:
                continue
            expected = changed.get((section, key), base[section][key])
            assert ablation[section][key] == expected, (section, key)


def test_overrides_and_unknown_keys():
    cfg = load_config(CONFIGS / "voc.yaml", ["train.max_iters=10", "tse.enabled=false"])
    assert cfg.train.max_iters == 10 and cfg.tse.enabled is False
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_iter' in the command line; valid keys: .*train.max_iters"):
        load_config(CONFIGS / "voc.yaml", ["train.max_iter=10"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.max_iters"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"_base_": str(CONFIGS / "voc.yaml"), "svc": {"layer": 4}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'svc.layer' in .*bad.yaml; valid keys: svc.enabled, svc.layers"):
        load_config(bad)


def test_class_list_length_must_match_num_classes():
    with pytest.raises(ConfigError, match=r"dataset.class_names has 20 entries but dataset.num_classes=21"):
        load_config(CONFIGS / "voc.yaml", ["dataset.num_classes=21"])


def test_lvc_requires_svc():
    with pytest.raises(ConfigError, match="lvc.enabled=true needs svc.enabled=true"):
        load_config(CONFIGS / "voc.yaml", ["svc.enabled=false"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "voc.yaml", ["train.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_class_file_sets_classes(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# my dataset\nkettle\nteapot: teapot, teakettle\n\nmug\n")
    cfg = load_config(CONFIGS / "custom_example.yaml", [f"dataset.class_file={classes}"])
    assert cfg.dataset.num_classes == 3
    assert list(cfg.dataset.categories) == ["kettle", "teapot", "mug"]
    assert list(cfg.dataset.class_names) == ["kettle", "teapot, teakettle", "mug"]
    classes.write_text("kettle\nkettle\n")
    with pytest.raises(ConfigError, match="line 2: class 'kettle' is listed twice"):
        load_config(CONFIGS / "custom_example.yaml", [f"dataset.class_file={classes}"])
    with pytest.raises(ConfigError, match="file not found"):
        load_config(CONFIGS / "custom_example.yaml", [f"dataset.class_file={tmp_path / 'none.txt'}"])


def test_config_text_round_trip_and_errors():
    from omegaconf import OmegaConf

    from excel.config import load_config_text

    demo = load_config(CONFIGS / "demo.yaml", ["dataset.root=/data/shapes"])
    text = OmegaConf.to_yaml(demo, resolve=True)
    again = load_config_text(text, "checkpoint run.pth", ["infer.flip=false"])
    assert OmegaConf.to_container(again.dataset) == OmegaConf.to_container(demo.dataset)
    assert again.infer.flip is False and again.tse.num_clusters == 16
    with pytest.raises(ConfigError, match="unknown config key 'tse.old_key' in checkpoint run.pth"):
        load_config_text(text.replace("tse:\n", "tse:\n  old_key: 1\n"), "checkpoint run.pth")
    with pytest.raises(ConfigError, match="the config in checkpoint run.pth must hold a mapping"):
        load_config_text("- a list\n", "checkpoint run.pth")
