"""ADE20K (conf/dataset/ade20k.yaml) on a tiny ADEChallengeData2016 tree the test makes: the official masks read with
reduce_zero_label, UniMatch V2's split sizes from make_splits, the data check, a training batch and a validation
item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.data.io import read_mask
from sslseg.data.make_splits import count
from sslseg.data.make_splits import main as make_splits
from sslseg.errors import UserError
from tests.conftest import compose_cfg


def ade_tree(root: Path, train: int = 16, val: int = 4) -> Path:
    """images/{training,validation}/ADE_*.jpg and annotations/.../ADE_*.png holding 0 (other) ... 150, as released."""
    rng = np.random.default_rng(0)
    for subset, n, prefix in (("training", train, "ADE_train"), ("validation", val, "ADE_val")):
        (root / "images" / subset).mkdir(parents=True)
        (root / "annotations" / subset).mkdir(parents=True)
        for i in range(1, n + 1):
            h, w = (40, 56) if i % 2 else (48, 36)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "images" / subset / f"{prefix}_{i:08d}.jpg")
            mask = rng.integers(0, 151, (h, w), dtype=np.uint8)
            mask[0, 0], mask[0, 1] = 0, 150  # "other" and the last class in every mask
            Image.fromarray(mask, mode="L").save(root / "annotations" / subset / f"{prefix}_{i:08d}.png")
    return root


def test_official_masks_are_read_with_reduce_zero_label(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1, 150, 7]], dtype=np.uint8), mode="L").save(path)
    assert read_mask(path, 150, zero_is_ignored=True).tolist() == [[255, 0, 149, 6]]
    with pytest.raises(UserError, match="outside 0..149"):  # read as class ids, 150 is out of range
        read_mask(path, 150)
    Image.fromarray(np.array([[255, 1]], dtype=np.uint8), mode="L").save(path)
    with pytest.raises(UserError, match="reduced already .*set dataset.reduce_zero_label=false"):
        read_mask(path, 150, zero_is_ignored=True)
    assert read_mask(path, 150).tolist() == [[255, 1]]  # UniMatch V2's preprocessed masks: reduce_zero_label=false


def test_the_dataset_config():
    cfg = compose_cfg(["dataset=ade20k", "method=supervised"])
    d = cfg.dataset
    assert (d.num_classes, len(d.class_names), d.reduce_zero_label, d.ignore_index, d.default_split) == (
        150, 150, True, 255, "1_64")
    assert (d.class_names[0], d.class_names[7], d.class_names[-1]) == ("wall", "bed", "flag")  # V2's 'bed ' stripped
    assert len(set(d.class_names)) == 150
    assert compose_cfg(["dataset=ade20k", "backbone=dinov2_base", "model=dpt"]).dataset.crop_size == 518


@pytest.mark.parametrize("fraction,labeled", [("1_64", 316), ("1_32", 631), ("1_16", 1263), ("1_8", 2526),
                                              ("1_4", 5052), ("1_2", 10105)])
def test_split_sizes_are_unimatch_v2s(fraction, labeled):
    """UniMatch-V2 splits/ade20k/<fraction>/labeled.txt line counts (20,210 training images)."""
    assert count(fraction, 20210, "ade20k") == labeled
    assert count(fraction, 20210) != labeled or fraction in ("1_64", "1_2")  # ceil gives 632, 1264, ... otherwise


def test_make_splits_check_and_load_an_ade_tree(tmp_path):
    root = ade_tree(tmp_path / "ADEChallengeData2016")
    make_splits(["ade20k", str(root), str(tmp_path / "splits"), "--fractions", "1_8"])
    labeled = (tmp_path / "splits" / "1_8" / "labeled.txt").read_text().splitlines()
    unlabeled = (tmp_path / "splits" / "1_8" / "unlabeled.txt").read_text().splitlines()
    val = (tmp_path / "splits" / "val.txt").read_text().splitlines()
    assert (len(labeled), len(unlabeled), len(val)) == (2, 14, 4)
    assert val[0] == "images/validation/ADE_val_00000001.jpg annotations/validation/ADE_val_00000001.png"

    from sslseg.data.check import main as check

    assert check([str(root), "--splits", str(tmp_path / "splits"), "--backbones", "none"]) == 0  # detected: ade20k

    from sslseg.data.datamodule import SemiSegDataModule

    cfg = compose_cfg(["dataset=ade20k", "method=supervised", "backbone=tiny", "model=deeplabv3plus_tiny",
                       f"paths.data_root={root}", f"dataset.splits_dir={tmp_path / 'splits'}", "split=1_8",
                       "dataset.crop_size=32", "data.global_batch_size=null", "data.batch_size=2"])
    dm = SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, cfg.split, streams=("labeled", "unlabeled"))
    dm.setup("fit")
    item = dm.val_set[0]
    raw = np.array(Image.open(root / "annotations" / "validation" / "ADE_val_00000001.png"))
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    crop = dm.train_sets["labeled"][(0, 0)]["mask"]
    assert crop.max() <= 255 and set(np.unique(crop.numpy())) <= set(range(150)) | {255}
