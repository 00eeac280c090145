"""Evaluating a checkpoint (eval.py): the network comes from the checkpoint, the data and the
evaluation protocol from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from sslseg.checkpoint import read_checkpoint
from sslseg.data.io import read_image
from sslseg.data.toy import PALETTE
from sslseg.errors import UserError
from sslseg.experiment import build_datamodule, claim_run_dir, method_class, quiet_duplicate_logs, trainer_kwargs
from sslseg.methods.base import SemiSegModule
from sslseg.results import format_iou_table, write_results

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_module(ckpt_path: str | Path, cfg: DictConfig) -> SemiSegModule:
    path = Path(ckpt_path)
    checkpoint, train_cfg = read_checkpoint(path)
    if int(train_cfg.dataset.num_classes) != int(cfg.dataset.num_classes):
        raise UserError(f"{path} predicts {train_cfg.dataset.num_classes} classes ({train_cfg.dataset.name}) but "
                        f"dataset={cfg.dataset.name} has {cfg.dataset.num_classes}")
    # The network and method from training; dataset, paths, evaluation mode from this command.
    for key in ("dataset", "paths", "data", "trainer"):
        train_cfg[key] = cfg[key]
    module = method_class(train_cfg)(train_cfg, load_pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    return module


def predict_folder(module: SemiSegModule, input_dir: Path, out_dir: Path) -> int:
    """Coloured (palette) PNG predictions for every image in `input_dir`."""
    if not input_dir.is_dir():
        raise UserError(f"input_dir not found: {input_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with torch.inference_mode():
        for path in sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image = torch.from_numpy(read_image(path).transpose(2, 0, 1).copy())[None].to(module.device)
            pred = module.predict_scores(image).argmax(1)[0].cpu().numpy().astype(np.uint8)
            png = Image.fromarray(pred, mode="P")
            png.putpalette(PALETTE)
            png.save(out_dir / f"{path.stem}.png")
            count += 1
    return count


def evaluate(cfg: DictConfig) -> dict:
    start = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    claim_run_dir(run_dir)
    quiet_duplicate_logs()
    module = load_module(cfg.ckpt_path, cfg)
    datamodule = build_datamodule(cfg, streams=(), split=None)
    datamodule.prepare_data()
    datamodule.setup("validate")
    kwargs = trainer_kwargs(cfg) | {"devices": 1, "strategy": "auto", "num_nodes": 1}  # exact: no DDP padding
    trainer = pl.Trainer(**kwargs, logger=False, callbacks=[], default_root_dir=str(run_dir))
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val = module.last_val
    results = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()), "method": module.cfg.method.name,
        "dataset": cfg.dataset.name, "backbone": module.cfg.backbone.name, "eval_mode": cfg.dataset.eval.mode,
        "val_mIoU": val["mIoU"], "per_class_IoU": val["per_class_IoU"],
        # The references' mean over all K classes (absent ones count 0); val_mIoU averages the classes present.
        "val_mIoU_all_classes": val["mIoU_all_classes"],
        "eval_protocol": OmegaConf.to_container(cfg.dataset.eval, resolve=True),
        "val_images": len(datamodule.val_set), "wall_seconds": round(time.time() - start, 1),
    }
    if cfg.get("input_dir"):
        module.to(trainer.strategy.root_device)
        results["predictions"] = str(run_dir / "predictions")
        results["predicted_images"] = predict_folder(module, Path(cfg.input_dir), run_dir / "predictions")
    write_results(run_dir / "results.json", results)
    print(format_iou_table(val["per_class_IoU"], val["mIoU"]))
    print(f"results: {run_dir / 'results.json'}")
    print(f"val mIoU: {val['mIoU']:.2f}", flush=True)
    return results
