"""Experiment loggers and callbacks, built from the `logger` and `callbacks` config groups.

Every entry with a `_target_` is instantiated, so any Lightning logger or callback (TensorBoard, MLflow,
EarlyStopping, RichProgressBar, one of your own) is a config file or a command-line override away. sslseg
fills in what only the run knows: the folder of each fit (`save_dir` of a logger, `dirpath: null` of a
checkpoint callback). The sslseg loggers below continue an interrupted run's logs when it resumes.
"""

from __future__ import annotations

import csv
import netrc
import os
import secrets
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.errors import UserError


def build_loggers(cfg: DictConfig, save_dir: Path) -> list[Logger]:
    """The `logger` group's loggers (`logger=[csv,tensorboard]` selects several; `logger=none` none)."""
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise UserError(f"logger.{key}: expected a config with a _target_ (see conf/logger/)")
        loggers.append(_instantiate(node, f"logger.{key}", save_dir=str(save_dir)))
    return loggers


def _instantiate(node: DictConfig, where: str, **kwargs):
    """A missing optional package (tensorboard, rich, mlflow) is the user's to install: one line."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ModuleNotFoundError):
            raise UserError(f"{where} ({node._target_}): {str(exc.__cause__).splitlines()[0]}") from None
        raise


def build_callbacks(cfg: DictConfig, checkpoint_dir: Path, trainer_cfg: DictConfig, with_logger: bool) -> list:
    """The `callbacks` group's callbacks. A monitor of the learning rate and W&B media need a logger, and a progress bar
    needs `trainer.enable_progress_bar`: without them those are left out (Lightning would refuse to start)."""
    callbacks = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue  # a plain option of the group, or an entry switched off (null)
        kwargs = {"dirpath": str(checkpoint_dir)} if "dirpath" in node and node.dirpath is None else {}
        callback = _instantiate(node, f"callbacks.{key}", **kwargs)
        if not isinstance(callback, Callback):
            raise UserError(f"callbacks.{key}: {node._target_} is not a Lightning callback")
        if isinstance(callback, (LearningRateMonitor, ValidationMedia)) and not with_logger:
            continue
        if isinstance(callback, ProgressBar) and not trainer_cfg.get("enable_progress_bar", True):
            continue
        callbacks.append(callback)
    return callbacks


class LossProgressBar(TQDMProgressBar):
    """Lightning's bar with the training loss. The loss is read from the device only when the bar refreshes
    (every `refresh_rate` steps), not each step. The bars are closed when the run fails, so that the error
    line starts on a fresh line instead of after the bar."""

    validation_label = "validation"  # the fit's evaluation of best.ckpt says which checkpoint (experiment.fit)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items.pop("val/mIoU", None)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            items["loss"] = f"{float(loss):.3f}"
        last_val = getattr(pl_module, "last_val", None)
        if last_val is not None:  # the latest validation's number, already on the host
            items["val mIoU"] = f"{last_val['mIoU']:.2f}"
        return items

    @property
    def validation_description(self) -> str:
        return self.validation_label

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.leave = False  # a finished validation leaves the training bar, which shows its mIoU
        return bar

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if self._val_progress_bar is not None and not trainer.sanity_checking:  # not "... DataLoader 0"
            self.val_progress_bar.set_description(self.validation_description, refresh=False)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar,
                    self._predict_progress_bar):
            if bar is not None and not getattr(bar, "disable", True):
                bar.close()


# -- CSV ------------------------------------------------------------------------------------------------
class AppendingCSVLogger(CSVLogger):
    """`<save_dir>/<name>/metrics.csv` (and hparams.yaml), continued by a resumed run. Lightning's writer
    deletes an existing metrics.csv; this one keeps it, and drops the rows the interrupted part logged after
    the checkpoint the run resumed from, since the resumed part logs those steps again."""

    def __init__(self, save_dir: str, name: str = "csv", **kwargs):
        super().__init__(save_dir=save_dir, name=name, version="", **kwargs)

    @property
    @rank_zero_only
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        self._continues = os.path.isfile(self.metrics_file_path)
        if self._continues:  # an earlier part's rows: keep them and their columns
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def save(self) -> None:
        if self._continues and self.metrics:
            # The resumed part's first row is the first step after its checkpoint that logs anything; every
            # earlier row at that step or later came from the interrupted part and is logged again now.
            first_step = min(int(row["step"]) for row in self.metrics)
            with open(self.metrics_file_path, newline="") as file:
                kept = [row for row in csv.DictReader(file) if int(float(row["step"])) < first_step]
            with open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._continues = False
        super().save()


# -- Weights & Biases ------------------------------------------------------------------------------------
RUN_ID_FILE = "wandb_run_id"


def wandb_logged_in() -> bool:
    """True when an API key is available (env or ~/.netrc from `wandb login`), without network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str = "sslseg", entity: str | None = None, group: str | None = None,
                 mode: str = "auto", tags: list | None = None, **kwargs) -> WandbLogger:
    """A W&B run for one fit. `mode: auto` is online when logged in, else offline into the run folder.
    The run's id is kept in `<save_dir>/wandb_run_id`, so a resumed fit continues the same W&B run. `group`
    null: the sweep's folder name in a Hydra multirun (one W&B run per job, grouped by sweep), else the
    run's tags joined (method_dataset_split)."""
    mode = os.environ.get("WANDB_MODE") or mode
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    os.environ["WANDB_SILENT"] = "true"  # keep the run's console output to our own lines
    tags = [str(t) for t in tags or []]
    if group is None:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        group = Path(HydraConfig.get().sweep.dir).name if multirun else "_".join(tags) or None
    id_file = Path(save_dir) / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)  # not the seeded RNGs
    if rank_zero_only.rank == 0:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    logger = WandbLogger(project=project, entity=entity, group=group, name=Path(save_dir).name, save_dir=save_dir,
                         mode=mode, tags=tags, id=run_id, resume="allow", **kwargs)
    # Lightning passes `anonymous=None` to wandb.init, and wandb 0.2x+ warns that the setting has no effect whatever
    # its value: leave the key out unless the user set it.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    logger.sslseg_mode = mode  # for the run's start block (logger_lines)
    return logger


def logger_lines(loggers: list[Logger]) -> list[str]:
    """One line per logger for the run's start block: where its records go (W&B: the run's link, or the offline
    folder and the command that syncs it)."""
    lines = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            mode = getattr(logger, "sslseg_mode", "online")
            if mode == "offline":
                lines.append(f"W&B offline (not logged in): sync later with "
                             f"`wandb sync {logger.save_dir}/wandb/offline-run-*`")
            elif mode == "disabled":
                lines.append("W&B disabled (WANDB_MODE=disabled)")
            else:
                url = None
                if rank_zero_only.rank == 0:
                    try:
                        url = logger.experiment.url  # starts the W&B run now (Lightning would at the fit's start)
                    except Exception:  # noqa: BLE001 - the link is a courtesy; the fit reports real W&B errors
                        url = None
                lines.append(f"W&B: {url or f'project {logger.name}'}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"CSV: {Path(logger.log_dir) / 'metrics.csv'}")
        else:
            where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
            lines.append(f"{type(logger).__name__}: {where}")
    return lines


def log_config(loggers: list[Logger], cfg: DictConfig, extra: dict) -> None:
    hyperparameters = OmegaConf.to_container(cfg, resolve=True) | extra
    for logger in loggers:
        logger.log_hyperparams(hyperparameters)


class ValidationMedia(Callback):
    """W&B media of each validation: the per-class IoU table and the prediction overlays of the first `images` val
    images, drawn with the network the validation reported. Does nothing without a W&B logger."""

    def __init__(self, images: int = 4):
        self.images = int(images)
        self._examples: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []

    @staticmethod
    def _wandb(trainer) -> WandbLogger | None:
        if not trainer.is_global_zero:
            return None
        return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep the first val images with every network's prediction (`outputs` of validation_step)."""
        wanted = self.images - len(self._examples)
        if wanted <= 0 or not outputs or self._wandb(trainer) is None:
            return
        for i in range(min(wanted, batch["image"].shape[0])):
            self._examples.append((batch["image"][i].permute(1, 2, 0).cpu().numpy(), batch["mask"][i].cpu().numpy(),
                                   {name: p[i].cpu().numpy() for name, p in outputs.items()}))

    def on_validation_end(self, trainer, pl_module) -> None:
        examples, self._examples = self._examples, []
        wandb_logger, last_val = self._wandb(trainer), pl_module.last_val
        if wandb_logger is None or last_val is None:
            return
        step = trainer.global_step
        wandb_logger.log_table("val/per_class_IoU", columns=["class", "IoU"],
                               data=[[name, iou] for name, iou in last_val["per_class_IoU"].items()], step=step)
        if examples:
            labels = dict(enumerate(pl_module.class_names)) | {IGNORE_INDEX: "ignore"}
            overlay = lambda mask: {"mask_data": mask.astype(np.uint8), "class_labels": labels}
            wandb_logger.log_image("val/predictions", images=[image for image, _, _ in examples], step=step,
                                   masks=[{"prediction": overlay(p[last_val["network"]]), "ground_truth": overlay(m)}
                                          for _, m, p in examples])

    on_test_batch_end = on_validation_batch_end
    on_test_end = on_validation_end
