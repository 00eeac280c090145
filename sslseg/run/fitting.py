"""One Lightning fit of a run: the Trainer's settings, the data, the callbacks and loggers, the start block, and the
validations that decide the reported number (train.py's entry point and the stage runner both call `fit`)."""

from __future__ import annotations

import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sslseg.data.batch import describe_batch
from sslseg.data.datamodule import SemiSegDataModule
from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.run.checkpoint import HandOver, ResumedLogSteps, RunCheckpoints
from sslseg.run.cli import is_launcher_rank
from sslseg.run.console import network_label, quiet_third_party, say, start_block
from sslseg.run.loggers import LossProgressBar, build_callbacks, build_loggers, log_config, logger_lines


def build_datamodule(cfg: DictConfig, streams: tuple[str, ...], split=None,
                     pseudo_list: Path | None = None) -> SemiSegDataModule:
    return SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, split, streams, int(cfg.seed),
                             pseudo_list=pseudo_list)


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    accelerator = trainer_cfg.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


HALF_PRECISION = ("16-mixed", "16", 16, "16-true")  # fp16: needs a GPU in Lightning


def trainer_kwargs(cfg: DictConfig, say: bool = False) -> dict:
    """The Trainer's keyword arguments from `trainer`. The recipes' precision is the reference's (32-true, or
    16-mixed with a GradScaler for DDFP and PCT); without a GPU fp16 runs as 32-true (`say`: one line says so)."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    gpu = uses_gpu(cfg.trainer)
    if kwargs.get("precision") == "auto":
        kwargs["precision"] = "bf16-mixed" if gpu else "32-true"
    if kwargs.get("precision") in HALF_PRECISION and not gpu:
        if say:
            rank_zero_info(f"trainer.precision={kwargs['precision']} runs as 32-true without a GPU")
        kwargs["precision"] = "32-true"
    if not kwargs.get("check_val_every_n_epoch"):  # validation.every_n_epochs=0: ValidationCadence decides
        kwargs["check_val_every_n_epoch"] = 1
    if OmegaConf.select(cfg, "method.find_unused_parameters", default=False) and kwargs.get("strategy") == "ddp":
        # a method whose graph leaves some parameters out in some steps (DDFP's epoch 0)
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
    if kwargs.get("sync_batchnorm") and not gpu:
        # torch's SyncBatchNorm runs on CUDA only; CPU processes normalise with their own batch.
        rank_zero_info("trainer.sync_batchnorm ignored on CPU (SyncBatchNorm needs GPUs)")
        kwargs["sync_batchnorm"] = False
    return kwargs


class ValidationCadence(pl.Callback):
    """The reference's validation epochs (`validation`): epoch e (1-based, counted over an offline method's
    rounds, as semseg's epoch_log) validates when every_n_epochs > 0, e > after_epoch and
    (e - after_epoch) % every_n_epochs == 0; every_n_epochs 0 validates no epoch (the final weights are scored
    after training, `fit`). Lightning reads trainer.check_val_every_n_epoch at every epoch: set here."""

    NEVER = 1 << 30

    def __init__(self, every_n_epochs: int, after_epoch: int = 0, offset_epochs: int = 0):
        self.every, self.after, self.offset = int(every_n_epochs), int(after_epoch), int(offset_epochs)

    def validates(self, epoch: int) -> bool:
        """Whether the epoch of 0-based index `epoch` in this fit ends with a validation."""
        e = self.offset + epoch + 1
        return self.every > 0 and e > self.after and (e - self.after) % self.every == 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        trainer.check_val_every_n_epoch = 1 if self.validates(trainer.current_epoch) else self.NEVER


def validation_cadence(cfg: DictConfig) -> ValidationCadence | None:
    """The callback when `validation` is more than Lightning's every-n-epochs (a start epoch, or none at all)."""
    val = cfg.get("validation") or {}
    every, after = int(val.get("every_n_epochs", 1) or 0), int(val.get("after_epoch", 0) or 0)
    if every > 0 and after == 0:
        return None  # trainer.check_val_every_n_epoch follows validation.every_n_epochs
    return ValidationCadence(every, after, int(cfg.optim.get("schedule_offset_epochs", 0) or 0))


PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def profiler_into(name: str, out_dir: Path) -> Profiler | str:
    """`trainer.profiler=simple|advanced|pytorch` (debug=profiler) with its report written into the run directory,
    as fit-profile.txt and validate-profile.txt: given by name, Lightning logs the report, and a train.py run prints
    none of Lightning's log lines (quiet_duplicate_logs)."""
    cls = PROFILERS.get(name.lower())
    return name if cls is None else cls(dirpath=out_dir, filename="profile")


def _finish_wandb() -> None:
    """Close this fit's W&B run, so that the next job of a Hydra sweep (same process) or the next stage
    starts its own. (wandb.finish() takes no `quiet` since 0.19; an except-all here once hid that.)"""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def quiet_duplicate_logs() -> None:
    """Lightning prints through its own handler (Hydra's root handler would print every line twice), and the
    libraries' warnings about what sslseg does on purpose are silenced (sslseg.run.console.quiet_third_party)."""
    quiet_third_party()


def cpu_note(cfg: DictConfig) -> str | None:
    """dataset=custom picks ResNet-101 (the papers' network): on a machine without a GPU, one line says so and
    how to pick a network the CPU can train."""
    if cfg.dataset.name != "custom" or uses_gpu(cfg.trainer) or cfg.backbone.name == "tiny":
        return None
    return (f"note: dataset=custom trains backbone={cfg.backbone.name} at crop {cfg.dataset.crop_size}, sized for a "
            "GPU; on this CPU a step takes minutes and GBs of memory. A CPU-sized run: backbone=tiny "
            "model=deeplabv3plus_tiny dataset.crop_size=48 (docs/data.md)")


def describe_devices(trainer: pl.Trainer) -> str:
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator").replace("CUDA", "GPU")
    nodes = f" x {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else ""
    return f"{trainer.num_devices} {kind}{nodes}, precision {trainer.precision}"


def resume_line(ckpt_path: str | None) -> str | None:
    """Which step a resumed fit continues from (the checkpoint's own count of training steps)."""
    if ckpt_path is None:
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    steps = checkpoint.get("train_steps", checkpoint.get("global_step"))
    return f"resuming from step {steps} (epoch {checkpoint.get('epoch')}): {ckpt_path}"


def fit(cfg: DictConfig, cls: type[SemiSegModule], out_dir: Path, ckpt_path: str | None = None,
        streams: tuple[str, ...] | None = None, pseudo_list: Path | None = None,
        handover: Path | None = None, started: float | None = None) -> dict:
    """One Lightning fit into `out_dir` (checkpoints/, logs), then the best checkpoint's validation.
    `ckpt_path` resumes this fit; `handover` starts it from another fit's checkpoint (weights and
    optimizer momentum: an offline method's next round); `pseudo_list` feeds the pseudo stream. The wall
    time counts from `started` (time.monotonic()), plus that of the parts of an interrupted fit before it."""
    started = time.monotonic() if started is None else started
    note = cpu_note(cfg)
    if note and is_launcher_rank():
        say(note)  # before the network is built (and its pretrained file looked for)
    datamodule = build_datamodule(cfg, streams or cls.data_streams(cfg.method), split=cfg.split,
                                  pseudo_list=pseudo_list)
    if is_launcher_rank():  # fail on bad paths/splits before building anything expensive
        datamodule.prepare_data()
        datamodule.setup("fit")
    module = cls(cfg)

    loggers = build_loggers(cfg, out_dir)
    callbacks = build_callbacks(cfg, out_dir / "checkpoints", cfg.trainer, with_logger=bool(loggers))
    callbacks.insert(0, ResumedLogSteps())  # before the lr monitor, which logs at a step's start
    cadence = validation_cadence(cfg)
    if cadence is not None:
        callbacks.append(cadence)
    if handover is not None:
        callbacks.append(HandOver(handover))
    checkpoint = next((c for c in callbacks if isinstance(c, RunCheckpoints)), None)
    if checkpoint is None:
        raise UserError("callbacks.checkpoint: sslseg needs an sslseg.run.checkpoint.RunCheckpoints callback "
                        "(its best.ckpt is evaluated, resumed and loaded by eval.py)")
    checkpoint.count_time_from(started)
    kwargs = trainer_kwargs(cfg, say=True)
    if isinstance(kwargs.get("profiler"), str):
        kwargs["profiler"] = profiler_into(kwargs["profiler"], out_dir)
    trainer = pl.Trainer(**kwargs, logger=loggers or False, callbacks=callbacks, default_root_dir=str(out_dir))
    batch, global_batch, batch_line = describe_batch(cfg.data, trainer.world_size)  # the DataModule derives the same
    log_config(loggers, cfg, {"global_batch_size": global_batch, "batch_size_per_device": batch,
                              "world_size": trainer.world_size, "run_dir": str(out_dir)})
    say(*start_block(run_dir=out_dir, method=cfg.method.name, dataset=cfg.dataset.name, split=cfg.split,
                     seed=int(cfg.seed), networks=module.evaluated_networks(), devices=describe_devices(trainer),
                     batch_line=batch_line, logger_lines=logger_lines(loggers), resume_line=resume_line(ckpt_path)))
    quiet_third_party()
    if ckpt_path is not None:  # a resumed fit writes into its own checkpoints/ on purpose
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    bar = next((c for c in callbacks if isinstance(c, LossProgressBar)), None)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        steps = module.train_steps  # validate(ckpt_path=...) below restores the best checkpoint's count
        # Kept in a local: validate(ckpt_path=...) restores the callback's state from that file.
        best_path = checkpoint.best_model_path
        if module.last_val is None or module.validated_at != steps:
            # The final weights were not validated (a step budget that ends mid-epoch, a cadence that skips the
            # last epoch, PCT's final-only test): score them, and keep them as best.ckpt when they beat the rest.
            best_score = None if module.last_val is None or not best_path else checkpoint.best_model_score
            _label(bar, "validation of the final weights")
            trainer.validate(module, datamodule=datamodule, verbose=False)
            module.validations += 1
            if best_score is None or module.last_val["mIoU"] > float(best_score):
                best_path = str(out_dir / "checkpoints" / "best.ckpt")
                trainer.save_checkpoint(best_path)
        if not best_path:  # validated, but no checkpoint written (fast_dev_run): the final weights are the best
            best_path = str(out_dir / "checkpoints" / "best.ckpt")
            trainer.save_checkpoint(best_path)
        final = best = module.last_val
        validations = module.validations
        if cfg.evaluate_best:
            _label(bar, "validation of best.ckpt")
            trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            best = module.last_val
    except SIGTERMException:
        signum = checkpoint.signal_received or signal.SIGTERM
        _say_how_to_resume(cfg, signal.Signals(signum).name, module.train_steps, checkpoint.path)
        raise SystemExit(128 + signum) from None
    finally:
        checkpoint.restore_sigint()
        _finish_wandb()

    return {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "split": str(cfg.split),
        "backbone": module.cfg.backbone.name, "decoder": module.cfg.model.name, "seed": int(cfg.seed),
        "best_val_mIoU": best["mIoU"], "final_val_mIoU": final["mIoU"],
        # The network behind best_val_mIoU (model = the student, teacher = the EMA teacher, pseudo_net = PCT's
        # PseudoNet), and each evaluated network's mIoU at that checkpoint.
        "network": best["network"], "network_label": network_label(best["network"]),
        "network_scores": module.network_scores,
        # The references' mean over all K classes (absent ones count 0); *_val_mIoU averages the classes present.
        "best_val_mIoU_all_classes": best["mIoU_all_classes"], "final_val_mIoU_all_classes": final["mIoU_all_classes"],
        "eval_protocol": OmegaConf.to_container(cfg.dataset.eval, resolve=True),
        "per_class_IoU": best["per_class_IoU"],
        "best_checkpoint": best_path, "steps": steps,
        # What the recipe's paper reports (best of the validations, or the final weights), and how many
        # validations the best was chosen from (the reference's cadence, plus the final weights when it skipped them).
        "reported": reported(cfg), "best_from_validations": validations,
        "epochs": int(trainer.current_epoch),
        "devices": trainer.world_size, "global_batch_size": global_batch,
        "precision": str(trainer.precision), "run_dir": str(out_dir),
        "wall_seconds": round(checkpoint.wall_seconds(), 1),  # this fit's parts, if it was resumed
        "uses_image_tags": module.uses_image_tags,  # semi-and-weakly supervised (PCT): not comparable with SSS rows
    }


def _label(bar: LossProgressBar | None, text: str) -> None:
    if bar is not None:
        bar.validation_label = text


@rank_zero_only
def _say_how_to_resume(cfg: DictConfig, signal_name: str, steps: int, checkpoint: Path) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    command = shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={hydra_cfg.runtime.output_dir}"])
    if not cfg.method.get("stages"):  # a staged run finds its stage's last.ckpt by itself
        command += " ckpt_path=last"
    print(f"\nstopped by {signal_name} after step {steps}, checkpoint {checkpoint}; resume with: {command}",
          file=sys.stderr, flush=True)


def reported(cfg: DictConfig) -> str:
    """best | final: the number the run's paper reports (its recipe's `reported`; best without a recipe)."""
    recipe = cfg.get("recipe")
    return str(recipe.get("reported", "best")) if recipe else "best"
