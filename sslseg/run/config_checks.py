"""Checks of the options users type most, and of the output folder, before a run starts.

Hydra composes `data.batch_size=abc` without complaint (the value is only a string to it), and the mistake
surfaced later as a TypeError deep in the DataLoader or the lr schedule; an output folder Hydra cannot create
ended in Hydra's traceback. `RunChecks` runs both checks as a Hydra callback, before Hydra creates the run
directory, so a bad option leaves nothing behind; `check_config` runs again in each job of a sweep (whose
overrides Hydra applies per job). Light imports only: this runs before torch is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from sslseg.errors import UserError, one_line


def _int_at_least(low: int):
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


_positive_int = _int_at_least(1)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _devices(value: Any) -> bool:
    if value == "auto" or value == -1 or _positive_int(value):
        return True
    if isinstance(value, str):  # Lightning's "0,1" / "2" forms
        return all(part.strip().isdigit() for part in value.split(",") if part.strip()) and value.strip() != ""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_int_at_least(0)(v) for v in value)


def _number_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def valid(value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    return valid


_non_negative = _number_in(0, float("inf"))
_optional = lambda test: lambda value: value is None or test(value)  # noqa: E731
# A confidence threshold that no probability can reach (≥ 1) would select no pixel, ever: refused.
_threshold = _optional(_number_in(0, 1, high_open=True))


def _split(value: Any) -> bool:
    if value is None:  # dataset=custom found no single split to pick: check_split says which exist
        return True
    return (isinstance(value, str) and value.strip() != "" and "/" not in value) or _int_at_least(0)(value)


# (option, test, what it expects). A missing option (another config, e.g. eval's) is skipped.
TYPED_OPTIONS = (
    ("data.batch_size", _positive_int, "a positive integer"),
    ("data.global_batch_size", lambda v: v is None or _positive_int(v), "a positive integer or null"),
    ("data.val_batch_size", _positive_int, "a positive integer"),
    ("data.num_workers", _int_at_least(0), "an integer ≥ 0"),
    ("trainer.max_steps", lambda v: v == -1 or _positive_int(v), "an integer ≥ 1, or -1 for no limit"),
    ("trainer.max_epochs", lambda v: v is None or _int_at_least(-1)(v), "an integer ≥ 1, or -1 for no limit"),
    ("trainer.devices", _devices, "a positive integer, -1, auto, or a list of device ids"),
    ("trainer.num_nodes", _positive_int, "a positive integer"),
    ("optim.lr", _positive_number, "a positive number"),
    ("validation.every_n_epochs", _int_at_least(0), "an integer ≥ 0 (0: the final weights only)"),
    ("validation.after_epoch", _int_at_least(0), "an integer ≥ 0"),
    ("seed", _int_at_least(0), "an integer ≥ 0"),
    ("split", _split, "a split folder name (92, 1_16, ...)"),
    ("callbacks.checkpoint.every_n_steps", _int_at_least(0), "an integer ≥ 0 (0: at epoch ends only)"),
    ("dataset.crop_size", _positive_int, "a positive integer (pixels)"),
    ("dataset.eval.multiplier", lambda v: v in (None, "auto") or _positive_int(v),
     "auto (a ViT's patch size), null or a positive integer"),
    # The methods' numeric options (a key a method does not have is skipped; `*`: every entry of that mapping).
    ("method.conf_thresh", _threshold, "a confidence in [0, 1), or null: at 1 or above no pixel passes"),
    ("method.loss_weights.*", _non_negative, "a number ≥ 0"),
    ("method.poly_lag", _int_at_least(0), "an integer ≥ 0"),
    ("method.feature_dropout", _number_in(0, 1), "a dropout rate in [0, 1]"),  # UniMatch, DAW, DSSN
    ("method.teacher.decay", _number_in(0, 1), "a number in [0, 1]"),
    ("method.teacher.copy_epochs", _int_at_least(0), "an integer ≥ 0"),
    ("method.stats_momentum", _number_in(0, 1, high_open=True), "a number in [0, 1)"),  # DAW
    ("method.alpha", _number_in(0, float("inf"), low_open=True), "a positive number"),
    ("method.min_samples", _positive_int, "a positive integer"),
    ("method.init_tau", _number_in(0, 1, low_open=True, high_open=True), "a confidence in (0, 1)"),
    ("method.sigma_pos_scale", _number_in(0, float("inf"), low_open=True), "a positive number"),
    ("method.class_aware.ratio", _number_in(0, 1, low_open=True), "a number in (0, 1]"),  # DSSN
    ("method.class_aware.min_confidence", _threshold, "a confidence in [0, 1): at 1 or above no class passes"),
    ("method.kept_pairs", _number_in(0, 1), "a share in [0, 1]"),  # UniMatch V2
    ("method.cutmix_p", _number_in(0, 1), "a probability in [0, 1]"),  # DDFP
    ("method.eps", _non_negative, "a number ≥ 0"),
    ("method.sup_only_epochs", _int_at_least(0), "an integer ≥ 0"),
    ("method.flow.samples", _positive_int, "a positive integer"),
    ("method.flow.noise", _non_negative, "a number ≥ 0"),
    ("method.flow.grad_clip", _number_in(0, float("inf"), low_open=True), "a positive number"),
    ("method.flow.final_lr_ratio", _number_in(0, 1, low_open=True), "a number in (0, 1]"),
    ("method.pseudo_weight", _non_negative, "a number ≥ 0"),  # DARS
    ("method.weight_power", _non_negative, "a number ≥ 0"),  # PCT
    ("method.iou_decay", _number_in(0, 1, high_open=True), "a number in [0, 1)"),
    ("method.stages.*.labeling_ratio", _optional(_number_in(0, 1, low_open=True)),
     "a share of the unlabeled pixels in (0, 1]"),
    ("method.stages.*.epochs", _optional(_positive_int), "a positive integer"),
    ("method.stages.*.steps", _optional(_positive_int), "a positive integer"),
)


def _expand(cfg: DictConfig, key: str) -> list[str]:
    """`a.*.b` -> `a.<k>.b` for every key k of the mapping `a` (none when `a` is absent or not a mapping)."""
    if "*" not in key:
        return [key]
    head, _, tail = key.partition(".*")
    node = OmegaConf.select(cfg, head, default=None)
    if not isinstance(node, DictConfig):
        return []
    return [k for name in node for k in _expand(cfg, f"{head}.{name}{tail}")]


def check_config(cfg: DictConfig) -> None:
    """One UserError naming the first option whose value has the wrong type or range."""
    check_overrides(cfg)
    for key, valid, expected in [(k, v, e) for pattern, v, e in TYPED_OPTIONS for k in _expand(cfg, pattern)]:
        try:
            value = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=True)
        except MissingMandatoryValue:
            raise UserError(f"{key} has no value: set {key}=<{expected}>") from None
        except InterpolationResolutionError as exc:
            raise UserError(f"{key}: {str(exc).splitlines()[0]}") from None
        if isinstance(value, str) and value == "<absent>":
            continue
        if not valid(value):
            raise UserError(f"{key}={value}: expected {expected}")
    check_crop_fits_backbone(cfg)
    check_split(cfg)


def check_crop_fits_backbone(cfg: DictConfig) -> None:
    """A ViT reads sides that are multiples of its patch size. A dataset's default crop is rounded to one
    (conf/dataset/*.yaml); a crop set to anything else (a recipe's, the command line's) is one line naming the
    nearest multiples. eval.py (no `method`) rebuilds the network from the checkpoint: not checked there."""
    if "method" not in cfg:
        return
    from sslseg.models.backbones import nearest_multiple, patch_size_of

    name = OmegaConf.select(cfg, "backbone.name", default=None)
    patch, crop = patch_size_of(name), OmegaConf.select(cfg, "dataset.crop_size", default=None)
    if patch and isinstance(crop, int) and crop % patch:
        nearest = nearest_multiple(crop, patch)
        other = nearest - patch if nearest > crop else nearest + patch
        raise UserError(f"dataset.crop_size={crop}: backbone {name} reads sides that are multiples of its patch size "
                        f"{patch}: set dataset.crop_size={nearest} (or {other})")


def check_overrides(cfg: DictConfig) -> None:
    """`method.stages={}` reads as "no stages" but Hydra merges a mapping into the existing one, so every stage
    would still run: refused, naming what does remove them."""
    for override in OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []:
        key, _, value = str(override).partition("=")
        if key.lstrip("+").startswith("method.stages") and value.replace(" ", "") == "{}":
            raise UserError(f"{override} merges into the stages instead of removing them (Hydra merges mappings): "
                            f"~{key.lstrip('+')} removes them")


def check_split(cfg: DictConfig) -> None:
    """Training needs a split; dataset=custom leaves it None when its splits folder has none or several
    (sslseg/data/custom.py): say which exist. eval.py (no `method`) reads the val list only."""
    if "method" in cfg and OmegaConf.select(cfg, "split") is None:
        from sslseg.data.splits import no_split_chosen, require_splits_dir

        raise no_split_chosen(require_splits_dir(cfg.dataset.splits_dir))


def check_writable(folder: Path, option: str) -> None:
    """The folder exists and is writable, or can be created: one UserError naming it and the option."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create {folder} ({option}): {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {existing} ({option}): permission denied")


class RunChecks(Callback):
    """Hydra callback (conf/train.yaml, conf/eval.yaml: hydra.callbacks) running the checks above before
    Hydra creates the run or sweep directory, and with `resume`, the checkpoint a training run resumes
    (sslseg.run.checkpoint.resume_checkpoint): a wrong file then leaves the run directory it names untouched
    (Hydra would rewrite its .hydra/ configs). A UserError is printed as one line and exits with 2."""

    def __init__(self, resume: bool = False):
        self.resume = resume

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")

    def _check(self, config: DictConfig, dir_key: str) -> None:
        global FRESH_RUN_DIR
        try:
            check_config(config)
            choices = OmegaConf.select(config, "hydra.runtime.choices")
            if choices is not None:
                from sslseg.run.recipes import check_variant

                check_variant(OmegaConf.to_container(choices))
            output = Path(str(OmegaConf.select(config, dir_key)))
            if dir_key == "hydra.run.dir" and "method" in config and (output / "results.json").is_file() \
                    and OmegaConf.select(config, "ckpt_path") is None:  # a finished run is never overwritten
                raise UserError(f"{output} holds a finished run ({output / 'results.json'}): give the new run "
                                f"another folder ({_output_option(config, dir_key)})")
            FRESH_RUN_DIR = None if dir_key != "hydra.run.dir" or output.exists() else output.absolute()
            check_writable(output, _output_option(config, dir_key))
            if self.resume and dir_key == "hydra.run.dir" and OmegaConf.select(config, "ckpt_path") is not None:
                from sslseg.run.checkpoint import resume_checkpoint  # torch: only when resuming

                resume_checkpoint(config, output.absolute())
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None  # Hydra reports an Exception with its traceback; SystemExit passes


# The run directory Hydra is about to create for this run (None when it existed already: a resumed run's, or a
# hydra.run.dir the user named). A run refused on bad input removes it again (remove_refused_run_dir).
FRESH_RUN_DIR: Path | None = None
# What a run writes before it reads its data: Hydra's configs, the console log (eval.py: Hydra's log), the lock.
_STARTUP_FILES = {".hydra", "train.log", "eval.log", ".lock"}


def remove_refused_run_dir(run_dir: Path, output_dir: Path | None = None) -> bool:
    """After a run stopped on bad input (exit code 2): delete its run directory if this run created it and it holds
    only what every run writes at its start, then the parents left empty up to `output_dir`. A directory that
    existed before, or holds anything else (checkpoints, logs of a fit), is kept. True when removed."""
    import shutil

    run_dir = Path(run_dir).absolute()
    if FRESH_RUN_DIR is None or run_dir != FRESH_RUN_DIR or not run_dir.is_dir():
        return False
    if not {p.name for p in run_dir.iterdir()} <= _STARTUP_FILES:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    stop = Path(output_dir).absolute() if output_dir is not None else None
    parent = run_dir.parent
    while stop is not None and parent != stop and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


@contextmanager
def refused_run_leaves_no_folder(run_dir: Path, cfg: DictConfig) -> Iterator[None]:
    """train.py's and eval.py's run: one refused on bad input (exit code 2) removes the run folder it created
    (`remove_refused_run_dir`)."""
    try:
        yield
    except SystemExit as exc:
        if exc.code == 2:
            remove_refused_run_dir(run_dir, Path(str(cfg.paths.output_dir)))
        raise


def _output_option(config: DictConfig, dir_key: str) -> str:
    """The option a user sets to move the output: hydra's own key only when they set it."""
    overrides = [*(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []),
                 *(OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or [])]  # hydra.run.dir= is here
    return dir_key if any(str(o).startswith(f"{dir_key}=") for o in overrides) else "paths.output_dir"
