import pytest
from omegaconf import OmegaConf

from sslseg.data.splits import Sample, check_files_exist, read_split_file, split_files, write_split_file
from sslseg.errors import UserError, one_line
from sslseg.run.cli import quote_split_overrides
from tests.conftest import compose_cfg


def test_split_file_formats(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg\n\n")  # no mask on line 2
    assert read_split_file(path, need_masks=False) == [Sample("JPEGImages/a.jpg", "SegmentationClass/a.png"),
                                                       Sample("JPEGImages/b.jpg", None)]
    with pytest.raises(UserError, match=r"list.txt:2: expected"):
        read_split_file(path, need_masks=True)


def test_split_round_trip_without_trailing_newline(tmp_path):
    samples = [Sample("x/1.jpg", "y/1.png"), Sample("x/2.jpg", None)]
    write_split_file(tmp_path / "s.txt", samples)
    (tmp_path / "s.txt").write_text((tmp_path / "s.txt").read_text().rstrip("\n"))  # UniMatch's files end so
    assert read_split_file(tmp_path / "s.txt", need_masks=False) == samples


def test_missing_split_names_available_ones(tmp_path):
    for name in ("92", "1_16"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labeled.txt").write_text("a b\n")
    with pytest.raises(UserError, match=r"split '183' not found .* \(available: 1_16, 92\)"):
        split_files(tmp_path, "183")
    assert split_files(tmp_path, "1_16").labeled == tmp_path / "1_16" / "labeled.txt"


def test_split_overrides_are_quoted():
    assert quote_split_overrides(["train.py", "split=1_16", "seed=1"]) == ["train.py", "split='1_16'", "seed=1"]
    assert quote_split_overrides(["split=92,1_16"]) == ["split='92','1_16'"]
    assert quote_split_overrides(["split='1_8'"]) == ["split='1_8'"]  # already quoted: untouched


def test_compose_keeps_split_folder_name():
    cfg = compose_cfg(["dataset=cityscapes", "split=1_16"])
    assert cfg.split == "1_16"  # unquoted, Hydra would give the integer 116
    assert cfg.dataset.crop_size == 801 and cfg.criterion.name == "ohem"
    assert cfg.dataset.eval.mode == "sliding" and cfg.backbone.name == "resnet101"


@pytest.mark.parametrize("dataset,crop,classes,lr,mult,epochs", [
    ("pascal", 321, 21, 0.001, 10.0, 80),
    ("cityscapes", 801, 19, 0.005, 1.0, 240),
    ("coco", 513, 81, 0.004, 10.0, 30),
])
def test_a_method_without_a_recipe_gets_unimatchs_protocol(dataset, crop, classes, lr, mult, epochs):
    """supervised has no recipe: conf/train.yaml's defaults and conf/recipe/default_<dataset>.yaml (UniMatch's)."""
    cfg = compose_cfg(["method=supervised", f"dataset={dataset}"])
    d = cfg.dataset
    assert (d.crop_size, d.num_classes, d.epochs, cfg.optim.lr, cfg.optim.lr_mult.head) == (crop, classes, epochs, lr,
                                                                                           mult)
    assert len(d.class_names) == classes and cfg.data.global_batch_size == 8 and cfg.recipe is None
    assert cfg.trainer.max_epochs == epochs and cfg.trainer.precision == "32-true"
    # UniMatch's strong view on every real dataset.
    assert OmegaConf.to_container(cfg.data.strong_aug) == {
        "jitter_p": 0.8, "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.25,
        "grayscale_p": 0.2, "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "extra_ops": 0}


def test_toy_strong_view_keeps_the_hue_class_cue():
    aug = compose_cfg(["dataset=toy"]).data.strong_aug
    assert (aug.hue, aug.grayscale_p, list(aug.blur_sigma)) == (0.0, 0.0, [0.1, 2.0])
    assert (aug.brightness, aug.contrast, aug.saturation, aug.jitter_p, aug.blur_p) == (0.5, 0.5, 0.5, 0.8, 0.5)


def test_backbone_override_wins_over_dataset_choice():
    cfg = compose_cfg(["dataset=pascal", "backbone=resnet50"])
    assert cfg.backbone.name == "resnet50" and cfg.model.name == "deeplabv3plus"


def test_worker_wrapped_error_gives_one_line():
    wrapped = RuntimeError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File x\nsslseg.errors.UserError: cannot read image: /a/b.jpg")
    assert one_line(wrapped) == "cannot read image: /a/b.jpg"


def test_id_only_lists_of_u2pl_cps_ddfp(tmp_path):
    # U2PL/CPS/DDFP Pascal lists: one VOC id per line (no trailing newline in some files).
    ids = tmp_path / "labeled.txt"
    ids.write_text("2007_000032\n2011_003261")
    assert read_split_file(ids, need_masks=True) == [
        Sample("JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png"),
        Sample("JPEGImages/2011_003261.jpg", "SegmentationClass/2011_003261.png")]
    # U2PL/DDFP Cityscapes lists: the image path alone; the mask is its trainId PNG under gtFine.
    city = tmp_path / "city.txt"
    city.write_text("leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png\n")
    assert read_split_file(city, need_masks=True) == [
        Sample("leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png",
               "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png")]
    # Any other single path is an image without a mask: fine unlabeled, an error where masks are needed.
    other = tmp_path / "other.txt"
    other.write_text("2007_000033\ntrain2017/000000177254.jpg\n")
    assert read_split_file(other, need_masks=False)[1] == Sample("train2017/000000177254.jpg", None)
    with pytest.raises(UserError, match=r"other.txt:2: expected '<image> <mask>' or an image id"):
        read_split_file(other, need_masks=True)


def test_id_only_lists_resolve_on_a_voc_folder(data_dir, tmp_path):
    # The toy set is in VOC's layout: its ids, listed alone, name files that exist (and only those).
    root = data_dir / "toy"
    names = sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))[:5]
    (tmp_path / "ids.txt").write_text("\n".join(names))
    samples = read_split_file(tmp_path / "ids.txt", need_masks=True)
    check_files_exist(samples, root, tmp_path / "ids.txt", with_masks=True)
    (tmp_path / "bad.txt").write_text("2007_999999\n")
    with pytest.raises(UserError, match=r"bad.txt names a missing file: .*JPEGImages/2007_999999.jpg"):
        check_files_exist(read_split_file(tmp_path / "bad.txt", True), root, tmp_path / "bad.txt", with_masks=True)


def test_a_repeated_image_in_a_split_is_refused(tmp_path):
    from sslseg.data.splits import read_split_file

    lst = tmp_path / "labeled.txt"
    lst.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg SegmentationClass/b.png\n"
                   "JPEGImages/a.jpg SegmentationClass/a.png\n")
    with pytest.raises(UserError, match=r"labeled.txt:3: JPEGImages/a.jpg is listed again \(first on line 1\)"):
        read_split_file(lst, need_masks=True)


def test_a_space_in_a_path_is_named(tmp_path):
    from sslseg.data.splits import read_split_file

    lst = tmp_path / "labeled.txt"
    lst.write_text("JPEGImages/my image.jpg SegmentationClass/a.png\n")
    with pytest.raises(UserError, match="a path may not contain one"):
        read_split_file(lst, need_masks=True)
