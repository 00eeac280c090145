"""Experiment loggers: W&B (default) or CSV."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sslseg.errors import UserError


def wandb_logged_in() -> bool:
    """True when an API key is available (env or ~/.netrc from `wandb login`), without network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger | None:
    name = cfg.logger.name
    if name == "none":
        return None
    if name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name != "wandb":
        raise UserError(f"logger={name}: expected wandb, csv or none")
    mode = os.environ.get("WANDB_MODE") or cfg.logger.mode
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    os.environ["WANDB_SILENT"] = "true"  # keep the run's console output to our own lines
    if mode == "offline":
        if rank_zero_only.rank == 0:
            print(f"W&B offline (not logged in): sync later with `wandb sync {run_dir}/wandb/offline-run-*`")
    logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.get("entity"), group=cfg.logger.get("group"),
        name=run_dir.name, save_dir=str(run_dir), mode=mode,
        tags=[cfg.method.name, cfg.dataset.name, str(cfg.split)],
    )
    return logger


def log_config(logger: Logger | None, cfg: DictConfig, extra: dict) -> None:
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | extra)
