"""Offline pseudo-label generation as a Lightning predict loop (DARS, and PCT's stage 1 → 2).

Pass 1 (`trainer.predict` with `PseudoLabelWriter`): every unlabeled image, sharded over DDP ranks
without duplicates, goes through the method's `predict_step`, which returns the pseudo-label and
its fp16 confidence at the image's original size. The writer stores both as PNGs (label: uint8;
confidence: the fp16 bit pattern as uint16, lossless) and adds them to per-class confidence
histograms, summed over ranks at the end: bounded memory, where DARS stores ~200 GB of logits.

Pass 2 (`select_and_write`): with the thresholds and sampling ratios computed from the summed
histograms, each rank turns its own images' raw predictions into the final pseudo-label PNGs (255
where rejected) and deletes the raw files; rank 0 writes the split list the next round reads:
`<image path> <pseudo-label path>`, the second relative to the list's folder.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import Dataset

from sslseg.data.io import read_image
from sslseg.data.splits import Sample, write_split_file
from sslseg.pseudo_labels.thresholds import confidence_histogram, select_pixels

LIST_NAME = "pseudo.txt"


class ImageDataset(Dataset):
    """Whole images of a split list (no masks, no augmentation), with their index and, when given, their
    image-level class tags."""

    def __init__(self, root: str | Path, samples: list[Sample], tags: list[np.ndarray] | None = None):
        self.root, self.samples, self.tags = Path(root), samples, tags

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image = read_image(self.root / self.samples[i].image)
        item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "index": i}
        if self.tags is not None:
            item["tags"] = torch.from_numpy(self.tags[i])
        return item


def label_path(sample: Sample) -> Path:
    """Where an image's pseudo-label goes, relative to the stage folder: labels/<image path>.png, so
    images of different folders never collide."""
    return Path("labels") / Path(sample.image).with_suffix(".png")


def _raw_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    return out_dir / "raw" / f"{index:07d}_label.png", out_dir / "raw" / f"{index:07d}_conf.png"


class PseudoLabelWriter(BasePredictionWriter):
    """Pass 1: raw label and confidence PNGs per image, per-class fp16 confidence histograms."""

    def __init__(self, out_dir: Path, num_classes: int):
        super().__init__(write_interval="batch")
        self.out_dir, self.num_classes = Path(out_dir), num_classes
        self.histogram = torch.zeros(num_classes, 0x3C01, dtype=torch.long)
        self.indices: list[int] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        labels, confs = prediction
        (self.out_dir / "raw").mkdir(parents=True, exist_ok=True)
        for index, label, conf in zip(batch["index"].tolist(), labels, confs):
            label, conf = label.cpu(), conf.cpu()
            self.histogram += confidence_histogram(label, conf, self.num_classes)
            label_file, conf_file = _raw_paths(self.out_dir, index)
            Image.fromarray(label.numpy().astype(np.uint8)).save(label_file)
            Image.fromarray(conf.view(torch.int16).numpy().astype(np.uint16)).save(conf_file)
            self.indices.append(index)

    def summed_histogram(self, trainer: pl.Trainer) -> torch.Tensor:
        """The histogram over all ranks' images."""
        if trainer.world_size == 1:
            return self.histogram
        return trainer.strategy.reduce(self.histogram.to(trainer.strategy.root_device), reduce_op="sum").cpu()


def select_and_write(out_dir: Path, samples: list[Sample], indices: list[int], thresholds: torch.Tensor,
                     ratios: torch.Tensor, seed: int) -> np.ndarray:
    """Pass 2 for this rank's images; returns their per-class counts of kept pixels (index 255 unused).
    Each image's random sampling is seeded by (seed, image index): reproducible, whatever the ranks."""
    thresholds, ratios = thresholds.numpy(), ratios.numpy()
    kept = np.zeros(256, dtype=np.int64)
    for index in indices:
        label_file, conf_file = _raw_paths(out_dir, index)
        label = np.asarray(Image.open(label_file))
        conf = np.asarray(Image.open(conf_file)).astype(np.uint16).view(np.float16)
        pseudo = select_pixels(label, conf, thresholds, ratios, np.random.default_rng((seed, index)))
        target = out_dir / label_path(samples[index])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pseudo).save(target)
        kept += np.bincount(pseudo.ravel(), minlength=256)
        label_file.unlink()
        conf_file.unlink()
    return kept


def copy_ground_truth(out_dir: Path, root: Path, samples: list[Sample]) -> None:
    """The labeled images' masks, saved where their pseudo-labels would go (single-channel PNGs)."""
    for sample in samples:
        target = out_dir / label_path(sample)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(Image.open(root / sample.mask)).astype(np.uint8)).save(target)


def write_list(out_dir: Path, samples: list[Sample]) -> Path:
    """The split list of the generated pseudo-labels (written last: its presence marks the stage done)."""
    path = out_dir / LIST_NAME
    tmp = path.with_suffix(".tmp")
    write_split_file(tmp, [Sample(s.image, str(label_path(s))) for s in samples])
    tmp.replace(path)
    return path
