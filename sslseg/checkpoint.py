"""Checkpoints a user names on the command line (`ckpt_path=`): read and checked before anything runs,
so a wrong file is one line naming it, never a traceback or a run silently started from scratch."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sslseg.errors import UserError

# What a resumed run must share with the checkpoint's run: (config key, what it decides).
MUST_MATCH = (("method.name", "method"), ("dataset.num_classes", "class count"), ("backbone.name", "backbone"))


def read_checkpoint(path: str | Path) -> tuple[dict, DictConfig]:
    """The checkpoint's contents and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        train_cfg = OmegaConf.create(checkpoint["hyper_parameters"]["cfg"])
    except Exception as exc:  # empty, truncated, random bytes, another program's file
        raise UserError(f"cannot read checkpoint {path}: not an sslseg Lightning checkpoint "
                        f"({exc.__class__.__name__})") from exc
    return checkpoint, train_cfg


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
