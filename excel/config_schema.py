"""Every config key: its default (:data:`DEFAULTS`) and the values it accepts (:data:`RULES`).

docs/options.md is generated from these two tables (tools/options_reference.py).
"""
from __future__ import annotations

from typing import Any

from excel.classes import VOC_CATEGORIES
from excel.config_rules import Rule, float_rule, int_rule, list_rule, str_rule

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
