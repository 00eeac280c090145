"""Recipes (conf/recipe/): `method=X dataset=Y [variant=Z]` composes the published run, every value of which is
checked here against the reference's own config file, named beside the value. The values below are typed from
the releases (their config files and scripts), not read back from conf/: a recipe that drifts fails here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sslseg.errors import UserError
from tests.conftest import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
# Published recipes: the files with a `recipe:` section. The others are runs no paper published: the datasets'
# defaults (default_<dataset>.yaml) and a method's own run on a dataset (unimatch_v2_toy.yaml: the tiny ViT).
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml")
                 if not p.stem.startswith("default_") and "recipe" in OmegaConf.load(p))
UNPUBLISHED = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml") if p.stem not in RECIPES)
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


def split_name(name: str) -> tuple[str, str, str | None]:
    """`dars_cityscapes_crop361` -> (dars, cityscapes, crop361); `unimatch_v2_pascal_small` -> (unimatch_v2, pascal,
    small): the longest method name that prefixes it (method names may hold underscores)."""
    method = max((m for m in [*METHODS, name.split("_")[0]] if name.startswith(m + "_")), key=len)
    dataset, _, variant = name[len(method) + 1:].partition("_")
    return method, dataset, variant or None


def recipe_overrides(name: str) -> list[str]:
    """`dars_cityscapes_crop361` -> method=dars dataset=cityscapes variant=crop361."""
    method, dataset, variant = split_name(name)
    return [f"method={method}", f"dataset={dataset}"] + ([f"variant={variant}"] if variant else [])


def compose_recipe(name: str, *more: str):
    return compose_cfg([*recipe_overrides(name), *more])


def _value(cfg, key: str):
    """A config value; `stages.<stage>.<key>`: the key in that stage's own config (sslseg.run.stages.stage_config)."""
    if key.startswith("stages."):
        from sslseg.run.recipes import stage_config

        _, stage, rest = key.split(".", 2)
        cfg = stage_config(cfg, cfg.method.stages[stage], 0)
        key = rest
    if "[" in key:  # a dict key with a dot: optim.lr_mult[backbone.layer4]
        key, _, inner = key.partition("[")
        return OmegaConf.select(cfg, key)[inner.rstrip("]")]
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# --- the references' values, each with the file it comes from -------------------------------------------------
UNIMATCH = "LiheYoung/UniMatch configs/{}.yaml"
UNIMATCH_CODE = "LiheYoung/UniMatch unimatch.py (SGD, momentum 0.9, wd 1e-4, poly 0.9 after each step, fp32)"
UNIMATCH_README = "LiheYoung/UniMatch README (4 GPUs) + configs (batch_size 2 per GPU)"


def _unimatch_family(dataset: str, crop: int, lr: float, head: float, epochs: int, split: str, thresh: float | None,
                     criterion: dict, backbone: str, cfg_file: str) -> list[tuple]:
    rows = [
        ("dataset.crop_size", crop, cfg_file), ("optim.lr", lr, cfg_file), ("optim.lr_mult.head", head, cfg_file),
        ("optim.lr_mult.backbone", 1.0, UNIMATCH_CODE), ("dataset.epochs", epochs, cfg_file),
        ("criterion", criterion, cfg_file), ("backbone.name", backbone, cfg_file),
        ("backbone.output_stride", 16, cfg_file),
        ("model.name", "deeplabv3plus", UNIMATCH_CODE), ("model.aspp_dilations", [6, 12, 18], cfg_file),
        ("data.global_batch_size", 8, UNIMATCH_README), ("optim._target_", "torch.optim.SGD", UNIMATCH_CODE),
        ("optim.momentum", 0.9, UNIMATCH_CODE), ("optim.weight_decay", 1e-4, UNIMATCH_CODE),
        ("optim.poly_power", 0.9, UNIMATCH_CODE), ("method.poly_lag", 1, UNIMATCH_CODE),
        ("trainer.precision", "32-true", UNIMATCH_CODE), ("validation.every_n_epochs", 1, UNIMATCH_CODE),
        ("recipe.reported", "best", UNIMATCH_CODE + " (best.pth: the best epoch)"), ("split", split, cfg_file),
        ("dataset.eval.mode", "sliding" if dataset == "cityscapes" else "whole",
         "LiheYoung/UniMatch supervised.py evaluate"),
    ]
    if thresh is not None:
        rows.append(("method.conf_thresh", thresh, cfg_file))
    if dataset == "cityscapes":
        rows += [("dataset.eval.crop_size", 801, cfg_file),
                 ("dataset.eval.stride_ratio", 0.6667, "supervised.py: int(801 * 2/3)")]
    return rows


OHEM_200K = {"name": "ohem", "thresh": 0.7, "min_kept": 200000, "min_kept_images": 2}
CE = {"name": "ce"}
PASCAL = dict(dataset="pascal", crop=321, lr=0.001, head=10.0, epochs=80, split="1464", criterion=CE,
              backbone="resnet101")
CITY = dict(dataset="cityscapes", crop=801, lr=0.005, head=1.0, epochs=240, split="1_16", criterion=OHEM_200K,
            backbone="resnet101")
COCO = dict(dataset="coco", crop=513, lr=0.004, head=10.0, epochs=30, split="1_512", criterion=CE,
            backbone="xception65")

def _with(rows: list[tuple], *changed: tuple) -> list[tuple]:
    """`rows` with the rows of the same keys replaced by `changed`."""
    keys = {key for key, _, _ in changed}
    return [row for row in rows if row[0] not in keys] + list(changed)


REFERENCE: dict[str, list[tuple]] = {}
for _method in ("unimatch", "fixmatch"):
    REFERENCE[f"{_method}_pascal"] = _unimatch_family(**PASCAL, thresh=0.95, cfg_file=UNIMATCH.format("pascal"))
    REFERENCE[f"{_method}_pascal_blended"] = _with(
        REFERENCE[f"{_method}_pascal"], ("split", "1_16", "LiheYoung/UniMatch training-logs Blended-Split-Size321"))
    REFERENCE[f"{_method}_cityscapes"] = _unimatch_family(**CITY, thresh=0.0, cfg_file=UNIMATCH.format("cityscapes"))
    REFERENCE[f"{_method}_coco"] = _unimatch_family(**COCO, thresh=0.95, cfg_file=UNIMATCH.format("coco"))

DAW = "yuisuen/DAW configs/{}.yaml"
REFERENCE["daw_pascal"] = _unimatch_family(**(PASCAL | {"crop": 513}), thresh=None, cfg_file=DAW.format("pascal")) + [
    ("method.teacher.decay", 0.999, "yuisuen/DAW daw.py (EMA model 0.999)"),
    ("method.evaluate", "both", "yuisuen/DAW daw.py (online and EMA evaluated, both write best.pth)")]
REFERENCE["daw_pascal_blended"] = _with(REFERENCE["daw_pascal"], ("split", "1_16", "yuisuen/DAW scripts/train.sh"))
REFERENCE["daw_cityscapes"] = _unimatch_family(**CITY, thresh=None, cfg_file=DAW.format("cityscapes"))
REFERENCE["daw_coco"] = _unimatch_family(**COCO, thresh=None, cfg_file=UNIMATCH.format("coco") + " (DAW has none)")

DSSN_VOC, DSSN_CITY = "kunzhan/DSSN voc/configs/pascal.yaml", "kunzhan/DSSN city/configs/cityscapes.yaml"
DSSN_CODE = "kunzhan/DSSN voc/DSSN.py"
REFERENCE["dssn_pascal"] = _unimatch_family(**(PASCAL | {"crop": 513, "lr": 0.002, "epochs": 100}), thresh=None,
                                            cfg_file=DSSN_VOC) + [
    ("data.strong_aug.extra_ops", 3, DSSN_VOC + " (num_aug 3, random number of ops)"),
    ("method.selection", "class_aware", DSSN_CODE + " (get_adaptive_binary_mask)"),
    ("method.class_aware.ratio", 0.96, DSSN_CODE), ("method.class_aware.min_confidence", 0.92, DSSN_CODE),
    ("method.teacher.decay", 0.996, DSSN_CODE + " (keep_rate)"), ("method.evaluate", "both", DSSN_CODE)]
REFERENCE["dssn_pascal_blended"] = _with(REFERENCE["dssn_pascal"],
                                         ("split", "1_16", "kunzhan/DSSN voc/exp/pascal/DSSN/r101/1_16"))
REFERENCE["dssn_cityscapes"] = _with(_unimatch_family(
    **(CITY | {"criterion": {"name": "ohem", "thresh": 0.7, "min_kept": 100000, "min_kept_images": 1}}), thresh=0.0,
    cfg_file=DSSN_CITY) + [
    ("method.selection", "threshold", "kunzhan/DSSN city/DSSN.py (conf >= conf_thresh)"),
    ("method.teacher.copy_epochs", 5, "kunzhan/DSSN city/DSSN.py (epoch < 5: keep_rate 0)"),
    ("dataset.eval.window", "truncated", "kunzhan/DSSN city/supervised.py (clipped border windows)"),
    ("data.global_batch_size", 8, "kunzhan/DSSN city R101 logs (8 GPUs x 1)")], ("dataset.eval.window", "truncated",
    "kunzhan/DSSN city/supervised.py (clipped border windows)"))

DDFP = "Gavinwxy/DDFP exp/pascal/732/exp/config.yaml"
DDFP_CODE = "Gavinwxy/DDFP train_ddfp_pascal.py"
REFERENCE["ddfp_pascal"] = [
    ("split", "732", DDFP), ("dataset.crop_size", 513, DDFP), ("data.global_batch_size", 16, DDFP + " (4 GPUs x 4)"),
    ("optim._target_", "torch.optim.SGD", DDFP), ("optim.lr", 0.001, DDFP), ("optim.lr_mult.head", 10.0, DDFP_CODE),
    ("optim.momentum", 0.9, DDFP), ("optim.weight_decay", 1e-4, DDFP), ("optim.poly_power", 0.9, DDFP),
    ("method.poly_lag", 0, DDFP_CODE + " (U2PL's scheduler steps before the optimizer)"), ("dataset.epochs", 80, DDFP),
    ("criterion", CE, DDFP), ("method.conf_thresh", 0.95, DDFP), ("method.eps", 4.0, DDFP),
    ("backbone.name", "resnet101", DDFP), ("method.network.decoder", "u2pl_deeplabv3plus", DDFP_CODE),
    ("trainer.precision", "16-mixed", DDFP_CODE + " (autocast + GradScaler)"),
    ("dataset.eval.mode", "center_crop", DDFP_CODE), ("dataset.eval.crop_size", 513, DDFP_CODE),
    ("validation.every_n_epochs", 4, DDFP_CODE + " ((epoch + 1) % 4 == 0)"), ("recipe.reported", "best", DDFP_CODE),
    ("method.flow.optim._target_", "torch.optim.Adam", DDFP_CODE), ("method.flow.optim.lr", 0.001, DDFP),
    ("method.flow.optim.betas", [0.5, 0.9], DDFP_CODE), ("method.flow.grad_clip", 50.0, DDFP),
    ("method.flow.samples", 20480, DDFP_CODE), ("method.flow.samples_images", 4, DDFP + " (batch_size 4 per GPU)"),
]
REFERENCE["ddfp_cityscapes"] = [  # no release config (its issue #6): train_ddfp_city.py with UniMatch's Cityscapes
    ("dataset.crop_size", 801, UNIMATCH.format("cityscapes")), ("optim.lr", 0.005, UNIMATCH.format("cityscapes")),
    ("optim.lr_mult.head", 1.0, "Gavinwxy/DDFP train_ddfp_city.py (times = 1)"), ("criterion", OHEM_200K,
    UNIMATCH.format("cityscapes")), ("dataset.eval.window", "truncated", "Gavinwxy/DDFP train_ddfp_city.py"),
    ("trainer.precision", "16-mixed", "Gavinwxy/DDFP train_ddfp_city.py"), ("validation.every_n_epochs", 4,
    "Gavinwxy/DDFP train_ddfp_city.py"), ("data.global_batch_size", 8, UNIMATCH_README)]

V2 = "LiheYoung/UniMatch-V2 configs/{}.yaml"
V2_CODE = ("LiheYoung/UniMatch-V2 unimatch_v2.py (AdamW betas (0.9, 0.999), weight_decay 0.01, head at lr x lr_multi, "
           "poly 0.9 set after each step, EMA min(1 - 1/(i+1), 0.996), flip(0) partners, both networks validated, "
           "fp32)")
V2_LOGS = "LiheYoung/UniMatch-V2 training-logs (ngpus 4, lock_backbone False)"


def _unimatch_v2(dataset: str, crop: int, epochs: int, per_gpu: int, split: str, criterion: dict,
                 size: str = "base") -> list[tuple]:
    cfg_file = V2.format(dataset)
    rows = [
        ("dataset.crop_size", crop, cfg_file), ("dataset.epochs", epochs, cfg_file), ("split", split, V2_LOGS),
        ("data.global_batch_size", per_gpu * 4, cfg_file + " batch_size per GPU x " + V2_LOGS),
        ("optim._target_", "torch.optim.AdamW", V2_CODE), ("optim.lr", 5e-6, cfg_file),
        ("optim.lr_mult.head", 40.0, cfg_file + " lr_multi"), ("optim.lr_mult.backbone", 1.0, V2_CODE),
        ("optim.betas", [0.9, 0.999], V2_CODE), ("optim.weight_decay", 0.01, V2_CODE),
        ("optim.poly_power", 0.9, V2_CODE), ("method.poly_lag", 1, V2_CODE), ("criterion", criterion, cfg_file),
        ("method.conf_thresh", 0.95, cfg_file), ("method.mix_source", "flip", V2_CODE),
        ("method.teacher.schedule", "ramp", V2_CODE), ("method.teacher.decay", 0.996, V2_CODE),
        ("method.teacher.train_mode_epochs", 0, V2_CODE + " (model_ema.eval())"), ("method.kept_pairs", 0.5,
        "LiheYoung/UniMatch-V2 model/semseg/dpt.py (num_kept = int(bs // 2 * (1 - 0.5)))"),
        ("method.loss_weights", {"x": 1.0, "s": 1.0}, V2_CODE + " ((loss_x + loss_u_s) / 2)"),
        ("method.evaluate", "both", V2_CODE), ("backbone.name", f"dinov2_{size}", V2_LOGS + " backbone"),
        ("backbone.frozen", False, V2_LOGS), ("model.name", "dpt", cfg_file), ("model.features", None,
        "DPT's width from the encoder: LiheYoung/UniMatch-V2 unimatch_v2.py model_configs"),
        ("trainer.precision", "32-true", V2_CODE), ("validation.every_n_epochs", 1, V2_CODE),
        ("recipe.reported", "best", V2_CODE + " (previous_best, previous_best_ema)"),
        ("dataset.eval.mode", "sliding" if dataset == "cityscapes" else "whole",
         "LiheYoung/UniMatch-V2 unimatch_v2.py eval_mode"),
    ]
    if dataset == "cityscapes":
        rows += [("dataset.eval.crop_size", 798, "supervised.py evaluate: grid = crop_size"),
                 ("dataset.eval.stride_ratio", 0.6667, "supervised.py: int(grid * 2 / 3)"),
                 ("dataset.eval.window", "shifted", "supervised.py: col = min(col + stride, w - grid)")]
    else:
        rows.append(("dataset.eval.multiplier", 14, "LiheYoung/UniMatch-V2 unimatch_v2.py evaluate(multiplier=14)"))
    return rows


V2_RUNS = {"pascal": dict(crop=518, epochs=60, per_gpu=4, split="1464", criterion=CE),
           "cityscapes": dict(crop=798, epochs=180, per_gpu=2, split="1_16", criterion=OHEM_200K),
           "coco": dict(crop=518, epochs=20, per_gpu=4, split="1_512", criterion=CE),
           "ade20k": dict(crop=518, epochs=60, per_gpu=2, split="1_64", criterion=CE)}
for _dataset, _run in V2_RUNS.items():
    REFERENCE[f"unimatch_v2_{_dataset}"] = _unimatch_v2(_dataset, **_run)
    for _size in ("small", "large"):
        REFERENCE[f"unimatch_v2_{_dataset}_{_size}"] = _unimatch_v2(_dataset, **_run, size=_size)

DARS_VOC = "CVMI-Lab/DARS config/voc2012/*psp50_voc_split1464_crop321*.yaml"
DARS_CS713, DARS_CS713_4 = ("CVMI-Lab/DARS config/cityscapes/*psp50_cityscapes_split8_crop713*.yaml",
                            "CVMI-Lab/DARS config/cityscapes/*psp50_cityscapes_split4_crop713*.yaml")
DARS_CS361, DARS_CS361_4 = ("CVMI-Lab/DARS config/cityscapes/*psp50_cityscapes_split8_crop361*.yaml",
                            "CVMI-Lab/DARS config/cityscapes/*psp50_cityscapes_split4_crop361*.yaml")
DARS_V2 = "CVMI-Lab/DARS config/cityscapes/*deeplabv2_cityscapes_split8_crop361*.yaml"
DARS_TRAIN = "CVMI-Lab/DARS tool/train.py"


def _dars(src: str, split: str, crop: int, lr: float, ratios, scales, base: int, starts, freq: int, batches,
          backbone: str = "resnet50_psp", model: str = "pspnet") -> list[tuple]:
    rows = [("split", split, src), ("dataset.crop_size", crop, src), ("optim.lr", lr, src),
            ("optim.lr_mult.head", 10.0, DARS_TRAIN + " (modules_new at base_lr x 10)"),
            ("optim.momentum", 0.9, src), ("optim.weight_decay", 1e-4, src),
            ("method.poly_lag", 0, "semseg poly_learning_rate"), ("backbone.name", backbone, src),
            ("model.name", model, src), ("trainer.precision", "32-true", src + " (apex O0)"),
            ("method.stages.pseudo1.labeling_ratio", ratios[0], src.replace("*", "gen_pseudo_label_*") + " round 1"),
            ("method.stages.pseudo2.labeling_ratio", ratios[1], src.replace("*", "gen_pseudo_label_*") + " round 2"),
            ("dataset.eval.mode", "sliding", src + " (evaluate_full_size)"), ("dataset.eval.base_size", base, src),
            ("method.generation.base_size", base, src), ("dataset.eval.flip", True, "semseg validate_full_size.py"),
            ("dataset.eval.window", "centred", "semseg util/validate_full_size.py (padded around the image)"),
            ("method.generation.window", "centred", "CVMI-Lab/DARS tool/gen_pseudo_label.py (the same scale_process)"),
            ("recipe.reported", "best", DARS_TRAIN + " (best_val_miou)")]
    for i, (round_, scale, start) in enumerate(zip(("round0", "round1", "round2"), scales, starts)):
        round_file = src.replace("*", f"train_*round{i}*")
        rows += [(f"stages.{round_}.dataset.scale_range", scale, round_file),
                 (f"stages.{round_}.validation.after_epoch", start, round_file + " evaluate_start"),
                 (f"stages.{round_}.validation.every_n_epochs", freq[i], round_file + " evaluate_freq"),
                 (f"stages.{round_}.data.global_batch_size", batches[i], round_file + " batch_size"),
                 (f"stages.{round_}.data.geometric_aug", {"rotate": 10, "blur_p": 0.5, "pad": "mean",
                                                          "pad_position": "centre", "scale_interpolation": "linear"},
                  "semseg util/transform.py RandScale (linear), Crop (padding around the image)")]
    return rows


REFERENCE["dars_pascal"] = _dars(DARS_VOC, "1464", 321, 0.01, (0.4, 0.5), ([0.5, 1.5], [0.5, 1.5], [0.5, 2.0]), 400,
                                 (44, 94, 120), (2, 2, 5), (16, 8, 8)) + [
    ("method.stages.round0.epochs", 50, DARS_VOC), ("method.stages.round1.epochs", 50, DARS_VOC),
    ("method.stages.round2.epochs", 50, DARS_VOC), ("stages.round0.data.epoch_length", "labeled", DARS_VOC)]
REFERENCE["dars_cityscapes"] = _dars(DARS_CS713, "1_8", 713, 0.01, (0.4, 0.65), ([0.5, 2.0], [0.5, 2.0], [0.5, 3.0]),
                                     2048, (80, 280, 400), (20, 20, 20), (16, 8, 8)) + [
    ("method.stages.round2.epochs", 200, DARS_CS713)]
REFERENCE["dars_cityscapes_split4"] = _dars(DARS_CS713_4, "1_4", 713, 0.01, (0.4, 0.65),
                                            ([0.5, 2.0], [0.5, 2.0], [0.4, 2.5]), 2048, (80, 280, 400), (20, 20, 20),
                                            (16, 8, 8))
REFERENCE["dars_cityscapes_crop361"] = _dars(DARS_CS361, "1_8", 361, 0.01, (0.2, 0.5),
                                             ([0.25, 1.0], [0.25, 1.0], [0.2, 1.5]), 1024, (80, 280, 480),
                                             (20, 20, 20), (16, 8, 8))
REFERENCE["dars_cityscapes_crop361_split4"] = _dars(DARS_CS361_4, "1_4", 361, 0.01, (0.4, 0.6),
                                                    ([0.25, 1.0], [0.25, 1.0], [0.2, 1.5]), 1024, (80, 280, 480),
                                                    (20, 20, 20), (16, 8, 8))
REFERENCE["dars_cityscapes_deeplabv2"] = _dars(DARS_V2, "1_8", 361, 0.002, (0.2, 0.45),
                                               ([0.25, 1.0], [0.25, 1.0], [0.25, 1.0]), 1024, (80, 280, 480),
                                               (20, 20, 20), (16, 4, 4), "resnet101_deeplabv2", "deeplabv2") + [
    ("model.branches", 2, "CVMI-Lab/DARS model/deeplabv2.py (returns inside the loop: branches 6 and 12)"),
    ("optim.lr_mult[backbone.layer4]", 10.0, DARS_TRAIN + " (index_split = 5 of six backbone groups)"),
    ("trainer.sync_batchnorm", False, DARS_V2 + " (plain BatchNorm2d)"),
    ("stages.round0.data.epoch_length", "unlabeled", DARS_V2.replace("*", "train_*round0*") + " (match_len list)")]

LPL = "YudeWang/Learning-Pseudo-Label experiment/deeplabv3+_voc_swsss/config.py"
LPL2 = "YudeWang/Learning-Pseudo-Label experiment/deeplabv3+_voc_swsss/config_retrain.py"
REFERENCE["pct_pascal"] = [
    ("split", "first_1464", LPL + " (the first N of train.txt)"), ("dataset.crop_size", 384, LPL),
    ("backbone.output_stride", 8, LPL + " (resnet dilated=True)"), ("model.name", "deeplabv3plus_lpl", LPL),
    ("backbone.pretrained", "${paths.pretrained_dir}/resnet101s-03a0f310.pth", "lib/net/backbone/resnet.py (Encoding)"),
    ("optim.weight_decay", 4e-5, LPL), ("optim.momentum", 0.9, LPL),
    ("optim.lr_mult", {"backbone": 1.0, "head": 1.0, "classifier": 10.0}, LPL + " TRAIN_LR_RATE groups"),
    ("method.poly_lag", 0, LPL + " adjust_lr"), ("trainer.precision", "16-mixed", LPL + " (autocast + GradScaler)"),
    ("stages.stage1.trainer.max_steps", 20000, LPL + " TRAIN_ITERATION"), ("stages.stage1.optim.lr", 0.001, LPL),
    ("stages.stage1.data.global_batch_size", 5, LPL + " (5 seg + 5 cls)"),
    ("stages.stage2.trainer.max_steps", 30000, LPL2), ("stages.stage2.optim.lr", 0.007, "retrain.py"),
    ("stages.stage2.data.global_batch_size", 16, LPL2), ("dataset.eval.scales", [0.5, 0.75, 1.0, 1.25, 1.5], LPL),
    ("dataset.eval.flip", True, LPL), ("validation.every_n_epochs", 0, "test.py, retest.py (the final model only)"),
    ("data.geometric_aug.pad", "mean", "lib/datasets/transform.py RandomCrop (0 after normalising)"),
    ("data.geometric_aug.pad_position", "random", "lib/datasets/transform.py RandomCrop (random placement)"),
    ("data.geometric_aug.scale_interpolation", "cubic", "lib/datasets/transform.py RandomScale (cubic)"),
    ("recipe.reported", "final", "YudeWang/Learning-Pseudo-Label README Model Zoo (Retrained)"),
]


def test_every_recipe_has_its_reference_values():
    assert sorted(REFERENCE) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_the_reference_values(name):
    cfg = compose_recipe(name)
    assert cfg.recipe.name == name and cfg.method.name == split_name(name)[0]
    wrong = [f"{key}: {_value(cfg, key)!r}, the reference ({source}) {expected!r}"
             for key, expected, source in REFERENCE[name]
             if _value(cfg, key) != (OmegaConf.select(cfg, key) if "${" in str(expected) else expected)]
    if name == "pct_pascal":  # an interpolation: compare unresolved
        pretrained = OmegaConf.to_container(cfg.backbone)["pretrained"]
        assert pretrained == "${paths.pretrained_dir}/resnet101s-03a0f310.pth"
    assert not wrong, "\n".join(wrong)
    # No recipe forces a device count: the global batch holds on any (tests/test_global_batch.py).
    assert cfg.trainer.devices == 1


def test_the_mission_command_is_daws_published_run():
    """`python train.py method=daw dataset=pascal split=1464`: yuisuen/DAW configs/pascal.yaml, no experiment=."""
    cfg = compose_cfg(["method=daw", "dataset=pascal", "split=1464"])
    assert (cfg.recipe.name, cfg.dataset.crop_size, cfg.data.global_batch_size, cfg.optim.lr,
            cfg.optim.lr_mult.head, cfg.dataset.epochs, cfg.trainer.precision) == ("daw_pascal", 513, 8, 0.001, 10.0,
                                                                                    80, "32-true")


def test_a_recipe_value_is_one_override_away():
    cfg = compose_cfg(["method=daw", "dataset=pascal", "trainer.precision=bf16-mixed", "dataset.crop_size=321"])
    assert (cfg.trainer.precision, cfg.dataset.crop_size, cfg.dataset.eval.crop_size) == ("bf16-mixed", 321, 321)
    assert compose_cfg(["method=dars", "dataset=pascal", "backbone=resnet50"]).backbone.name == "resnet50"


# --- pairs without a recipe ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,dataset", [("pct", "cityscapes"), ("supervised", "pascal"), ("unimatch", "toy")])
def test_a_pair_without_a_recipe_says_so_and_names_its_defaults(method, dataset):
    from sslseg.run.recipes import results_entry, start_line

    cfg = compose_cfg([f"method={method}", f"dataset={dataset}"])
    assert cfg.recipe is None and results_entry(cfg) is None
    line = start_line(cfg)
    default = f"conf/recipe/default_{dataset}.yaml" if dataset != "pascal" else "conf/train.yaml"
    assert line.startswith(f"no published recipe for {method} on {dataset}: sslseg's defaults ({default}): ")
    assert "\n" not in line and "fp32" in line


def test_a_recipes_start_line_names_it_and_its_source():
    from sslseg.run.recipes import results_entry, start_line

    cfg = compose_cfg(["method=daw", "dataset=pascal"])
    assert start_line(cfg) == (
        "recipe daw_pascal (DAW (NeurIPS 2023); yuisuen/DAW configs/pascal.yaml, daw.py): resnet101 + deeplabv3plus, "
        "crop 513, global batch 8, SGD lr 0.001 head x10 momentum 0.9 wd 0.0001, 80 epochs, fp32, validates every "
        "epoch; reported: best")
    assert results_entry(cfg)["name"] == "daw_pascal"
    line = start_line(compose_cfg(["method=ddfp", "dataset=pascal"]))
    assert "fp16 mixed (GradScaler)" in line and "validates every 4 epochs" in line and "global batch 16" in line
    line = start_line(compose_cfg(["method=pct", "dataset=pascal"]))
    assert "stage1 20000 steps + stage2 30000 steps" in line and "validates the final weights only" in line
    assert "reported: final" in line


def test_the_toy_keeps_its_cpu_budget():
    cfg = compose_cfg([])
    assert (cfg.method.name, cfg.dataset.name, cfg.recipe, cfg.backbone.name, list(cfg.model.aspp_dilations)) == (
        "daw", "toy", None, "tiny", [2, 4, 6])  # conf/model/deeplabv3plus_tiny.yaml
    assert (cfg.optim.lr, dict(cfg.optim.lr_mult), cfg.dataset.epochs, cfg.data.batch_size,
            cfg.data.global_batch_size, cfg.trainer.precision) == (0.01, {"backbone": 1.0, "head": 1.0}, 12, 8, None,
                                                                   "32-true")


def test_dataset_configs_hold_the_data_only():
    """What a paper's run fixes (lr, epochs, batch, criterion, threshold, networks) is in no dataset config."""
    protocol = {"lr", "lr_multiplier", "epochs", "batch_size", "criterion", "conf_thresh", "scale_range",
                "train_steps", "val_every_n_epochs"}
    for name in DATASETS:
        text = (CONF / "dataset" / f"{name}.yaml").read_text()
        cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
        assert not protocol & set(cfg.dataset), name
        assert "override /" not in text and not {"optim", "trainer", "method", "backbone", "model"} & set(cfg), name


def _leaves(node, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _leaves(value, path + ".")
        else:
            out[path] = value
    return out


MARKER = "# overrides dataset"


@pytest.mark.parametrize("name", RECIPES + UNPUBLISHED)
def test_no_key_is_set_by_both_the_dataset_config_and_the_recipe(name):
    """A key a recipe sets that its dataset config sets too must say why on that line (`# overrides dataset: ...`):
    otherwise the run's value would be written in two places."""
    path = CONF / "recipe" / f"{name}.yaml"
    dataset = split_name(name)[1]
    recipe = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    recipe.pop("defaults", None)
    data = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{dataset}.yaml"), resolve=False)
    both = set(_leaves(recipe)) & set(_leaves(data))
    lines = path.read_text().splitlines()
    unexplained = []
    for key in sorted(both):
        parts = key.split(".")[1:]  # under `dataset:`: the line names the key or one of its parents
        if not any(MARKER in line and any(re.search(rf"\b{re.escape(p)}:", line) for p in parts) for line in lines):
            unexplained.append(key)
    assert not unexplained, f"{path.name} sets {unexplained}, which conf/dataset/{dataset}.yaml sets too: " \
                            f"say why with '{MARKER}: ...' on the line"


def test_the_duplicate_check_can_fail(tmp_path, monkeypatch):
    """The check above, on a recipe that sets the dataset's crop without saying why."""
    (tmp_path / "recipe").mkdir()
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "pascal.yaml").write_text((CONF / "dataset" / "pascal.yaml").read_text())
    (tmp_path / "recipe" / "x_pascal.yaml").write_text("dataset:\n  crop_size: 513\n")
    monkeypatch.setattr(sys.modules[__name__], "CONF", tmp_path)
    with pytest.raises(AssertionError, match="crop_size"):
        test_no_key_is_set_by_both_the_dataset_config_and_the_recipe("x_pascal")


# --- variants ------------------------------------------------------------------------------------------------------
def test_a_variant_that_does_not_exist_is_one_line():
    from sslseg.run.recipes import check_variant

    with pytest.raises(UserError) as exc:
        check_variant({"method": "dars", "dataset": "pascal", "variant": "crop361"})
    assert str(exc.value) == "variant=crop361: no such variant of recipe dars_pascal; it has no variants"
    with pytest.raises(UserError, match="its variants: crop361, crop361_split4, deeplabv2, split4"):
        check_variant({"method": "dars", "dataset": "cityscapes", "variant": "blended"})
    check_variant({"method": "dars", "dataset": "cityscapes", "variant": "deeplabv2"})


def test_experiment_is_an_alias_of_the_recipe():
    for alias, name in [("daw_pascal", "daw_pascal"), ("dars_cityscapes_361_1_4", "dars_cityscapes_crop361_split4"),
                        ("unimatch_pascal_blended", "unimatch_pascal_blended")]:
        a, b = compose_cfg([f"experiment={alias}"]), compose_recipe(name)
        assert OmegaConf.to_container(a) == OmegaConf.to_container(b), alias


# --- the optimizer from config -----------------------------------------------------------------------------------
def test_adamw_is_one_config_away():
    from sslseg.methods.supervised import Supervised

    module = Supervised(compose_cfg(["method=supervised", "optim=adamw", "optim.lr=1e-4", "optim.lr_mult.head=40"]))
    from types import SimpleNamespace

    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = module.configure_optimizers()["optimizer"]
    import torch

    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.999)
    backbone, head = optimizer.param_groups
    assert (backbone["lr"], head["lr"], backbone["weight_decay"]) == (1e-4, pytest.approx(4e-3), 0.01)


def test_parameter_groups_by_role_and_module_path():
    import torch

    from sslseg.methods.optim import param_groups
    from sslseg.models import build_segmentor

    cfg = compose_cfg(["method=dars", "dataset=cityscapes", "variant=deeplabv2", "backbone.pretrained=null"])
    net = build_segmentor(cfg.backbone, cfg.model, 19, load_pretrained=False)
    groups = param_groups(net, 0.002, cfg.optim.lr_mult)
    layer4 = {id(p) for p in net.backbone.layer4.parameters() if p.requires_grad}
    lrs = {(id(p)): g["lr"] for g in groups for p in g["params"]}
    assert all(lrs[i] == pytest.approx(0.02) for i in layer4)  # the release's index_split: layer4 at 10x
    assert all(lrs[id(p)] == pytest.approx(0.02) for p in net.decoder.parameters())
    assert all(lrs[id(p)] == 0.002 for n, p in net.backbone.named_parameters() if p.requires_grad and "layer4" not in n)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())
    assert len(net.decoder.branches) == 2  # the published classifier: branches 6 and 12
    with pytest.raises(UserError, match="optim.lr_mult.backbone.layer9: the network has no module backbone.layer9"):
        param_groups(net, 0.1, {"backbone.layer9": 2.0})
    assert torch.optim.SGD(groups, lr=0.002)  # the groups are a valid optimizer argument


# --- the validation cadence -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,stage,count", [
    ("dars_pascal", "round0", 3), ("dars_pascal", "round1", 3), ("dars_pascal", "round2", 6),  # VOC round 2: 6, not 50
    ("dars_cityscapes", "round0", 6), ("dars_cityscapes", "round2", 10), ("dars_cityscapes_crop361", "round2", 6),
])
def test_dars_validates_on_its_releases_cadence(name, stage, count):
    """tool/train.py: epoch_log > evaluate_start and (epoch_log - evaluate_start) % evaluate_freq == 0, epoch_log
    counted over the rounds; the last epoch of every round is among them."""
    from sslseg.run.fitting import validation_cadence
    from sslseg.run.recipes import stage_config

    cfg = compose_recipe(name)
    names = list(cfg.method.stages)
    before = sum(int(cfg.method.stages[s].epochs) for s in names[:names.index(stage)]
                 if cfg.method.stages[s].kind == "train")
    stage_cfg = stage_config(cfg, cfg.method.stages[stage], before)
    cadence = validation_cadence(stage_cfg)
    epochs = int(cfg.method.stages[stage].epochs)
    validated = [e for e in range(epochs) if cadence.validates(e)]
    assert len(validated) == count and validated[-1] == epochs - 1


def test_every_n_epochs_without_a_start_is_lightnings_own():
    from sslseg.run.fitting import trainer_kwargs, validation_cadence

    cfg = compose_cfg(["method=ddfp", "dataset=pascal"])
    assert validation_cadence(cfg) is None and trainer_kwargs(cfg)["check_val_every_n_epoch"] == 4
    pct = compose_cfg(["method=pct", "dataset=pascal"])
    assert not any(validation_cadence(pct).validates(e) for e in range(100))  # the final weights only
    assert trainer_kwargs(pct)["check_val_every_n_epoch"] == 1  # the callback sets it per epoch


def test_fp16_runs_as_fp32_without_a_gpu():
    from sslseg.run.fitting import trainer_kwargs

    cfg = compose_cfg(["method=ddfp", "dataset=pascal", "trainer.accelerator=cpu"])
    assert cfg.trainer.precision == "16-mixed" and trainer_kwargs(cfg)["precision"] == "32-true"
    assert trainer_kwargs(compose_cfg(["trainer.precision=bf16-mixed", "trainer.accelerator=cpu"]))["precision"] == \
        "bf16-mixed"


def test_a_bad_variant_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    from tests.conftest import run_cli

    run = run_cli("train.py", "method=dars", "dataset=pascal", "variant=crop361", f"paths.output_dir={tmp_path}")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: variant=crop361: no such variant of recipe dars_pascal; it has no variants"]
    assert not any(tmp_path.iterdir())


def test_cfg_job_of_the_mission_command_shows_daws_published_run():
    """`python train.py method=daw dataset=pascal split=1464 --cfg job --resolve`, as a user types it."""
    import yaml

    from tests.conftest import run_cli

    run = run_cli("train.py", "method=daw", "dataset=pascal", "split=1464", "--cfg", "job", "--resolve")
    assert run.returncode == 0, run.stderr[-2000:]
    cfg = yaml.safe_load(run.stdout)
    assert cfg["recipe"]["name"] == "daw_pascal"
    assert cfg["recipe"]["source"] == "yuisuen/DAW configs/pascal.yaml, daw.py"
    assert (cfg["dataset"]["crop_size"], cfg["data"]["global_batch_size"], cfg["optim"]["_target_"], cfg["optim"]["lr"],
            cfg["optim"]["lr_mult"]["head"], cfg["dataset"]["epochs"], cfg["trainer"]["precision"]) == (
        513, 8, "torch.optim.SGD", 0.001, 10.0, 80, "32-true")


def test_variant_vit_is_unimatch_v2s_toy_run_for_every_method():
    """`variant=vit` on the toy set: any method without a toy_vit recipe of its own runs default_toy_vit.yaml, the
    run `method=unimatch_v2` gets on the toy set, so that a baseline differs from V2's run in the method alone."""
    from sslseg.run.recipes import check_variant, default_file, variants_of

    def run(*overrides):
        cfg = OmegaConf.to_container(compose_cfg(list(overrides)), resolve=True)
        return {key: value for key, value in cfg.items() if key not in ("method", "logger")}  # logger: W&B tags

    v2 = run("method=unimatch_v2")
    assert v2 == run("method=unimatch_v2", "variant=vit") == run("method=supervised", "variant=vit")
    assert v2 == run("method=daw", "variant=vit")
    assert (v2["backbone"]["name"], v2["model"]["name"], v2["optim"]["_target_"]) == (
        "vit_tiny", "dpt", "torch.optim.AdamW")  # conf/model/dpt_tiny.yaml: a small DPT
    # UniMatch-V2 configs/pascal.yaml: lr 5e-6 with the (randomly initialised) head at x40, betas (0.9, 0.999),
    # weight decay 0.01; here every parameter starts from random, so every group gets the head's lr.
    assert v2["optim"]["lr"] == pytest.approx(5e-6 * 40)
    assert (v2["optim"]["lr_mult"], v2["optim"]["betas"], v2["optim"]["weight_decay"]) == (
        {"backbone": 1.0, "head": 1.0}, [0.9, 0.999], 0.01)
    toy = run("method=daw")  # the toy's budget is kept: only the network and the optimizer change
    assert (v2["dataset"], v2["data"], v2["split"]) == (toy["dataset"], toy["data"], toy["split"])
    assert variants_of("daw", "toy") == ["vit"]
    assert default_file("toy", "daw", "vit") == "conf/recipe/default_toy_vit.yaml"
    check_variant({"method": "daw", "dataset": "toy", "variant": "vit"})
    with pytest.raises(UserError, match="no such variant of recipe daw_pascal; its variants: blended"):
        check_variant({"method": "daw", "dataset": "pascal", "variant": "vit"})  # the toy's, not every dataset's


def test_cfg_job_shows_unimatch_v2s_published_pascal_run():
    """`python train.py method=unimatch_v2 dataset=pascal split=92 --cfg job --resolve`: UniMatch-V2 configs/pascal.yaml
    with DINOv2-B (its README's encoder) on 4 GPUs x 4, as its training-logs table01 run at 92 labels."""
    import yaml

    from tests.conftest import run_cli

    run = run_cli("train.py", "method=unimatch_v2", "dataset=pascal", "split=92", "--cfg", "job", "--resolve")
    assert run.returncode == 0, run.stderr[-2000:]
    cfg = yaml.safe_load(run.stdout)
    assert cfg["recipe"]["name"] == "unimatch_v2_pascal" and cfg["split"] == "92"
    assert (cfg["backbone"]["name"], cfg["model"]["name"], cfg["dataset"]["crop_size"],
            cfg["data"]["global_batch_size"], cfg["optim"]["_target_"], cfg["optim"]["lr"], cfg["optim"]["lr_mult"],
            cfg["optim"]["betas"],
            cfg["optim"]["weight_decay"], cfg["dataset"]["epochs"], cfg["method"]["conf_thresh"],
            cfg["method"]["teacher"]["decay"], cfg["dataset"]["eval"]["multiplier"], cfg["trainer"]["precision"]) == (
        "dinov2_base", "dpt", 518, 16, "torch.optim.AdamW", 5e-6, {"backbone": 1.0, "head": 40.0}, [0.9, 0.999], 0.01,
        60, 0.95, 0.996, 14, "32-true")


def test_unimatch_v2_variants_are_the_encoder_sizes():
    from sslseg.run.recipes import check_variant, variants_of

    assert variants_of("unimatch_v2", "pascal") == ["large", "small"]
    assert variants_of("unimatch", "pascal") == ["blended"]  # unimatch_v2_* are not unimatch's variants
    with pytest.raises(UserError, match="no such variant of recipe unimatch_pascal; its variants: blended"):
        check_variant({"method": "unimatch", "dataset": "pascal", "variant": "small"})
    assert compose_recipe("unimatch_v2_cityscapes_small").backbone.name == "dinov2_small"
