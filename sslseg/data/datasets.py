"""Labeled, unlabeled and evaluation datasets over split lists.

Each returns uint8 image tensors (3, H, W); masks are int64 with 255 = ignore. The training datasets
are indexed by (epoch, index) keys (`EpochSampler`): item i of epoch e draws all its randomness
(albumentations, CutMix boxes) from a generator seeded by (dataset seed, e, i). A batch therefore
does not depend on which worker loads it, on the number of workers or on what was loaded before:
runs are reproducible for a fixed seed, and a run resumed at any step sees the same data. A plain
integer index means epoch 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sslseg.data.io import read_image, read_pair
from sslseg.data.splits import Sample
from sslseg.data.transforms import (
    IGNORE_INDEX,
    MEAN_COLOUR,
    cutmix_box,
    geometric_transform,
    seed_transforms,
    strong_transform,
)


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


Key = int | tuple[int, int]


class _Augmented(Dataset):
    def __init__(self, root: str | Path, samples: list[Sample], seed: int | tuple[int, ...] = 0):
        self.root = Path(root)
        self.samples = samples
        self.seed = tuple(seed) if isinstance(seed, tuple | list) else (int(seed),)

    def _start(self, key: Key) -> tuple[int, np.random.Generator]:
        """(index, the item's generator), with every augmentation pipeline seeded from it."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng((*self.seed, int(epoch), int(index)))
        for pipeline in self._pipelines():
            seed_transforms(pipeline, rng)
        return int(index), rng

    def _pipelines(self):
        return []


class LabeledDataset(_Augmented):
    """Labeled crops. `length` repeats the list (UniMatch: to the unlabeled length, so that one
    epoch is one pass over the unlabeled data). `mask_root`: where the masks' paths start, when not
    the images' root (pseudo-labels written into a run directory). `geometric_aug`: extra keyword
    arguments of `geometric_transform` (rotation, blur, padding). `zero_is_ignored`: the masks hold 0 = ignore and
    classes from 1 (ADE20K's, `dataset.reduce_zero_label`)."""

    def __init__(self, root, samples, num_classes: int, crop_size: int, scale_range=(0.5, 2.0),
                 length: int | None = None, seed: int = 0, mask_root: str | Path | None = None,
                 geometric_aug: dict | None = None, tags: list[np.ndarray] | None = None,
                 zero_is_ignored: bool = False):
        self.num_classes, self.zero_is_ignored = num_classes, zero_is_ignored
        self.tags = tags
        self.mask_root = Path(mask_root or root)
        self.geometric = geometric_transform(crop_size, tuple(scale_range), mask_fill=IGNORE_INDEX,
                                             **(geometric_aug or {}))
        super().__init__(root, samples, seed)
        self.length = length or len(samples)
        repeats = math.ceil(self.length / len(samples))
        self.index = (list(range(len(samples))) * repeats)[: self.length]

    def _pipelines(self):
        return [self.geometric]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Key) -> dict:
        i, _ = self._start(key)
        sample = self.samples[self.index[i]]
        image, mask = read_pair(self.root / sample.image, self.mask_root / sample.mask, self.num_classes,
                                self.zero_is_ignored)
        out = self.geometric(image=image, mask=mask)
        item = {"image": _to_chw(out["image"]), "mask": torch.from_numpy(out["mask"]).long()}
        if self.tags is not None:
            item["tags"] = torch.from_numpy(self.tags[self.index[i]])
        return item


class UnlabeledDataset(_Augmented):
    """Unlabeled crops: a weak view, two strong views of the same geometric crop, the padding
    mask (255 = padded) and one CutMix box per strong view. Never opens a ground-truth mask.
    `strong_aug`: keyword arguments of `strong_transform` (default: UniMatch's strong view)."""

    def __init__(self, root, samples, crop_size: int, scale_range=(0.5, 2.0), seed: int = 0,
                 strong_aug: dict | None = None, geometric_aug: dict | None = None):
        self.crop_size = crop_size
        self.geometric = geometric_transform(crop_size, tuple(scale_range), mask_fill=IGNORE_INDEX,
                                             **(geometric_aug or {}))
        self.strong = strong_transform(**(strong_aug or {}))
        super().__init__(root, samples, seed)

    def _pipelines(self):
        return [self.geometric, self.strong]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict:
        i, rng = self._start(key)
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
            "box1": torch.from_numpy(cutmix_box(self.crop_size, rng)),
            "box2": torch.from_numpy(cutmix_box(self.crop_size, rng)),
        }


class TaggedDataset(_Augmented):
    """Images with their image-level tags, only cropped (PCT's classification half: the release applies no
    augmentation there but the random crop, padding with the mean colour). `mask`: the cropped ground
    truth for the images that have one in the labeled list (`has_mask`), 255 elsewhere."""

    def __init__(self, root, samples, tags: list[np.ndarray], has_mask: list[bool], num_classes: int,
                 crop_size: int, seed: int = 0, zero_is_ignored: bool = False):
        self.num_classes, self.tags, self.has_mask = num_classes, tags, has_mask
        self.zero_is_ignored = zero_is_ignored
        # padding placed at random, as the release's RandomCrop (albumentations centres it by default)
        self.crop = A.Compose([A.RandomCrop(crop_size, crop_size, pad_if_needed=True, pad_position="random",
                                            border_mode=cv2.BORDER_CONSTANT, fill=MEAN_COLOUR,
                                            fill_mask=IGNORE_INDEX)], strict=True)
        super().__init__(root, samples, seed)

    def _pipelines(self):
        return [self.crop]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict:
        i, _ = self._start(key)
        sample = self.samples[i]
        if self.has_mask[i]:
            image, mask = read_pair(self.root / sample.image, self.root / sample.mask, self.num_classes,
                                    self.zero_is_ignored)
        else:
            image = read_image(self.root / sample.image)
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        out = self.crop(image=image, mask=mask)
        return {"image": _to_chw(out["image"]), "mask": torch.from_numpy(out["mask"]).long(),
                "tags": torch.from_numpy(self.tags[i]), "has_mask": torch.tensor(self.has_mask[i])}


class EvalDataset(Dataset):
    """Whole images and masks, no augmentation."""

    def __init__(self, root, samples, num_classes: int, zero_is_ignored: bool = False):
        self.root = Path(root)
        self.samples = samples
        self.num_classes, self.zero_is_ignored = num_classes, zero_is_ignored

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        image, mask = read_pair(self.root / sample.image, self.root / sample.mask, self.num_classes,
                                self.zero_is_ignored)
        return {"image": _to_chw(image), "mask": torch.from_numpy(mask).long(), "index": i}


class EpochSampler(Sampler):
    """(epoch, index) keys of one training stream on one rank. Each epoch is a permutation of the
    dataset seeded by (seed, epoch), cut to a multiple of the world size and dealt out by rank (rank r
    takes positions r, r+W, ...): every rank gets the same number of samples and none twice.

    The epoch of a pass is read when the pass starts: from `epoch_source` (the DataModule gives the
    trainer's current epoch; Lightning's own `set_epoch` value runs one ahead after a resume from an
    epoch-end checkpoint), else from `set_epoch`. `resume_at` sets the next pass of a resumed run."""

    def __init__(self, length: int, seed: tuple[int, ...], rank: int = 0, world_size: int = 1,
                 epoch_source: Callable[[], int] | None = None):
        self.length, self.seed, self.rank, self.world_size = length, tuple(seed), rank, world_size
        self.epoch_source = epoch_source
        self.epoch = 0
        self.resume: tuple[int, int] | None = None  # (epoch, samples already trained on) for the next pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start the next pass at `epoch`, after its first `samples` samples. Set before the first
        iteration: a persistent-worker loader draws its indices when Lightning makes its iterator,
        before the trainer's loop state is restored."""
        self.resume = (epoch, samples)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices this rank reads in `epoch`."""
        permutation = np.random.default_rng((*self.seed, epoch)).permutation(self.length)
        return permutation[: len(self) * self.world_size][self.rank :: self.world_size]

    def __iter__(self):
        if self.resume is not None:
            (epoch, skip), self.resume = self.resume, None
        else:
            epoch, skip = (self.epoch_source() if self.epoch_source else self.epoch), 0
        self.epoch = epoch
        return iter([(epoch, int(i)) for i in self.order(epoch)[skip:]])

    def __len__(self) -> int:
        return self.length // self.world_size


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: NumPy's global generator per worker, for any code that uses it
    (the datasets draw from their own per-item generators)."""
    np.random.seed(torch.initial_seed() % 2**32)  # torch derives it from the loader's base seed + worker id
