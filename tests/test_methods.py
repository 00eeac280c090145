"""Method-level checks on random data: forward passes per step, losses, gradients."""

import math
from pathlib import Path

import pytest
import torch

from sslseg.bench import synthetic_batch
from sslseg.experiment import method_class
from tests.conftest import compose_cfg

B, CROP, K = 2, 32, 6


def _module(method: str, *overrides: str):
    cfg = compose_cfg([f"method={method}", *overrides])
    module = method_class(cfg)(cfg)
    return module, synthetic_batch(module.data_streams(cfg.method), B, CROP, K, torch.device("cpu"))


def _count_passes(module, batch) -> tuple[dict[str, tuple[int, int]], torch.Tensor]:
    """({network: (forward passes, decoder calls)}, loss) of one training step, per network."""
    calls, hooks = {}, []
    for name, net in module.networks().items():
        segmentor = net.network if name == "teacher" else net
        calls[name] = [0, 0]
        for i, part in enumerate((segmentor, segmentor.decoder)):
            hooks.append(part.register_forward_hook(lambda *_, n=name, i=i: calls[n].__setitem__(i, calls[n][i] + 1)))
    module.train()
    loss = module.training_step(batch, 0)
    for hook in hooks:
        hook.remove()
    return {name: tuple(c) for name, c in calls.items()}, loss


@pytest.mark.parametrize("method,overrides,passes", [
    ("supervised", [], {"model": 1}),
    ("fixmatch", [], {"model": 3}),  # partner (eval, no grad), [labeled ‖ weak], strong
    ("fixmatch", ["method.mix_source=batch"], {"model": 2}),
    ("unimatch", [], {"model": 3}),  # partner, [labeled ‖ weak] + FP in one decoder batch, [strong1 ‖ strong2]
    ("unimatch", ["method.mix_source=batch"], {"model": 2}),
    ("daw", [], {"model": 3, "teacher": 0}),  # the teacher is only evaluated
    # DSSN student: [labeled ‖ weak] + 2 FP copies, [s1 ‖ s2]; teacher: the partners, then the weak view
    ("dssn", [], {"model": 2, "teacher": 2}),
    ("dssn", ["method.mix_source=batch"], {"model": 2, "teacher": 1}),
])
def test_forward_passes_per_step(method, overrides, passes):
    module, batch = _module(method, *overrides)
    calls, loss = _count_passes(module, batch)
    # Feature-perturbed copies share the decoder batch: one decoder call per pass.
    assert calls == {name: (n, n) for name, n in passes.items()}
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.model.parameters()]
    assert all(g is not None for g in grads), "every parameter takes part (DDP without find_unused_parameters)"


def test_partner_pass_runs_in_eval_mode_and_restores_train_mode():
    module, batch = _module("unimatch")
    modes = []
    module.model.backbone.bn1.register_forward_hook(lambda m, *_: modes.append(m.training))
    module.train()
    module.training_step(batch, 0)
    assert modes == [False, True, True] and module.model.training


def test_daw_updates_its_statistics_and_keeps_a_teacher():
    module, batch = _module("daw")
    module.train()
    module.training_step(batch, 0)
    assert float(module.jump.mu_pos) != pytest.approx(1 / K) or float(module.jump.mu_neg) != pytest.approx(1 / K)
    assert module.evaluated_networks() == ("model", "teacher") and set(module.val_confusion) == {"model", "teacher"}
    state = module.state_dict()
    assert "jump.tau" in state and "align.labeled" in state and any(k.startswith("teacher.network.") for k in state)


def test_validation_reports_the_better_of_online_and_ema():
    module, _ = _module("daw")
    module.eval()
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (2, 3, CROP, CROP), dtype=torch.uint8, generator=gen),
             "mask": torch.randint(0, K, (2, CROP, CROP), generator=gen)}
    with torch.no_grad():
        module.teacher.network.decoder.classifier.bias.add_(torch.arange(K) * 100.0)  # always the last class
    module.validation_step(batch, 0)
    from sslseg.metrics import iou_from_confusion

    scores = {n: float(iou_from_confusion(c.compute())[1]) for n, c in module.val_confusion.items()}
    module.on_validation_epoch_end()
    assert module.last_val["network"] == max(scores, key=scores.get)
    assert module.inference_model() is module.network(module.last_val["network"])


def test_unimatch_threshold_comes_from_the_dataset():
    assert compose_cfg(["method=unimatch", "dataset=cityscapes"]).method.conf_thresh == 0.0
    assert compose_cfg(["method=unimatch", "dataset=pascal"]).method.conf_thresh == 0.95


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))
ONLINE_PRESETS = [name for name in EXPERIMENTS if not name.startswith(("dars", "pct"))]
DARS_PRESETS = [name for name in EXPERIMENTS if name.startswith("dars")]


# The references' configs: crop, epochs, lr, head multiplier, labeled criterion (and min_kept).
REFERENCE = {
    "pascal": (321, 80, 0.001, 10.0, "ce"),  # UniMatch configs/pascal.yaml
    "cityscapes": (801, 240, 0.005, 1.0, "ohem"),  # UniMatch configs/cityscapes.yaml (min_kept 200000)
    "coco": (513, 30, 0.004, 10.0, "ce"),
    "daw_pascal": (513, 80, 0.001, 10.0, "ce"),  # DAW configs/pascal.yaml: UniMatch's with crop 513
    "dssn_pascal": (513, 100, 0.002, 10.0, "ce"),  # DSSN voc/configs/pascal.yaml
    "dssn_cityscapes": (801, 240, 0.005, 1.0, "ohem"),  # DSSN city/configs/cityscapes.yaml (min_kept 100000)
    "ddfp_pascal": (513, 80, 0.001, 10.0, "ce"),  # DDFP exp/pascal/732/exp/config.yaml
}


@pytest.mark.parametrize("name", ONLINE_PRESETS)
def test_every_preset_composes_to_the_published_setting(name):
    from omegaconf import OmegaConf

    method, dataset = name.split("_", 1)
    cfg = compose_cfg([f"experiment={name}"])
    OmegaConf.resolve(cfg)
    assert cfg.method.name == method and cfg.dataset.name == dataset.removesuffix("_blended")
    # Every GPU there is: the papers' global batch is data.global_batch_size (tests/test_global_batch.py).
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == -1
    # The papers' backbones: deep-stem ResNet-101, Xception-65 on COCO (UniMatch configs/coco.yaml).
    assert cfg.backbone.name == ("xception65" if cfg.dataset.name == "coco" else "resnet101")
    assert cfg.model.name == "deeplabv3plus" and list(cfg.model.aspp_dilations) == [6, 12, 18]
    setting = REFERENCE.get(f"{method}_{cfg.dataset.name}", REFERENCE[cfg.dataset.name])
    criterion = cfg.dataset.criterion
    assert (cfg.dataset.crop_size, cfg.dataset.epochs, cfg.optim.lr, cfg.optim.lr_multiplier, criterion.name) == setting
    if criterion.name == "ohem":  # per GPU of the reference's GPU batch: UniMatch 200k for 2 images, DSSN 100k for 1
        assert (criterion.min_kept, criterion.min_kept_images) == ((100_000, 1) if method == "dssn" else (200_000, 2))
    expected_split = {"pascal": "732" if method == "ddfp" else "1464", "cityscapes": "1_16",
                      "coco": "1_512"}[cfg.dataset.name]
    assert str(cfg.split) == ("1_16" if dataset.endswith("blended") else expected_split)
    if method in ("fixmatch", "unimatch"):
        assert cfg.method.conf_thresh == (0.0 if cfg.dataset.name == "cityscapes" else 0.95)
    if name == "ddfp_pascal":  # U2PL's centre-crop evaluation
        assert (cfg.dataset.eval.mode, cfg.dataset.eval.crop_size) == ("center_crop", 513)
    if method == "dssn":  # class-aware selection and the extra strong ops on Pascal; τ = 0 and warm-up on Cityscapes
        pascal = cfg.dataset.name == "pascal"
        assert cfg.method.selection == ("class_aware" if pascal else "threshold")
        assert cfg.data.strong_aug.extra_ops == (3 if pascal else 0)
        assert cfg.method.teacher.copy_epochs == (0 if pascal else 5)
        assert pascal or cfg.method.conf_thresh == 0.0


def test_preset_split_can_be_overridden():
    cfg = compose_cfg(["experiment=daw_pascal", "split=92"])
    assert str(cfg.split) == "92" and cfg.dataset.crop_size == 513


# CVMI-Lab/DARS configs: (split, backbone, crop, lr, epochs per round, labeling ratios, scale ranges of rounds
# 0/1/2, test base size). Their global batches: tests/test_global_batch.py.
DARS_REFERENCE = {
    "dars_pascal": ("1464", "resnet50_psp", 321, 0.01, 50, (0.4, 0.5), ([0.5, 1.5], [0.5, 1.5], [0.5, 2.0]), 400),
    "dars_cityscapes": ("1_8", "resnet50_psp", 713, 0.01, 200, (0.4, 0.65),
                        ([0.5, 2.0], [0.5, 2.0], [0.5, 3.0]), 2048),
    "dars_cityscapes_1_4": ("1_4", "resnet50_psp", 713, 0.01, 200, (0.4, 0.65),
                            ([0.5, 2.0], [0.5, 2.0], [0.4, 2.5]), 2048),
    "dars_cityscapes_361": ("1_8", "resnet50_psp", 361, 0.01, 200, (0.2, 0.5),
                            ([0.25, 1.0], [0.25, 1.0], [0.2, 1.5]), 1024),
    "dars_cityscapes_361_1_4": ("1_4", "resnet50_psp", 361, 0.01, 200, (0.4, 0.6),
                                ([0.25, 1.0], [0.25, 1.0], [0.2, 1.5]), 1024),
    "dars_cityscapes_deeplabv2": ("1_8", "resnet101_deeplabv2", 361, 0.002, 200, (0.2, 0.45),
                                  ([0.25, 1.0], [0.25, 1.0], [0.25, 1.0]), 1024),
}


@pytest.mark.parametrize("name", DARS_PRESETS)
def test_dars_presets_are_the_released_configs(name):
    from omegaconf import OmegaConf

    from sslseg.stages import stage_config

    split, backbone, crop, lr, epochs, ratios, scales, base = DARS_REFERENCE[name]
    cfg = compose_cfg([f"experiment={name}"])
    stages = cfg.method.stages
    assert list(stages) == ["round0", "pseudo1", "round1", "pseudo2", "round2"]
    rounds = [OmegaConf.to_container(stage_config(cfg, stages[r], 0), resolve=True) for r in ("round0", "round1",
                                                                                             "round2")]
    assert (str(cfg.split), cfg.backbone.name, cfg.dataset.crop_size) == (split, backbone, crop)
    assert cfg.trainer.devices == -1  # the global batches hold on any device count
    assert (crop - 1) % 8 == 0  # semseg's output size (H-1)/8·8+1 equals H only for these crops
    assert rounds[0]["data"]["epoch_length"] == ("unlabeled" if backbone == "resnet101_deeplabv2" else "labeled")
    assert [r["optim"]["lr"] for r in rounds] == [lr] * 3 and [stages[r].epochs for r in ("round0", "round1",
                                                                                          "round2")] == [epochs] * 3
    assert (stages.pseudo1.labeling_ratio, stages.pseudo2.labeling_ratio) == ratios
    assert tuple(r["dataset"]["scale_range"] for r in rounds) == scales
    assert cfg.dataset.eval.base_size == cfg.method.generation.base_size == base
    stride = math.ceil(crop * 2 / 3)  # semseg's sliding stride
    assert int(crop * cfg.dataset.eval.stride_ratio) == int(crop * cfg.method.generation.stride_ratio) == stride
    assert all(r["data"]["geometric_aug"] == {"rotate": 10, "blur_p": 0.5, "pad": "mean"} for r in rounds)


def test_pct_preset_is_the_released_setting():
    """YudeWang/Learning-Pseudo-Label experiment/deeplabv3+_voc_swsss: config.py (stage 1), config_retrain.py."""
    from omegaconf import OmegaConf

    from sslseg.stages import stage_config

    cfg = compose_cfg(["experiment=pct_pascal"])
    stages = cfg.method.stages
    one, two = (OmegaConf.to_container(stage_config(cfg, stages[s], 0), resolve=True) for s in ("stage1", "stage2"))
    assert str(cfg.split) == "first_1464" and cfg.trainer.devices == 1 and cfg.backbone.output_stride == 8
    assert cfg.model.name == "deeplabv3plus_lpl" and cfg.model.aspp_dropout == 0.5 and cfg.model.low_level_kernel == 3
    assert (one["trainer"]["max_steps"], one["optim"]["lr"]) == (20000, 0.001)  # batches: tests/test_global_batch.py
    assert (two["trainer"]["max_steps"], two["optim"]["lr"]) == (30000, 0.007)
    for stage in (one, two):  # groups 1 / 1 / 10, wd 4e-5, crop 384, poly from the current iteration
        assert (stage["optim"]["lr_multiplier"], stage["optim"]["classifier_lr_multiplier"]) == (1.0, 10.0)
        assert stage["optim"]["weight_decay"] == 4e-5 and stage["dataset"]["crop_size"] == 384
        assert stage["method"]["poly_lag"] == 0
    assert (one["method"]["phase"], two["method"]["phase"]) == ("cross", "retrain") and stages.stage2.fresh
    assert list(cfg.dataset.eval.scales) == list(cfg.method.generation.scales) == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert cfg.dataset.eval.flip and cfg.method.generation.flip
