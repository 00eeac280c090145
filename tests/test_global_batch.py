"""data.global_batch_size: the papers' global batch on any device count (sslseg/data/batch.py)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from sslseg.data.batch import per_device_batch
from sslseg.data.datamodule import SemiSegDataModule
from sslseg.errors import UserError
from tests.conftest import compose_cfg, last_line, mini_split, run_cli, run_cli_subprocess
from tests.test_recipes import RECIPES, compose_recipe


def _toy_datamodule(data_dir: Path, *overrides: str) -> SemiSegDataModule:
    cfg = compose_cfg([f"paths.data_dir={data_dir}", "data.num_workers=0", "split=16", *overrides])
    dm = SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, cfg.split, ("labeled", "unlabeled"), seed=0)
    dm.setup("fit")
    return dm


def _loaders(dm: SemiSegDataModule, world: int, rank: int) -> dict:
    """The train loaders of one rank, as Lightning's DDP process `rank` of `world` gets them."""
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0, accelerator=None)
    return dm.train_dataloader().iterables


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_each_device_loads_its_share_and_an_epoch_keeps_its_steps(data_dir, world):
    dm = _toy_datamodule(data_dir, "data.global_batch_size=16")
    for name, loader in _loaders(dm, world, rank=world - 1).items():
        assert loader.batch_size == 16 // world, name
        assert len(loader) == (1000 - 16) // 16  # steps per epoch: the single-device run's


def test_a_global_batch_holds_the_same_images_on_any_device_count(data_dir):
    """Step s of one device and step s of four devices together read the same images (and, the items being
    keyed by (epoch, index), the same augmented crops)."""
    dm = _toy_datamodule(data_dir, "data.global_batch_size=8")

    def steps(world: int, count: int = 5) -> list[set]:
        per_rank = [list(_loaders(dm, world, rank)["unlabeled"].sampler) for rank in range(world)]
        size = 8 // world
        return [{key for keys in per_rank for key in keys[s * size:(s + 1) * size]} for s in range(count)]

    one = steps(1)
    assert all(len(step) == 8 for step in one)
    assert steps(4) == steps(2) == one


def test_a_real_trainer_of_one_device_gives_the_whole_global_batch(data_dir):
    import lightning.pytorch as pl

    dm = _toy_datamodule(data_dir, "data.global_batch_size=4")
    dm.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch["labeled"]["image"].shape[0] == batch["unlabeled"]["weak"].shape[0] == 4


def test_without_a_global_batch_the_batch_stays_per_device(data_dir):
    dm = _toy_datamodule(data_dir, "data.batch_size=3")
    assert [loader.batch_size for loader in _loaders(dm, 4, rank=0).values()] == [3, 3]


def test_a_global_batch_the_devices_cannot_share_is_one_line():
    data = OmegaConf.create({"batch_size": 2, "global_batch_size": 8})
    with pytest.raises(UserError) as exc:
        per_device_batch(data, 3)
    assert str(exc.value) == ("data.global_batch_size=8 cannot be shared equally by 3 devices (trainer.devices x "
                              "trainer.num_nodes): use a device count that divides 8, or a global batch that is a "
                              "multiple of 3")


# The references' global batch (per stream: labeled = unlabeled) of every recipe and train stage, i.e. the
# reference's GPUs x batch per GPU, or its global batch where it states one.
REFERENCE_GLOBAL_BATCH = {
    # UniMatch's configs/{pascal,cityscapes,coco}.yaml: batch 2 per GPU x 4 GPUs on all three datasets, the blended
    # splits too. FixMatch is UniMatch's re-implementation.
    **{f"{method}_{data}": 4 * 2 for method in ("fixmatch", "unimatch")
       for data in ("pascal", "pascal_blended", "cityscapes", "coco")},
    # yuisuen/DAW configs/*.yaml are UniMatch's (no COCO config: UniMatch's COCO).
    **{f"daw_{data}": 4 * 2 for data in ("pascal", "pascal_blended", "cityscapes", "coco")},
    # kunzhan/DSSN: VOC 2 per GPU x 4 GPUs; its Cityscapes R-101 training logs 1 x 8 GPUs.
    "dssn_pascal": 4 * 2, "dssn_pascal_blended": 4 * 2, "dssn_cityscapes": 8 * 1,
    # Gavinwxy/DDFP exp/pascal/732: 4 GPUs x 4. No Cityscapes config: the recipe follows UniMatch's Cityscapes
    # setting, 4 x 2.
    "ddfp_pascal": 4 * 4, "ddfp_cityscapes": 4 * 2,
    # CVMI-Lab/DARS config/*.yaml: global batches, round 0 16 labeled, rounds 1-2 8 + 8 (DeepLabv2: 4 + 4).
    **{name: {"round0": 16, "round1": 8, "round2": 8} for name in (
        "dars_pascal", "dars_cityscapes", "dars_cityscapes_split4", "dars_cityscapes_crop361",
        "dars_cityscapes_crop361_split4")},
    "dars_cityscapes_deeplabv2": {"round0": 16, "round1": 4, "round2": 4},
    # YudeWang/Learning-Pseudo-Label experiment/deeplabv3+_voc_swsss: one GPU; stage 1 10 = 5 + 5, stage 2 16.
    "pct_pascal": {"stage1": 5, "stage2": 16},
    # LiheYoung/UniMatch-V2 configs/*.yaml and its training logs: 4 GPUs x 4 (Pascal, COCO), 4 x 2 (Cityscapes,
    # ADE20K), the same for DINOv2-S, -B and -L.
    **{f"unimatch_v2_{data}{size}": 4 * per_gpu
       for data, per_gpu in (("pascal", 4), ("cityscapes", 2), ("coco", 4), ("ade20k", 2))
       for size in ("", "_small", "_large")},
}


def _global_batches(cfg) -> int | dict[str, int]:
    from sslseg.run.recipes import stage_config

    stages = cfg.method.get("stages")
    if not stages:
        return cfg.data.global_batch_size
    return {name: stage_config(cfg, stage, 0).data.global_batch_size for name, stage in stages.items()
            if stage.kind == "train"}


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_carries_its_reference_global_batch(name):
    cfg = compose_recipe(name)
    assert _global_batches(cfg) == REFERENCE_GLOBAL_BATCH[name]
    # No recipe forces a device count, so `trainer=ddp` (every GPU) or `trainer.devices=N` on the command line
    # decides how many devices share the global batch.
    assert cfg.trainer.devices == 1


@pytest.mark.slow
def test_two_ddp_processes_share_the_global_batch(data_dir, tmp_path):
    """The launcher and its child derive 4 + 4 each from a global batch of 8: an epoch over 32 unlabeled images
    takes 4 steps (8 per device would take 2). Then 3 devices, which cannot share 8: one line, exit 2."""
    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=32)
    common = ["method=supervised", "trainer=ddp", "trainer.accelerator=cpu", f"paths.data_dir={data_dir}",
              f"dataset.splits_dir={splits}", "split=mini", "data.global_batch_size=8", "logger=none",
              "data.num_workers=0", "trainer.enable_progress_bar=false", "dataset.crop_size=32"]
    run = run_cli_subprocess("train.py", *common, "trainer.devices=2", "trainer.max_epochs=1",
                             "trainer.limit_val_batches=1", f"paths.output_dir={tmp_path / 'out'}")
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results.json")]
    assert (results["devices"], results["global_batch_size"], results["steps"]) == (2, 8, 4)
    assert "batch: 4 per device x 2 device(s) = data.global_batch_size 8 (data.batch_size is not used)" in run.stdout
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"

    run = run_cli("train.py", *common, "trainer.devices=3", f"paths.output_dir={tmp_path / 'three'}")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: data.global_batch_size=8 cannot be shared equally by 3 devices (trainer.devices x trainer.num_nodes): "
        "use a device count that divides 8, or a global batch that is a multiple of 3"]
    assert not list((tmp_path / "three").rglob("*.ckpt"))
