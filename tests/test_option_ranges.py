"""Every numeric option is declared with its range in one place (sslseg.run.config_checks.TYPED_OPTIONS) and checked
before anything runs; a value that makes a method degenerate is refused, and every shipped config passes."""

import pytest

from sslseg.errors import UserError
from sslseg.run.config_checks import check_config
from tests.conftest import ROOT, compose_cfg


@pytest.mark.parametrize("overrides, message", [
    (["method=dars", "method.stages.pseudo1.labeling_ratio=-1"],  # negative targets: no pseudo-label pixel
     "method.stages.pseudo1.labeling_ratio=-1: expected a share of the unlabeled pixels in (0, 1]"),
    (["method=dars", "method.stages.pseudo2.labeling_ratio=1.5"],  # more pixels than the unlabeled set has
     "method.stages.pseudo2.labeling_ratio=1.5: expected a share of the unlabeled pixels in (0, 1]"),
    (["method=dssn", "method.class_aware.min_confidence=1.5"],
     "method.class_aware.min_confidence=1.5: expected a confidence in [0, 1): at 1 or above no class passes"),
    (["method=ddfp", "method.conf_thresh=2"],
     "method.conf_thresh=2: expected a confidence in [0, 1), or null: at 1 or above no pixel passes"),
    (["method=unimatch", "method.conf_thresh=1.0"],
     "method.conf_thresh=1.0: expected a confidence in [0, 1), or null: at 1 or above no pixel passes"),
    (["method=unimatch", "method.loss_weights.s1=-0.25"], "method.loss_weights.s1=-0.25: expected a number ≥ 0"),
    (["method=dssn", "method.feature_dropout=1.5"], "method.feature_dropout=1.5: expected a dropout rate in [0, 1]"),
    (["method=daw", "method.teacher.decay=1.2"], "method.teacher.decay=1.2: expected a number in [0, 1]"),
    (["method=pct", "method.stages.stage1.epochs=0"], "method.stages.stage1.epochs=0: expected a positive integer"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: expected an integer ≥ 1, or -1 for no limit"),
    (["dataset.crop_size=0"], "dataset.crop_size=0: expected a positive integer (pixels)"),
    (["dataset.crop_size=abc"], "dataset.crop_size=abc: expected a positive integer (pixels)"),
    (["backbone=dinov2_small", "model=dpt", "dataset.crop_size=64"],
     "dataset.crop_size=64: backbone dinov2_small reads sides that are multiples of its patch size 14: "
     "set dataset.crop_size=70 (or 56)"),
    (["method=daw", "dataset=pascal", "backbone=dinov2_base", "model=dpt"],  # DAW's recipe crops 513
     "dataset.crop_size=513: backbone dinov2_base reads sides that are multiples of its patch size 14: "
     "set dataset.crop_size=518 (or 504)"),
    (["dataset.eval.multiplier=0"],
     "dataset.eval.multiplier=0: expected auto (a ViT's patch size), null or a positive integer"),
])
def test_a_value_out_of_range_is_one_line(overrides, message):
    with pytest.raises(UserError) as caught:
        check_config(compose_cfg(overrides))
    assert str(caught.value) == message


def test_the_threshold_range_holds_its_edges():
    check_config(compose_cfg(["method=unimatch", "method.conf_thresh=0"]))  # Cityscapes' recipes: every pixel
    check_config(compose_cfg(["method=unimatch", "method.conf_thresh=0.999"]))
    check_config(compose_cfg(["method=dars", "method.stages.pseudo1.labeling_ratio=1"]))


@pytest.mark.parametrize("method", sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")))
def test_every_shipped_recipe_and_default_passes(method):
    recipes = {p.stem for p in (ROOT / "conf" / "recipe").glob(f"{method}_*.yaml")}
    known = {p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml")}  # unimatch_* also matches unimatch_v2_*
    datasets = {"toy"} | {r.removeprefix(f"{method}_").split("_")[0] for r in recipes} & known
    for dataset in sorted(datasets):
        check_config(compose_cfg([f"method={method}", f"dataset={dataset}"]))


def test_assigning_an_empty_mapping_to_the_stages_is_refused():
    """Hydra merges `method.stages={}` into the stages, so every stage would still run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=dars", "method.stages={}"], return_hydra_config=True)
    with pytest.raises(UserError, match=r"^method.stages=\{\} merges into the stages .*: ~method.stages removes them$"):
        check_config(cfg)


@pytest.mark.parametrize("overrides, crop", [
    (["backbone=dinov2_small", "model=dpt"], 70),  # the toy's 64, rounded as UniMatch V2 rounds (int(x/14 + 0.5)·14)
    (["backbone=vit_tiny", "model=dpt_tiny"], 64),  # 8-pixel patches: 64 already
    (["dataset=cityscapes", "backbone=dinov2_base", "model=dpt"], 798),  # UniMatch V2's 798 from UniMatch's 801
    (["dataset=coco", "backbone=dinov2_base", "model=dpt"], 518),  # ... and 518 from 513
    (["dataset=pascal", "method=supervised", "backbone=dinov2_large", "model=dpt"], 322),
    (["dataset=pascal", "method=supervised"], 321),  # a CNN: the dataset's crop
])
def test_a_datasets_default_crop_fits_a_vits_patch(overrides, crop):
    cfg = compose_cfg(overrides)
    assert (cfg.dataset.crop_size, cfg.dataset.eval.crop_size) == (crop, crop)
    check_config(cfg)
