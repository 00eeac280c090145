"""Building a run from the composed config, and the training entry point behind train.py."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sslseg.checkpoint import ResumePoints, resume_checkpoint
from sslseg.data.datamodule import SemiSegDataModule
from sslseg.errors import UserError
from sslseg.loggers import build_logger, log_config
from sslseg.methods.base import SemiSegModule
from sslseg.results import format_iou_table, write_results


def method_class(cfg: DictConfig) -> type[SemiSegModule]:
    try:
        cls = get_class(cfg.method._target_)
    except Exception as exc:
        raise UserError(f"method.{cfg.method.name}: cannot import {cfg.method._target_}") from exc
    return cls


def build_datamodule(cfg: DictConfig, streams: tuple[str, ...], split=None,
                     pseudo_list: Path | None = None) -> SemiSegDataModule:
    return SemiSegDataModule(cfg.dataset, cfg.data, cfg.paths.data_root, split, streams, int(cfg.seed),
                             pseudo_list=pseudo_list)


def uses_gpu(trainer_cfg: DictConfig) -> bool:
    accelerator = trainer_cfg.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def trainer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    gpu = uses_gpu(cfg.trainer)
    if kwargs.get("precision") == "auto":
        kwargs["precision"] = "bf16-mixed" if gpu else "32-true"
    if OmegaConf.select(cfg, "method.find_unused_parameters", default=False) and kwargs.get("strategy") == "ddp":
        # a method whose graph leaves some parameters out in some steps (DDFP's epoch 0)
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
    if kwargs.get("sync_batchnorm") and not gpu:
        # torch's SyncBatchNorm runs on CUDA only; CPU processes normalise with their own batch.
        rank_zero_info("trainer.sync_batchnorm ignored on CPU (SyncBatchNorm needs GPUs)")
        kwargs["sync_batchnorm"] = False
    return kwargs


PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def profiler_into(name: str, out_dir: Path) -> Profiler | str:
    """`trainer.profiler=simple|advanced|pytorch` (debug=profiler) with its report written into the run directory,
    as fit-profile.txt and validate-profile.txt: given by name, Lightning logs the report, and a train.py run prints
    none of Lightning's log lines (quiet_duplicate_logs)."""
    cls = PROFILERS.get(name.lower())
    return name if cls is None else cls(dirpath=out_dir, filename="profile")


def _is_launcher_rank() -> bool:
    """True in the process the user started (DDP children are relaunched with LOCAL_RANK set), or in SLURM's
    task 0 when srun started one process per device (launcher=slurm: SLURM_PROCID is the global rank)."""
    return all(int(os.environ.get(name, 0)) == 0 for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


_RUN_DIR_LOCKS: list = []  # open lock files, held until the process exits


def claim_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on the run directory for the life of this process, so that two runs
    resolved to the same directory (same method/dataset/split/seed started in the same second)
    cannot overwrite each other's checkpoints and logs. The OS drops the lock when the process ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"run directory {run_dir} is in use by another run; wait a second or set "
                        "hydra.run.dir=<another folder>") from None
    _RUN_DIR_LOCKS.append(handle)


SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def check_launch(cfg: DictConfig) -> None:
    """Multi-device DDP under Hydra -m only with the submitit SLURM launcher (launcher=slurm): there each job is
    its own SLURM job whose srun starts one process per device, and Lightning takes the ranks from SLURM. Other
    launchers run the jobs in one process, where Lightning would relaunch the sweep's argv for every rank."""
    hydra_cfg = HydraConfig.get()
    strategy, devices = str(cfg.trainer.strategy), cfg.trainer.devices
    on_slurm = OmegaConf.select(hydra_cfg, "launcher._target_") == SLURM_LAUNCHER
    if hydra_cfg.mode == RunMode.MULTIRUN and strategy.startswith("ddp") and devices != 1 and not on_slurm:
        raise UserError("trainer=ddp cannot run under Hydra -m (Lightning relaunches argv per rank); "
                        "loop over single runs instead, or submit the sweep to SLURM with launcher=slurm")


def _finish_wandb() -> None:
    """Close this fit's W&B run, so that the next job of a Hydra sweep (same process) or the next stage
    starts its own. (wandb.finish() takes no `quiet` since 0.19; an except-all here once hid that.)"""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def quiet_duplicate_logs() -> None:
    """Lightning prints through its own handler; Hydra's root handler would print every line twice."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False


def train(cfg: DictConfig) -> dict | None:
    """Fit (or run the method's stages), evaluate the best checkpoint, write results.json; returns the
    results (rank 0 writes them)."""
    start = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_launch(cfg)
    ckpt_path = resume_checkpoint(cfg, run_dir)
    if _is_launcher_rank():  # DDP children share their launcher's directory
        claim_run_dir(run_dir)
    quiet_duplicate_logs()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.perf.matmul_precision)

    cls = method_class(cfg)
    if cfg.method.get("stages"):
        from sslseg.stages import run_stages

        results = run_stages(cfg, cls, run_dir)
    else:
        results = fit(cfg, cls, run_dir, ckpt_path=ckpt_path)
    results["wall_seconds"] = round(time.time() - start, 1)
    debug = HydraConfig.get().runtime.choices.get("debug")
    if debug:  # a debug config's cut-short run: `python -m sslseg.results` leaves it out
        results["debug"] = debug
    _report(run_dir, results)
    return results


def fit(cfg: DictConfig, cls: type[SemiSegModule], out_dir: Path, ckpt_path: str | None = None,
        streams: tuple[str, ...] | None = None, pseudo_list: Path | None = None,
        handover: Path | None = None) -> dict:
    """One Lightning fit into `out_dir` (checkpoints/, logs), then the best checkpoint's validation.
    `ckpt_path` resumes this fit; `handover` starts it from another fit's checkpoint (weights and
    optimizer momentum: an offline method's next round); `pseudo_list` feeds the pseudo stream."""
    datamodule = build_datamodule(cfg, streams or cls.data_streams(cfg.method), split=cfg.split,
                                  pseudo_list=pseudo_list)
    if _is_launcher_rank():  # fail on bad paths/splits before building anything expensive
        datamodule.prepare_data()
        datamodule.setup("fit")
    module = cls(cfg)
    if handover is not None:
        module.continue_from(handover)

    logger = build_logger(cfg, out_dir)
    ckpt_cfg = cfg.callbacks.checkpoint
    # One best.ckpt and one last.ckpt: ResumePoints writes last.ckpt too, and a resumed run finds its own files
    # (Lightning would otherwise version the names: last-v1.ckpt).
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=ckpt_cfg.monitor,
                                 mode=ckpt_cfg.mode, save_last=ckpt_cfg.save_last, auto_insert_metric_name=False,
                                 enable_version_counter=False)
    resume_points = ResumePoints(out_dir / "checkpoints", ckpt_cfg.every_n_steps)
    callbacks = [checkpoint, resume_points]
    if logger is not None and cfg.callbacks.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    kwargs = trainer_kwargs(cfg)
    if isinstance(kwargs.get("profiler"), str):
        kwargs["profiler"] = profiler_into(kwargs["profiler"], out_dir)
    trainer = pl.Trainer(**kwargs, logger=logger or False, callbacks=callbacks, default_root_dir=str(out_dir))
    global_batch = int(cfg.data.batch_size) * trainer.world_size
    log_config(logger, cfg, {"global_batch_size": global_batch, "world_size": trainer.world_size,
                             "run_dir": str(out_dir)})
    # A teacher is kept in eval mode by design (method.teacher.train_mode_epochs); Lightning warns about it.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        steps = module.train_steps  # validate(ckpt_path=...) below restores the best checkpoint's count
        # Kept in a local: validate(ckpt_path=...) restores the callback's state from that file.
        best_path = checkpoint.best_model_path
        if module.last_val is None or not best_path:  # stopped (max_steps) before any validation
            trainer.validate(module, datamodule=datamodule, verbose=False)
            best_path = str(out_dir / "checkpoints" / "best.ckpt")
            trainer.save_checkpoint(best_path)
        final = best = module.last_val
        if cfg.evaluate_best:
            trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            best = module.last_val
    except SIGTERMException:
        signum = resume_points.signal_received or signal.SIGTERM
        _say_how_to_resume(cfg, signal.Signals(signum).name, module.train_steps, resume_points.path)
        raise SystemExit(128 + signum) from None
    finally:
        resume_points.restore_sigint()
        _finish_wandb()

    return {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "split": str(cfg.split),
        "backbone": module.cfg.backbone.name, "decoder": module.cfg.model.name, "seed": int(cfg.seed),
        "best_val_mIoU": best["mIoU"], "final_val_mIoU": final["mIoU"],
        # The references' mean over all K classes (absent ones count 0); *_val_mIoU averages the classes present.
        "best_val_mIoU_all_classes": best["mIoU_all_classes"], "final_val_mIoU_all_classes": final["mIoU_all_classes"],
        "eval_protocol": OmegaConf.to_container(cfg.dataset.eval, resolve=True),
        "per_class_IoU": best["per_class_IoU"],
        "best_checkpoint": best_path, "steps": steps,
        "epochs": int(trainer.current_epoch),
        "devices": trainer.world_size, "global_batch_size": global_batch,
        "precision": str(trainer.precision), "run_dir": str(out_dir),
        "uses_image_tags": module.uses_image_tags,  # semi-and-weakly supervised (PCT): not comparable with SSS rows
    }


@rank_zero_only
def _say_how_to_resume(cfg: DictConfig, signal_name: str, steps: int, checkpoint: Path) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    command = " ".join(["python train.py", *overrides, f"hydra.run.dir={hydra_cfg.runtime.output_dir}"])
    if not cfg.method.get("stages"):  # a staged run finds its stage's last.ckpt by itself
        command += " ckpt_path=last"
    print(f"\nstopped by {signal_name} after step {steps}, checkpoint {checkpoint}; resume with: {command}",
          file=sys.stderr, flush=True)


@rank_zero_only
def _report(run_dir: Path, results: dict) -> None:
    write_results(run_dir / "results.json", results)
    print(format_iou_table(results["per_class_IoU"], results["best_val_mIoU"]))
    print(f"results: {run_dir / 'results.json'}")
    print(f"val mIoU: {results['best_val_mIoU']:.2f}", flush=True)
