"""Loggers and callbacks built from their config groups; the CSV log a resumed run continues; train.log."""

import csv
import io

import pytest
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

from sslseg.errors import UserError
from sslseg.run.checkpoint import RunCheckpoints
from sslseg.run.console import _Tee
from sslseg.run.loggers import AppendingCSVLogger, LossProgressBar, ValidationMedia, build_callbacks, build_loggers
from tests.conftest import compose_cfg


def test_callbacks_from_the_group_with_the_fits_checkpoint_folder(tmp_path):
    cfg = compose_cfg(["callbacks=[default,early_stopping]"])
    callbacks = build_callbacks(cfg, tmp_path / "checkpoints", cfg.trainer, with_logger=True)
    kinds = {type(c) for c in callbacks}
    assert kinds == {RunCheckpoints, LearningRateMonitor, LossProgressBar, ValidationMedia, EarlyStopping}
    (checkpoint,) = [c for c in callbacks if isinstance(c, RunCheckpoints)]
    assert checkpoint.dirpath == str(tmp_path / "checkpoints") and checkpoint.every_n_steps == 1000


def test_lr_monitor_and_media_need_a_logger_and_the_bar_needs_the_trainers_bar(tmp_path):
    cfg = compose_cfg(["trainer.enable_progress_bar=false"])
    callbacks = build_callbacks(cfg, tmp_path, cfg.trainer, with_logger=False)
    assert [type(c) for c in callbacks] == [RunCheckpoints]


def test_loggers_several_none_and_a_missing_package(tmp_path):
    assert build_loggers(compose_cfg(["logger=none"]), tmp_path) == []
    cfg = compose_cfg(["logger=[csv,wandb]", "logger.wandb.mode=disabled"])
    assert [type(logger).__name__ for logger in build_loggers(cfg, tmp_path)] == ["AppendingCSVLogger", "WandbLogger"]
    cfg = compose_cfg(["+logger.x._target_=not_a_package.Logger"])
    with pytest.raises(Exception) as caught:  # a typo in a target is not a missing package: keeps Hydra's error
        build_loggers(cfg, tmp_path)
    assert not isinstance(caught.value, UserError)


class NeedsAPackage:
    """A logger whose optional package is not installed, as Lightning's TensorBoardLogger without tensorboard."""

    def __init__(self, save_dir: str):
        raise ModuleNotFoundError("`somepackage` is not available. Try `pip install somepackage`.\nmore detail")


def test_a_missing_optional_package_is_one_line(tmp_path):
    cfg = compose_cfg(["logger=none", "+logger.x._target_=tests.test_loggers.NeedsAPackage"])
    with pytest.raises(UserError) as caught:
        build_loggers(cfg, tmp_path)
    assert str(caught.value) == ("logger.x (tests.test_loggers.NeedsAPackage): `somepackage` is not available. "
                                 "Try `pip install somepackage`.")


def _rows(path):
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def test_a_resumed_csv_log_keeps_the_earlier_rows_up_to_its_checkpoint(tmp_path):
    first = AppendingCSVLogger(str(tmp_path))
    for step in (9, 19, 29):
        first.log_metrics({"train/loss": step / 100}, step=step)
    first.log_metrics({"val/mIoU": 50.0}, step=24)  # written out of order: rows are kept by step, not position
    first.save()
    # Killed after step 29; the checkpoint was at step 20, so the resumed part logs 24, then 29 again.
    resumed = AppendingCSVLogger(str(tmp_path))
    resumed.log_metrics({"val/mIoU": 51.0}, step=24)
    resumed.log_metrics({"train/loss": 0.28}, step=29)
    resumed.save()
    assert _rows(tmp_path / "csv" / "metrics.csv") == [
        {"step": "9", "train/loss": "0.09"}, {"step": "19", "train/loss": "0.19"},
        {"step": "24", "val/mIoU": "51.0"}, {"step": "29", "train/loss": "0.28"}]


def test_train_log_keeps_a_progress_bars_last_state_per_line():
    console, log = io.StringIO(), io.StringIO()
    tee = _Tee(console, log)
    tee.write("start\n\rEpoch 0: 10%")
    tee.write("\rEpoch 0: 50%\rEpoch 0: 100%")
    tee.write("\nval mIoU: 70.00\npartial")
    tee.close_line()
    assert console.getvalue() == "start\n\rEpoch 0: 10%\rEpoch 0: 50%\rEpoch 0: 100%\nval mIoU: 70.00\npartial"
    assert log.getvalue() == "start\nEpoch 0: 100%\nval mIoU: 70.00\npartial\n"
