"""eval.py: evaluate a checkpoint on a val set, predict a folder of images, or export the network.

* `ckpt_path=...` (with `dataset=...`): validation. The network and method come from the checkpoint, the
  data and the evaluation protocol from the command line. When the checkpoint records which network its
  run reported (DAW's student or EMA teacher, ...), only that one is evaluated: choosing again on the data
  being reported would let the val set pick the network.
* `input_dir=<folder>`: a palette PNG mask and an overlay per image (sslseg.Segmenter, the checkpoint's
  classes and protocol; `dataset.eval.<key>=` overrides apply). No val set is read.
* `export=onnx|torchscript`: the reported network as a file (sslseg/predict/export.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sslseg.data.io import read_image
from sslseg.errors import UserError
from sslseg.methods.base import SemiSegModule
from sslseg.predict.palette import overlay, palette_for, palette_png
from sslseg.predict.segmenter import NETWORK_NAMES, Segmenter
from sslseg.predict.segmenter import load_module as load_checkpoint_module
from sslseg.report.results import format_iou_table, write_results
from sslseg.run.checkpoint import read_checkpoint
from sslseg.run.experiment import claim_run_dir, release_run_dir
from sslseg.run.fitting import build_datamodule, quiet_duplicate_logs, trainer_kwargs, uses_gpu
from sslseg.run.loggers import LossProgressBar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_module(ckpt_path: str | Path, cfg: DictConfig) -> tuple[SemiSegModule, bool]:
    """The checkpoint's module for validation on this command's dataset; whether its network was recorded."""
    path = Path(ckpt_path)
    _, train_cfg = read_checkpoint(path)
    if int(train_cfg.dataset.num_classes) != int(cfg.dataset.num_classes):
        raise UserError(f"{path} predicts {train_cfg.dataset.num_classes} classes ({train_cfg.dataset.name}) but "
                        f"dataset={cfg.dataset.name} has {cfg.dataset.num_classes}")
    # The network and method from training; dataset, paths, evaluation mode from this command.
    return load_checkpoint_module(path, replace={key: cfg[key] for key in ("dataset", "paths", "data", "trainer")})


def load_for_validation(cfg: DictConfig) -> tuple[SemiSegModule, bool]:
    """`load_module`, validating only the checkpoint's recorded network when it has one."""
    module, recorded = load_module(cfg.ckpt_path, cfg)
    if recorded:
        module.fixed_network = module.best_network
    return module, recorded


def checkpoint_run_dir(ckpt_path: Path) -> Path:
    """The run (or stage) directory a checkpoint belongs to: <run>/checkpoints/best.ckpt -> <run>."""
    ckpt_path = ckpt_path.resolve()
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def list_images(input_dir: Path) -> list[Path]:
    """The images directly in `input_dir` (by suffix; other files are skipped), sorted by name."""
    if not input_dir.is_dir():
        raise UserError(f"input_dir not found: {input_dir}")
    images = sorted(p for p in input_dir.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"input_dir has no images ({', '.join(IMAGE_SUFFIXES)}): {input_dir}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:  # a.jpg and a.png would write the same a.png mask
            raise UserError(f"input_dir has two images named {path.stem}: {stems[path.stem].name}, {path.name}")
        stems[path.stem] = path
    return images


def predict_folder(segmenter: Segmenter, images: list[Path], out_dir: Path) -> int:
    """For every image (`list_images`): `out_dir/masks/<stem>.png`, a palette PNG of class ids at the image's
    size, and `out_dir/overlays/<stem>.jpg`, the image blended with the mask's colours. Returns the count."""
    palette = palette_for(segmenter.dataset_cfg)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    for path in images:
        image = read_image(path)
        mask = segmenter(image)
        palette_png(mask, palette).save(out_dir / "masks" / f"{path.stem}.png")
        overlay(image, mask, palette).save(out_dir / "overlays" / f"{path.stem}.jpg", quality=90)
    return len(images)


def protocol_overrides(cfg: DictConfig) -> dict:
    """The `dataset.eval.<key>=` values given on this command line (applied over the checkpoint's protocol)."""
    keys = set()
    for override in HydraConfig.get().overrides.task:
        name = override.lstrip("+~").split("=", 1)[0]
        if name.startswith("dataset.eval."):
            keys.add(name.split(".")[2])
    return {key: OmegaConf.to_container(cfg.dataset.eval, resolve=True)[key] for key in keys}


def predict_or_export(cfg: DictConfig) -> dict:
    """`input_dir=` and/or `export=`: the checkpoint's reported network, with the checkpoint's settings."""
    from sslseg.predict.export import SUFFIXES, default_path, export
    from sslseg.run.config_checks import check_writable

    quiet_duplicate_logs()
    ckpt_path = Path(cfg.ckpt_path)
    images = list_images(Path(cfg.input_dir)) if cfg.get("input_dir") else []  # a bad folder fails first
    export_path = out_dir = None
    if cfg.get("export"):  # every output checked before the network is loaded
        if str(cfg.export) not in SUFFIXES:
            raise UserError(f"export must be one of {list(SUFFIXES)}, got {cfg.export!r}")
        export_path = Path(cfg.export_path) if cfg.get("export_path") else default_path(ckpt_path, str(cfg.export))
        if export_path.is_dir():
            raise UserError(f"export_path={export_path} is a folder: name the file to write, e.g. "
                            f"{export_path / default_path(ckpt_path, str(cfg.export)).name}")
        check_writable(export_path.parent, "export_path")
    if cfg.get("input_dir"):
        out_dir = Path(cfg.output_dir) if cfg.get("output_dir") else \
            checkpoint_run_dir(ckpt_path) / "predictions" / Path(cfg.input_dir).resolve().name
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"output_dir={out_dir} is a file, not a folder")
        check_writable(out_dir, "output_dir")
    device = "cuda" if uses_gpu(cfg.trainer) else "cpu"
    segmenter = Segmenter.from_checkpoint(ckpt_path, device=device, protocol=protocol_overrides(cfg))
    network = NETWORK_NAMES.get(segmenter.network_name, segmenter.network_name)
    how = "recorded in the checkpoint" if segmenter.selected else "no record in the checkpoint: the default"
    print(f"checkpoint: {ckpt_path} ({segmenter.module.cfg.method.name}, {segmenter.num_classes} classes); "
          f"network: {network} ({how})")
    results: dict = {}
    if export_path is not None:
        path = export_path
        info = export(segmenter, str(cfg.export), path, cfg.get("export_size"))
        dynamic = ", ".join(info["dynamic_axes"]) or "none"
        fixed = f"; fixed: {', '.join(info['fixed_axes'])} at example size {info['example_size']}" \
            if info["fixed_axes"] else ""
        print(f"exported {cfg.export}: {path} (logits at the input size; dynamic axes: {dynamic}{fixed}); "
              f"classes and normalisation: {path}.json", flush=True)
        results["export"] = info
    if out_dir is not None:
        input_dir = Path(cfg.input_dir)
        count = predict_folder(segmenter, images, out_dir)
        print(f"predicted {count} images of {input_dir}: masks in {out_dir / 'masks'}, overlays in "
              f"{out_dir / 'overlays'}", flush=True)
        results |= {"predicted_images": count, "predictions": str(out_dir)}
    return results


def evaluate(cfg: DictConfig) -> dict:
    if cfg.get("export") or cfg.get("input_dir"):
        return predict_or_export(cfg)
    start = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    claim_run_dir(run_dir)
    try:
        return _evaluate(cfg, run_dir, start)
    finally:
        release_run_dir(run_dir)


def _evaluate(cfg: DictConfig, run_dir: Path, start: float) -> dict:
    quiet_duplicate_logs()
    module, recorded = load_for_validation(cfg)
    datamodule = build_datamodule(cfg, streams=(), split=None)
    datamodule.prepare_data()
    datamodule.setup("validate")
    kwargs = trainer_kwargs(cfg) | {"devices": 1, "strategy": "auto", "num_nodes": 1}  # exact: no DDP padding
    # The training runs' bar (tqdm), not Lightning's default (Rich, when installed): one style for both commands.
    bar = [LossProgressBar(refresh_rate=10)] if kwargs.get("enable_progress_bar", True) else []
    trainer = pl.Trainer(**kwargs, logger=False, callbacks=bar, default_root_dir=str(run_dir))
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val = module.last_val
    results = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()), "method": module.cfg.method.name,
        "dataset": cfg.dataset.name, "backbone": module.cfg.backbone.name, "eval_mode": cfg.dataset.eval.mode,
        "val_mIoU": val["mIoU"], "per_class_IoU": val["per_class_IoU"],
        # The references' mean over all K classes (absent ones count 0); val_mIoU averages the classes present.
        "val_mIoU_all_classes": val["mIoU_all_classes"],
        # The network evaluated: the one the checkpoint records, else the best of the evaluated ones here.
        "network": val["network"], "network_from_checkpoint": recorded,
        "eval_protocol": OmegaConf.to_container(cfg.dataset.eval, resolve=True),
        "val_images": len(datamodule.val_set), "wall_seconds": round(time.time() - start, 1),
    }
    write_results(run_dir / "results.json", results)
    print(format_iou_table(val["per_class_IoU"], val["mIoU"]))
    several = len(module.evaluated_networks()) > 1
    how = "recorded in the checkpoint" if recorded else ("the better here" if several else "the method's only one")
    print(f"network: {NETWORK_NAMES.get(val['network'], val['network'])} ({how})")
    print(f"results: {run_dir / 'results.json'}")
    print(f"val mIoU: {val['mIoU']:.2f}", flush=True)
    return results
