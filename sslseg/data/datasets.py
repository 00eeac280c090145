"""Labeled, unlabeled and evaluation datasets over split lists.

Each returns uint8 image tensors (3, H, W); masks are int64 with 255 = ignore. Random state
(albumentations and the CutMix boxes) is reseeded per DataLoader worker by `seed_worker`, so
workers never repeat each other's augmentations and runs are reproducible for a fixed seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sslseg.data.io import read_image, read_mask
from sslseg.data.splits import Sample
from sslseg.data.transforms import IGNORE_INDEX, cutmix_box, geometric_transform, seed_transforms, strong_transform


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _Augmented(Dataset):
    def __init__(self, root: str | Path, samples: list[Sample], seed: int = 0):
        self.root = Path(root)
        self.samples = samples
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        for pipeline in self._pipelines():
            seed_transforms(pipeline, self.rng)

    def _pipelines(self):
        return []


class LabeledDataset(_Augmented):
    """Labeled crops. `length` repeats the list (UniMatch: to the unlabeled length, so that one
    epoch is one pass over the unlabeled data)."""

    def __init__(self, root, samples, num_classes: int, crop_size: int, scale_range=(0.5, 2.0),
                 length: int | None = None, seed: int = 0):
        self.num_classes = num_classes
        self.geometric = geometric_transform(crop_size, tuple(scale_range), mask_fill=IGNORE_INDEX)
        super().__init__(root, samples, seed)
        self.length = length or len(samples)
        repeats = math.ceil(self.length / len(samples))
        self.index = (list(range(len(samples))) * repeats)[: self.length]

    def _pipelines(self):
        return [self.geometric]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[self.index[i]]
        image = read_image(self.root / sample.image)
        mask = read_mask(self.root / sample.mask, self.num_classes)
        out = self.geometric(image=image, mask=mask)
        return {"image": _to_chw(out["image"]), "mask": torch.from_numpy(out["mask"]).long()}


class UnlabeledDataset(_Augmented):
    """Unlabeled crops: a weak view, two strong views of the same geometric crop, the padding
    mask (255 = padded) and one CutMix box per strong view. Never opens a ground-truth mask.
    `strong_aug`: keyword arguments of `strong_transform` (default: UniMatch's strong view)."""

    def __init__(self, root, samples, crop_size: int, scale_range=(0.5, 2.0), seed: int = 0,
                 strong_aug: dict | None = None):
        self.crop_size = crop_size
        self.geometric = geometric_transform(crop_size, tuple(scale_range), mask_fill=IGNORE_INDEX)
        self.strong = strong_transform(**(strong_aug or {}))
        super().__init__(root, samples, seed)

    def _pipelines(self):
        return [self.geometric, self.strong]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image = read_image(self.root / self.samples[i].image)
        valid = np.zeros(image.shape[:2], dtype=np.uint8)  # becomes 255 where the crop is padding
        weak = self.geometric(image=image, mask=valid)
        strong1 = self.strong(image=weak["image"])["image"]
        strong2 = self.strong(image=weak["image"])["image"]
        return {
            "weak": _to_chw(weak["image"]),
            "strong1": _to_chw(strong1),
            "strong2": _to_chw(strong2),
            "ignore": torch.from_numpy(weak["mask"]).long(),
            "box1": torch.from_numpy(cutmix_box(self.crop_size, self.rng)),
            "box2": torch.from_numpy(cutmix_box(self.crop_size, self.rng)),
        }


class EvalDataset(Dataset):
    """Whole images and masks, no augmentation."""

    def __init__(self, root, samples, num_classes: int):
        self.root = Path(root)
        self.samples = samples
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        image = read_image(self.root / sample.image)
        mask = read_mask(self.root / sample.mask, self.num_classes)
        return {"image": _to_chw(image), "mask": torch.from_numpy(mask).long(), "index": i}


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a distinct, reproducible augmentation stream per worker."""
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32  # torch derives it from the loader's base seed + worker id
    np.random.seed(seed)
    if isinstance(info.dataset, _Augmented):
        info.dataset.reseed(seed)
