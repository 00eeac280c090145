"""Building a run from the composed config, and the training entry point behind train.py."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sslseg.errors import UserError
from sslseg.methods import method_class
from sslseg.report.results import CHOICES_KEY, format_iou_table, provenance, recipe_choices, write_results
from sslseg.run.checkpoint import resume_checkpoint
from sslseg.run.cli import is_launcher_rank
from sslseg.run.console import network_label
from sslseg.run.fitting import fit, quiet_duplicate_logs
from sslseg.run.recipes import results_entry as recipe_entry
from sslseg.run.recipes import start_line

_RUN_DIR_LOCKS: list = []  # open lock files, held until the run ends (release_run_dir) or the process exits


def claim_run_dir(run_dir: Path) -> None:
    """Hold an exclusive lock on the run directory while the run lasts, so that two runs resolved to the
    same directory (same method/dataset/split/seed started in the same second) cannot overwrite each
    other's checkpoints and logs. release_run_dir drops it and deletes `.lock` when the run ends; a killed
    run leaves the file, whose lock the OS has dropped with the process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"run directory {run_dir} is in use by another run; wait a second or set "
                        "hydra.run.dir=<another folder>") from None
    _RUN_DIR_LOCKS.append(handle)


def release_run_dir(run_dir: Path) -> None:
    """The end of claim_run_dir: unlock and delete `<run dir>/.lock` (no lock file stays after a run)."""
    lock = Path(run_dir) / ".lock"
    for handle in [h for h in _RUN_DIR_LOCKS if Path(h.name) == lock]:
        _RUN_DIR_LOCKS.remove(handle)
        lock.unlink(missing_ok=True)  # while still held: no other run can have taken it meanwhile
        handle.close()


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






def train(cfg: DictConfig) -> dict | None:
    """Fit (or run the method's stages), evaluate the best checkpoint, write results.json; returns the
    results (rank 0 writes them)."""
    started = time.monotonic()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_launch(cfg)
    ckpt_path = resume_checkpoint(cfg, run_dir)
    if is_launcher_rank():  # DDP children share their launcher's directory
        claim_run_dir(run_dir)
    try:
        quiet_duplicate_logs()
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        torch.set_float32_matmul_precision(cfg.perf.matmul_precision)

        cls = method_class(cfg)
        _say_recipe(cfg)
        if cfg.method.get("stages"):
            from sslseg.run.stages import run_stages

            results = run_stages(cfg, run_dir)  # its wall time sums the stages'
        else:
            results = fit(cfg, cls, run_dir, ckpt_path=ckpt_path, started=started)
        results |= {"recipe": recipe_entry(cfg)} | provenance(list(HydraConfig.get().overrides.task))
        choices = HydraConfig.get().runtime.choices
        # the network and optimizer a recipe chose (no override names them): the report compares runs by them
        results[CHOICES_KEY] = recipe_choices(choices)
        debug = choices.get("debug")
        if debug:  # a debug config's cut-short run: `python -m sslseg.report.results` leaves it out
            results["debug"] = debug
        _report(run_dir, results)
    finally:
        release_run_dir(run_dir)
    return results














@rank_zero_only
def _say_recipe(cfg: DictConfig) -> None:
    """The run's first line: its recipe and source with the key values, or that the pair has none."""
    print(start_line(cfg), flush=True)


@rank_zero_only
def _report(run_dir: Path, results: dict) -> None:
    write_results(run_dir / "results.json", results)
    print(format_iou_table(results["per_class_IoU"], results["best_val_mIoU"]))
    if results.get("network"):
        print(network_sentence(results.get("network"), results.get("network_scores")))
    print(f"results: {run_dir / 'results.json'}")
    key = "final_val_mIoU" if results.get("reported") == "final" else "best_val_mIoU"
    print(f"val mIoU: {results[key]:.2f}", flush=True)


def network_sentence(network: str, scores: dict | None) -> str:
    """`network: teacher (EMA) (student 74.10, teacher (EMA) 75.36)`: which network the number is, and the others'."""
    others = ", ".join(f"{network_label(n)} {m:.2f}" for n, m in (scores or {}).items())
    return f"network: {network_label(network)}" + (f" ({others})" if len(scores or {}) > 1 else "")
