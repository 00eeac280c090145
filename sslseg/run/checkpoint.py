"""Checkpoints to resume from.

* Those a user names (`ckpt_path=`): read and checked before anything runs, so a wrong file is one line
  naming it, never a traceback or a run silently started from scratch.
* Those a run writes (`RunCheckpoints`): best.ckpt and last.ckpt at epoch ends, and last.ckpt every
  `callbacks.checkpoint.every_n_steps` training steps and when the run is stopped by SIGTERM or SIGINT.
  Each is written between two steps, with the data position and the random states, so the resumed run
  takes the same batches and draws as one never stopped.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sslseg.errors import UserError

# What a resumed run must share with the checkpoint's run: (config key, what it decides).
MUST_MATCH = (("method.name", "method"), ("dataset.num_classes", "class count"), ("backbone.name", "backbone"))


def read_checkpoint(path: str | Path) -> tuple[dict, DictConfig]:
    """The checkpoint's contents and the config it was trained with."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint path is a folder, not a checkpoint file: {path} (a run keeps its checkpoints "
                        "in <run dir>/checkpoints/best.ckpt and last.ckpt)")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # Memory-mapped: a resume only reads the config here (Lightning loads the file itself afterwards).
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        train_cfg = OmegaConf.create(checkpoint["hyper_parameters"]["cfg"])
    except Exception as exc:  # empty, truncated, random bytes, another program's file
        raise UserError(f"cannot read checkpoint {path}: not an sslseg Lightning checkpoint "
                        f"({exc.__class__.__name__})") from exc
    return checkpoint, upgrade_saved_config(train_cfg)


def upgrade_saved_config(cfg: DictConfig) -> DictConfig:
    """A config saved by an earlier sslseg, in today's keys: PCT's stage 2 was `method.phase: retrain` of the PCT
    class before it had its own."""
    if cfg.method.get("phase") == "retrain":
        cfg.method._target_, cfg.method.evaluate = "sslseg.methods.pct.PCTRetrain", "student"
    cfg.method.pop("phase", None)
    return cfg


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The file this run resumes from (`ckpt_path=<file>`, or `last`: the run directory's last.ckpt),
    checked to belong to a run of the same method, class count and backbone."""
    if cfg.ckpt_path is None:
        return None
    if cfg.method.get("stages"):
        raise UserError(f"method={cfg.method.name} runs in stages and resumes by itself: drop ckpt_path and rerun "
                        "the same command with hydra.run.dir=<the run's directory>")
    path = run_dir / "checkpoints" / "last.ckpt" if str(cfg.ckpt_path) == "last" else Path(str(cfg.ckpt_path))
    if str(cfg.ckpt_path) == "last" and not path.is_file():
        raise UserError(f"ckpt_path=last: no checkpoint at {path} (resume with hydra.run.dir=<the interrupted "
                        "run's directory>)")
    _, train_cfg = read_checkpoint(path)
    for key, what in MUST_MATCH:
        trained, now = OmegaConf.select(train_cfg, key), OmegaConf.select(cfg, key)
        if trained != now:
            raise UserError(f"{path} was trained with {key}={trained}, this run has {key}={now} "
                            f"(a resumed run keeps its {what})")
    return str(path)


def random_states() -> dict:
    """Python's, NumPy's and torch's global generators (CUDA's too where it runs): what dropout, feature
    perturbation and the methods' sampling draw from. DDP ranks share one seed, so rank 0's are everyone's."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)  # weights_only-loadable
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return states


def set_random_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RunCheckpoints(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best.ckpt by `monitor`, last.ckpt at epoch ends) that also writes
    last.ckpt every `every_n_steps` training steps (0: never) and when a signal stops the run, writes every
    file through a temporary name, and carries the run's wall time and random states across resumes.

    Lightning turns SIGTERM into an exception after the step in progress (synchronised across DDP ranks);
    SIGINT (Ctrl+C) is sent on as SIGTERM, so it takes the same path instead of interrupting a step
    half-way. `signal_received` says which signal stopped the run. `wall_seconds()` is the time of this
    part plus that of the parts before it, as recorded in the checkpoint it resumed from (time a killed
    part spent after its last checkpoint is trained again, and counted once)."""

    def __init__(self, every_n_steps: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.every_n_steps = int(every_n_steps)
        self.saved_at = -1
        self.signal_received: int | None = None
        self._previous_sigint = None
        self._started = time.monotonic()
        self._seconds_loaded = 0.0  # from the checkpoint a fit resumes (validate(ckpt_path) loads one too)
        self.seconds_before = 0.0  # the earlier parts of this fit
        self._random_states_to_restore: dict | None = None  # a resumed fit's, set at its first step

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def count_time_from(self, started: float) -> None:
        """Start this part's clock at `started` (time.monotonic()), e.g. before the data was set up."""
        self._started = started

    def wall_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self._started

    def state_dict(self) -> dict:
        return super().state_dict() | {"wall_seconds": self.wall_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._seconds_loaded = float(state_dict.get("wall_seconds", 0.0))
        super().load_state_dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.seconds_before = self._seconds_loaded
        self.saved_at = pl_module.train_steps  # a resumed run does not rewrite the checkpoint it started from
        if _in_main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self.signal_received = signal.SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C interrupts at once
        os.kill(os.getpid(), signal.SIGTERM)

    # Lightning 2.6 writes last.ckpt only where it also wrote best.ckpt. A resume, and the next round of a staged
    # method (DARS, PCT), need the latest state at every epoch end, improved or not: written where Lightning
    # would have written it (the end of the training epoch, or of a validation within the epoch).
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # The random states travel with the checkpoint: saved between two steps (those of the next step), restored at the
    # first step after a resume, once Lightning's set-up (sanity validation, new iterators) has drawn, so that the
    # resumed run draws as if it had never stopped.
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["random_states"] = random_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._random_states_to_restore = checkpoint.get("random_states")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._random_states_to_restore is not None:
            set_random_states(self._random_states_to_restore)
            self._random_states_to_restore = None
        # Between step k and step k+1: the previous step, its teacher update and its counter are done.
        steps = pl_module.train_steps
        if self.every_n_steps > 0 and steps > self.saved_at and steps % self.every_n_steps == 0:
            self.write_resume_point(trainer, steps)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):  # raised after a whole step, on every rank
            self.signal_received = self.signal_received or signal.SIGTERM
            self.write_resume_point(trainer, pl_module.train_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self.restore_sigint()

    def restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def write_resume_point(self, trainer, steps: int) -> None:
        self._save_checkpoint(trainer, str(self.path))
        self.saved_at = steps

    def _save_topk_checkpoint(self, trainer, monitor_candidates: dict) -> None:
        # A fit that ends before its first validation (a short trainer.max_steps, debug runs) has no val/mIoU yet:
        # no best.ckpt to write, and the run validates its final weights itself (experiment.fit). Lightning would
        # warn "could not find the monitored key ... Did you call log()?", which reads like a bug; the outcome is
        # the same without the warning. After a validation a missing key is still Lightning's error.
        if self.monitor is not None and self.monitor not in monitor_candidates \
                and not trainer.fit_loop.epoch_loop.val_loop._has_run:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Write to a temporary file, then rename: a run killed while writing keeps the previous file."""
        partial = Path(filepath).with_name(f".{Path(filepath).name}.partial")
        super()._save_checkpoint(trainer, str(partial))
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath


def _in_main_thread() -> bool:  # signal handlers can only be set there
    return threading.current_thread() is threading.main_thread()


class HandOver(Callback):
    """Starts a fit where another one ended (an offline method's next round): that fit's weights, statistics,
    teacher and step count when this one is set up, its optimizers' momentum when this one starts. The lr and the
    optimizers' other hyperparameters stay this fit's (its continued poly schedule), so the round's first step does
    not run at the previous round's last lr."""

    def __init__(self, checkpoint_path: str | Path):
        self.checkpoint_path = Path(checkpoint_path)
        self._optimizer_states: list[dict] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        checkpoint = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        pl_module.load_state_dict(checkpoint["state_dict"])
        pl_module.train_steps = int(checkpoint.get("train_steps", 0))
        self._optimizer_states = checkpoint["optimizer_states"]

    def on_fit_start(self, trainer, pl_module) -> None:
        for optimizer, old in zip(trainer.optimizers, self._optimizer_states or []):
            optimizer.load_state_dict({"state": old["state"], "param_groups": optimizer.state_dict()["param_groups"]})
        self._optimizer_states = None


class ResumedLogSteps(Callback):
    """Keeps a resumed fit's log rows at the steps the uninterrupted fit logs them. Loggers label a row with
    Lightning's count of batches that stepped, which a resume restores from the checkpoint plus one unless the
    checkpoint was written after a step's end hooks; sslseg's step checkpoints (written before the next step) and
    epoch-end ones are not, so the resumed rows came one step late. The count is set from the module's own step
    counter instead, less the steps a handed-over fit (an offline method's next round) started with. It must come
    before any callback that logs at a batch's start (the lr monitor): first in the list."""

    def __init__(self):
        self.steps_before_fit: int | None = None  # the module's step count when this fit's count of batches was 0

    def state_dict(self) -> dict:
        return {"steps_before_fit": self.steps_before_fit}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps_before_fit = state_dict.get("steps_before_fit")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if self.steps_before_fit is None:  # a fresh fit's first step (or a checkpoint from before this callback)
            self.steps_before_fit = pl_module.train_steps - loop._batches_that_stepped
        loop._batches_that_stepped = pl_module.train_steps - self.steps_before_fit
