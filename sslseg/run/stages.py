"""Offline methods as stages (`method.stages`, in order): one `python train.py` runs them all, each in
`<run dir>/<stage>/`.

  kind: train      a fit of `epochs` epochs, or of `steps` iterations (`overrides`: other config keys
                   for this stage). `streams`:
                   the data streams it reads (default: the labeled stream, and the latest pseudo-labels
                   once there are some). It continues the previous train stage's final weights,
                   optimizer momentum and poly schedule (the schedule runs over the cumulative epochs, as
                   DARS's resumed rounds), unless `fresh: true` (PCT's stage 2: a new network).
  kind: generate   pseudo-labels for the unlabeled list from the previous train stage's final weights
                   (sslseg/pseudo_labels/generation.py). `thresholds`: dars (with `labeling_ratio`) | cbst | all (every
                   pixel keeps its label); `tags: true` hands the images' class tags to the method's
                   predict step; `with_labeled: true` also lists the labeled images, with their ground
                   truth (PCT's stage 2 trains on both).

A finished stage is skipped (its results.json, or its pseudo-label list, exists), an interrupted train
stage resumes from its last checkpoint, an interrupted generation starts over: rerunning the same
command with the same run directory (`hydra.run.dir=<run dir>`) continues where the run stopped. The
run's results.json reports the last train stage and lists every stage's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from sslseg.data.datamodule import ShardedEvalSampler
from sslseg.data.io import read_mask
from sslseg.data.splits import check_files_exist, read_split_file, split_files
from sslseg.errors import UserError
from sslseg.methods import method_class
from sslseg.pseudo_labels.generation import (
    LIST_NAME,
    ImageDataset,
    PseudoLabelWriter,
    copy_ground_truth,
    select_and_write,
    write_list,
)
from sslseg.pseudo_labels.thresholds import cbst_thresholds, class_targets, dars_thresholds, labeled_prior
from sslseg.report.results import write_results
from sslseg.run.checkpoint import read_checkpoint
from sslseg.run.recipes import stage_config

KINDS = ("train", "generate")


RULES = ("dars", "cbst", "all")


def check_stages(stages: DictConfig) -> None:
    """Every stage's options, before anything runs (a typo should not surface after hours of training)."""
    steps_before = False
    for name, stage in stages.items():
        where = f"method.stages.{name}"
        if stage.get("kind") not in KINDS:
            raise UserError(f"{where}.kind must be one of {list(KINDS)}, got {stage.get('kind')!r}")
        if stage.kind == "train":
            if not stage.get("epochs") and not stage.get("steps"):
                raise UserError(f"{where} needs epochs or steps")
            if steps_before and not stage.get("fresh"):
                # the continued poly schedule counts epochs; a step budget has none to hand on
                raise UserError(f"{where} continues a stage budgeted in steps: give it fresh: true or use epochs")
            steps_before = bool(stage.get("steps"))
        else:
            rule = stage.get("thresholds", "dars")
            if rule not in RULES:
                raise UserError(f"{where}.thresholds must be one of {list(RULES)}, got {rule!r}")
            if rule != "all" and stage.get("labeling_ratio") is None:
                raise UserError(f"{where} needs a labeling_ratio with thresholds={rule}")
    if not any(stage.kind == "train" for stage in stages.values()):
        raise UserError("method.stages has no train stage")


def run_stages(cfg: DictConfig, run_dir: Path) -> dict:
    from sslseg.run.fitting import fit

    check_stages(cfg.method.stages)

    last_train: Path | None = None  # folder of the latest train stage
    pseudo_list: Path | None = None
    epochs_before = 0
    summary: dict[str, dict] = {}
    results: dict | None = None
    for name, stage in cfg.method.stages.items():
        kind = stage.kind
        stage_dir = run_dir / name
        if kind == "train":
            done = stage_dir / "results.json"
            if done.is_file():
                _say(f"stage {name}: done, skipped")
                results = json.loads(done.read_text())
            else:
                fresh = bool(stage.get("fresh", False))
                stage_cfg = stage_config(cfg, stage, 0 if fresh else epochs_before)
                streams = tuple(stage.get("streams") or (("labeled", "pseudo") if pseudo_list else ("labeled",)))
                last = stage_dir / "checkpoints" / "last.ckpt"
                resume = last.is_file()
                _say(f"stage {name}: {'resuming' if resume else 'training'} ({', '.join(streams)})")
                handover = None if resume or fresh or last_train is None else last_train / "checkpoints" / "last.ckpt"
                results = fit(stage_cfg, method_class(stage_cfg), stage_dir, ckpt_path=str(last) if resume else None,
                              streams=streams, pseudo_list=pseudo_list, handover=handover) | {"stage": name}
                _write(done, results)
            summary[name] = {"best_val_mIoU": results["best_val_mIoU"], "final_val_mIoU": results["final_val_mIoU"],
                             "steps": results["steps"], "wall_seconds": results.get("wall_seconds", 0.0)}
            epochs_before = int(stage.get("epochs") or 0) + (0 if stage.get("fresh") else epochs_before)
            last_train = stage_dir
        else:
            if last_train is None:
                raise UserError(f"method.stages.{name}: a generate stage needs a train stage before it")
            pseudo_list = stage_dir / LIST_NAME
            damaged = damaged_pseudo_labels(pseudo_list, Path(cfg.paths.data_root), int(cfg.dataset.num_classes))
            if damaged:  # deleted or damaged after the stage ended: the same weights label them again
                _say(f"stage {name}: {len(damaged)} damaged pseudo-label file(s), first {damaged[0]}; "
                     "generating the stage again")
            if pseudo_list.is_file() and not damaged:
                _say(f"stage {name}: done, skipped")
            else:
                _say(f"stage {name}: generating pseudo-labels")
                generate(cfg, stage_dir, last_train / "checkpoints" / "last.ckpt", stage)
            stats = json.loads((stage_dir / "stats.json").read_text())
            summary[name] = stats["summary"] | {"wall_seconds": stats.get("wall_seconds", 0.0)}
    wall_seconds = round(sum(stage.get("wall_seconds", 0.0) for stage in summary.values()), 1)
    return results | {"run_dir": str(run_dir), "stages": summary, "wall_seconds": wall_seconds}


def damaged_pseudo_labels(pseudo_list: Path, root: Path, num_classes: int) -> list[str]:
    """The problems of a finished generate stage's files, checked as labels are before a stage trains on them:
    each listed pseudo-label present and fully decodable, its image's size, values within the classes or 255."""
    if not pseudo_list.is_file():
        return []
    try:
        samples = read_split_file(pseudo_list, need_masks=True)
    except UserError as exc:  # the list itself (written last, atomically) is damaged
        return [str(exc)]
    problems = []
    for sample in samples:
        label = pseudo_list.parent / sample.mask
        try:
            mask = read_mask(label, num_classes)  # a missing or truncated file is a UserError naming it
            with Image.open(root / sample.image) as img:
                width, height = img.size
        except UserError as exc:
            problems.append(str(exc))
            continue
        if mask.shape != (height, width):
            problems.append(f"{label}: {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}")
    return problems


def generate(cfg: DictConfig, out_dir: Path, weights: Path, stage: DictConfig) -> None:
    """Pseudo-labels for the unlabeled list of `cfg.split` (sslseg/pseudo_labels/generation.py), written into `out_dir`,
    by the network of `weights` (rebuilt from that checkpoint's own config), with the stage's rule."""
    from sslseg.run.fitting import trainer_kwargs

    started = time.monotonic()
    root = Path(cfg.paths.data_root)
    files = split_files(Path(cfg.dataset.splits_dir), str(cfg.split))
    samples = read_split_file(files.unlabeled, need_masks=False)
    check_files_exist(samples, root, files.unlabeled, with_masks=False)
    labeled = read_split_file(files.labeled, need_masks=True)
    num_classes = int(cfg.dataset.num_classes)
    tags = None
    if stage.get("tags"):
        from sslseg.data.tags import dataset_tags

        tags = dataset_tags(samples, root, cfg.dataset)

    checkpoint, train_cfg = read_checkpoint(weights)
    module = method_class(train_cfg)(train_cfg, load_pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    writer = PseudoLabelWriter(out_dir, num_classes)
    kwargs = trainer_kwargs(cfg) | {"logger": False, "enable_checkpointing": False, "callbacks": [writer]}
    # The list written below names every unlabeled image, so each needs its label: fast_dev_run's one predict
    # batch (debug=fast_dev_run) would leave the next stage reading missing files.
    kwargs.pop("fast_dev_run", None)
    trainer = pl.Trainer(**kwargs, default_root_dir=str(out_dir))
    dataset = ImageDataset(root, samples, tags)
    sampler = ShardedEvalSampler(dataset, trainer.world_size, trainer.global_rank) if trainer.world_size > 1 else None
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=int(cfg.data.num_workers))
    trainer.predict(module, dataloaders=loader, return_predictions=False)

    histogram = writer.summed_histogram(trainer)
    total = int(histogram.sum())
    rule = stage.get("thresholds", "dars")
    targets = None
    if rule == "dars":
        zero_is_ignored = bool(cfg.dataset.get("reduce_zero_label", False))
        prior = labeled_prior((read_mask(root / s.mask, num_classes, zero_is_ignored) for s in labeled), num_classes)
        targets = class_targets(prior, float(stage.labeling_ratio), total)
        thresholds, ratios = dars_thresholds(histogram, targets)
    elif rule == "cbst":
        thresholds, ratios = cbst_thresholds(histogram, float(stage.labeling_ratio))
    else:  # all
        thresholds, ratios = torch.full((num_classes,), float("-inf")), torch.ones(num_classes, dtype=torch.float64)
    kept = torch.from_numpy(select_and_write(out_dir, samples, writer.indices, thresholds, ratios, int(cfg.seed)))
    if trainer.world_size > 1:
        kept = trainer.strategy.reduce(kept.to(trainer.strategy.root_device), reduce_op="sum").cpu()
    if trainer.is_global_zero:
        kept = kept[:num_classes]
        listed = samples
        if stage.get("with_labeled"):
            copy_ground_truth(out_dir, root, labeled)
            listed = labeled + samples
        stats = {
            "labeling_ratio": stage.get("labeling_ratio"), "thresholds_rule": rule, "unlabeled_pixels": total,
            "targets": None if targets is None else targets.tolist(),
            "thresholds": [None if abs(t) == float("inf") else t for t in thresholds.tolist()],
            "sampling_ratios": ratios.tolist(), "kept_pixels": kept.tolist(),
            "summary": {"labeled_share": round(int(kept.sum()) / max(total, 1), 4),
                        "kept_class_share": [round(int(k) / max(int(kept.sum()), 1), 4) for k in kept]},
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        write_list(out_dir, listed)
    trainer.strategy.barrier()


@rank_zero_only
def _say(message: str) -> None:
    print(message, flush=True)


def _write(path: Path, results: dict) -> None:
    if pl.utilities.rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_results(path, results)
