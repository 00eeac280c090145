"""Your own data: a folder of images/ + masks/ + classes.txt -> make_splits -> `python train.py dataset=custom
paths.data_root=<dir>` (sslseg/data/custom.py, conf/dataset/custom.yaml)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from sslseg.data.custom import read_classes_file
from sslseg.data.datamodule import SemiSegDataModule
from sslseg.data.make_splits import main as make_splits
from sslseg.errors import UserError
from tests.conftest import compose_cfg, last_line, run_cli

CLASSES = ["background", "red square", "green square"]


def make_folder(root: Path, count: int = 40, without_mask: int = 0, classes: list[str] | None = CLASSES) -> Path:
    """32x32 images with a red (class 1) or green (class 2) square on background 0, their masks, classes.txt;
    the last `without_mask` images have no mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 1 + i % 2
        image = np.full((32, 32, 3), 40, np.uint8)
        image[mask == 1], image[mask == 2] = (200, 40, 40), (40, 200, 40)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        if i < count - without_mask:
            Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n\n")  # trailing blank lines are fine
    return root


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_classes_file_line_i_names_class_i_minus_1(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background\r\ntraffic light\ncar\n\n")
    assert read_classes_file(path) == ["background", "traffic light", "car"]
    for text, message in [("a\n\nb\n", r"classes.txt:2: empty line"), ("a\nb\na\n", r"classes.txt:3: .*'a' used twice"),
                          ("\n\n", r"classes.txt names no class")]:
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            read_classes_file(path)


def test_make_splits_writes_into_the_data_root(tmp_path, capsys):
    root = make_folder(tmp_path / "mine", count=20, without_mask=4)
    make_splits(["custom", str(root), "--labeled", "3", "--val-fraction", "0.25"])
    out = capsys.readouterr().out.splitlines()
    assert out == [f"wrote 3 and val.txt (16 train / 4 val images) to {root / 'splits'}",
                   f"{root / 'classes.txt'}: 3 classes (background, red square, green square)"]
    val = (root / "splits" / "val.txt").read_text().splitlines()
    labeled = (root / "splits" / "3" / "labeled.txt").read_text().splitlines()
    unlabeled = (root / "splits" / "3" / "unlabeled.txt").read_text().splitlines()
    assert len(val) == 4 and len(labeled) == 3 and len(unlabeled) == 13
    # The 4 images without a mask are unlabeled only (image-only lines); val and labeled ones have masks.
    maskless = [f"images/img{i}.png" for i in range(16, 20)]
    assert all(line in unlabeled for line in maskless)
    assert all(len(line.split()) == 2 for line in val + labeled)


def test_the_config_takes_classes_split_and_length_from_the_folder(tmp_path):
    root = make_folder(tmp_path / "mine")
    make_splits(["custom", str(root), "--labeled", "4"])  # 32 train (4 labeled, 28 unlabeled), 8 val
    cfg = compose_cfg(["dataset=custom", f"paths.data_root={root}"])
    assert (str(cfg.split), cfg.dataset.num_classes, list(cfg.dataset.class_names)) == ("4", 3, CLASSES)
    unlabeled = len(_lines(root / "splits" / "4" / "unlabeled.txt"))
    for overrides in ([], ["dataset.train_steps=300"], ["data.global_batch_size=null", "data.batch_size=4"]):
        cfg = compose_cfg(["dataset=custom", f"paths.data_root={root}", *overrides])
        batch = cfg.data.global_batch_size or cfg.data.batch_size
        steps_per_epoch, epochs = unlabeled // batch, cfg.trainer.max_epochs
        # the run is train_steps long, rounded up to whole epochs, and validates at most ~80 times
        assert (epochs - 1) * steps_per_epoch < cfg.dataset.train_steps <= epochs * steps_per_epoch
        assert math.ceil(epochs / cfg.trainer.check_val_every_n_epoch) <= 80
    assert compose_cfg(["dataset=custom", f"paths.data_root={root}", "dataset.epochs=5"]).trainer.max_epochs == 5
    # `--cfg job --resolve` resolves the config in place (OmegaConf.resolve): the class names from classes.txt too
    resolved = compose_cfg(["dataset=custom", f"paths.data_root={root}"])
    OmegaConf.resolve(resolved)
    assert list(resolved.dataset.class_names) == CLASSES

    (root / "classes.txt").unlink()  # the class count given instead: names class_0, ...
    cfg = compose_cfg(["dataset=custom", f"paths.data_root={root}", "dataset.num_classes=3"])
    assert cfg.dataset.num_classes == 3 and cfg.dataset.class_names is None


def test_a_second_split_leaves_the_choice_to_split(tmp_path):
    root = make_folder(tmp_path / "mine")
    make_splits(["custom", str(root), "--labeled", "4", "8"])
    cfg = compose_cfg(["dataset=custom", f"paths.data_root={root}"])
    assert cfg.split is None
    dm = SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, cfg.split, ("labeled", "unlabeled"))
    with pytest.raises(UserError, match=r"splits holds several splits: choose one with split=<4 \| 8>"):
        dm.setup("fit")
    cfg = compose_cfg(["dataset=custom", f"paths.data_root={root}", "split=8"])
    assert str(cfg.split) == "8"
    evaluation = SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, None, ())  # eval.py: val set only
    evaluation.setup("validate")
    assert len(evaluation.val_set) == 8


@pytest.mark.slow
def test_one_override_trains_a_folder(tmp_path):
    root = make_folder(tmp_path / "mine")
    make_splits(["custom", str(root), "--labeled", "4"])
    speed = ["trainer.max_steps=2", "logger=none", "backbone=tiny", "model=deeplabv3plus_tiny", "dataset.crop_size=32",
             "data.num_workers=0", "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'out'}"]
    run = run_cli("train.py", "dataset=custom", f"paths.data_root={root}", *speed)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results.json")]
    assert list(results["per_class_IoU"]) == CLASSES
    assert (results["dataset"], results["split"], results["steps"]) == ("custom", "4", 2)
    assert (results["devices"], results["global_batch_size"]) == (1, 8)  # the custom default: 8 + 8 per step
    assert last_line(run.stdout) == f"val mIoU: {results['best_val_mIoU']:.2f}"


@pytest.mark.slow
def test_each_missing_piece_is_one_line(tmp_path):
    root = make_folder(tmp_path / "mine")
    out = f"paths.output_dir={tmp_path / 'out'}"

    def error_line(*overrides: str) -> list[str]:
        run = run_cli("train.py", "dataset=custom", f"paths.data_root={root}", out, "logger=none", *overrides)
        assert run.returncode == 2, run.stderr[-3000:]
        return run.stderr.strip().splitlines()

    assert error_line() == [  # no split lists yet
        f"error: split folder not found: {root / 'splits'} (set dataset.splits_dir=<folder of val.txt and "
        "<split>/labeled.txt>, or write one with python -m sslseg.data.make_splits)"]
    make_splits(["custom", str(root), "--labeled", "4", "8"])
    assert error_line() == [f"error: {root / 'splits'} holds several splits: choose one with split=<4 | 8>"]
    (root / "classes.txt").unlink()
    assert error_line("split=4") == [
        f"error: dataset=custom needs its classes: {root / 'classes.txt'} not found (write one class name per line, "
        "the first line is class 0) or set dataset.num_classes=<number of classes>"]
