"""From a config to its method's class: `method._target_` names a SemiSegModule subclass (conf/method/*.yaml)."""

from __future__ import annotations

import importlib
import importlib.util

from omegaconf import DictConfig

from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule


def method_class(cfg: DictConfig) -> type[SemiSegModule]:
    """The method's LightningModule. A `_target_` naming no module or class is the user's typo (one line);
    an import error inside an existing module is a bug in it and keeps its traceback."""
    target = str(cfg.method._target_)
    module_name, _, class_name = target.rpartition(".")
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise UserError(f"method._target_={target}: no module {module_name}")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SemiSegModule)):
        raise UserError(f"method._target_={target}: {module_name} has no SemiSegModule named {class_name}")
    return cls
