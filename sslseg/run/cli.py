"""Command-line helpers shared by train.py and eval.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from sslseg.data.custom import register_resolvers
from sslseg.run.recipes import register_resolvers as register_recipe_resolvers

register_resolvers()  # the configs' ${sslseg.*} resolvers (dataset=custom), in every entry point and DDP process
register_recipe_resolvers()  # conf/train.yaml's defaults list: the (method, dataset) recipe and its groups

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

_SPLIT_ARG = re.compile(r"^(\+{0,2}split)=(.+)$")


def quote_split_overrides(args: list[str]) -> list[str]:
    """`split=1_16` -> `split='1_16'`. Hydra's grammar reads 1_16 as the integer 116 (Python's
    digit separators), which would silently select another split; quoting keeps the folder name.
    Comma-separated sweeps (`split=92,1_16`) are quoted element-wise."""
    out = []
    for arg in args:
        match = _SPLIT_ARG.match(arg)
        if match and not any(c in match.group(2) for c in "'\"()[]{}$"):
            key, values = match.groups()
            arg = f"{key}=" + ",".join(f"'{v}'" for v in values.split(","))
        out.append(arg)
    return out


def compose_config(overrides: list[str], config_name: str = "train"):
    """The project's config composed outside `@hydra.main` (benchmark, tests), split quoting included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=quote_split_overrides(overrides))


def is_launcher_rank() -> bool:
    """True in the process the user started (DDP children are relaunched with LOCAL_RANK set), or in SLURM's
    task 0 when srun started one process per device (launcher=slurm: SLURM_PROCID is the global rank)."""
    return all(int(os.environ.get(name, 0)) == 0 for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
