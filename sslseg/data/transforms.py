"""Augmentation of UniMatch's data pipeline, with albumentations.

Images stay uint8 (H, W, 3) here; normalisation runs on the device inside the LightningModule, so
the loaders move 4x fewer bytes. Padding the image with 0 before normalisation is what the
reference does (black padding), so normalising later gives identical tensors.
"""

from __future__ import annotations

import math
import random

import albumentations as A
import cv2
import numpy as np

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): 0 after normalisation


def geometric_transform(crop_size: int, scale_range: tuple[float, float], mask_fill: int = IGNORE_INDEX,
                        rotate: float = 0.0, blur_p: float = 0.0, pad: str = "zero", pad_position: str = "corner",
                        scale_interpolation: str = "linear"):
    """Random rescale (uniform factor in scale_range, aspect kept; the image `scale_interpolation`: linear, or
    cubic as Learning-Pseudo-Label; the mask nearest), pad to the crop (image `pad`: 0 as UniMatch, or the
    mean colour as semseg/DARS and Learning-Pseudo-Label; mask `mask_fill`; `pad_position`: corner =
    right/bottom as UniMatch, centre = around the image as semseg's Crop, random = at a random offset as
    Learning-Pseudo-Label), random crop,
    horizontal flip. Applied to image and mask together. DARS's semseg pipeline adds, after the
    rescale, a rotation by U(±rotate)° with p 0.5 (borders: the mean colour, mask 255) and a 5×5
    Gaussian blur (σ from the kernel size, as cv2) with p `blur_p`."""
    low, high = scale_range
    if pad not in ("zero", "mean"):
        raise ValueError(f"data.geometric_aug.pad must be zero or mean, got {pad!r}")
    positions = {"corner": "top_left", "centre": "center", "random": "random"}
    if pad_position not in positions:
        raise ValueError(f"data.geometric_aug.pad_position must be one of {list(positions)}, got {pad_position!r}")
    interpolations = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
    if scale_interpolation not in interpolations:
        raise ValueError(f"data.geometric_aug.scale_interpolation must be linear or cubic, got {scale_interpolation!r}")
    fill = 0 if pad == "zero" else MEAN_COLOUR
    steps = [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),
            interpolation=interpolations[scale_interpolation],
            # centre-aligned like bilinear (and PIL's NEAREST); cv2.INTER_NEAREST floors and
            # shifts masks up to half a source pixel against their images
            mask_interpolation=cv2.INTER_NEAREST_EXACT,
            p=1.0,
        ),
    ]
    if rotate:
        # warpAffine maps pixel centres alike for every interpolation, so NEAREST stays aligned here
        steps.append(A.Rotate(limit=(-rotate, rotate), interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                              fill=MEAN_COLOUR, fill_mask=mask_fill, p=0.5))
    if blur_p:
        steps.append(FixedGaussianBlur(5, p=blur_p))
    steps += [
        A.RandomCrop(
            crop_size,
            crop_size,
            pad_if_needed=True,
            # corner: the image at the top left, padded right/bottom (UniMatch); centre: padded around it (semseg)
            pad_position=positions[pad_position],
            border_mode=cv2.BORDER_CONSTANT,
            fill=fill,
            fill_mask=mask_fill,
        ),
        A.HorizontalFlip(p=0.5),
    ]
    return A.Compose(steps, strict=True)


def strong_transform(jitter_p: float = 0.8, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                     hue: float = 0.25, grayscale_p: float = 0.2, blur_p: float = 0.5,
                     blur_sigma: tuple[float, float] = (0.1, 2.0), extra_ops: int = 0):
    """Photometric strong view; the defaults are UniMatch's: colour jitter (p 0.8; hue as a fraction of
    the hue circle, 0.25 = ±90°), grayscale (p 0.2), Gaussian blur σ∈[0.1, 2] (p 0.5). `extra_ops` > 0
    appends DSSN's Pascal ops: 1 to `extra_ops` of `extra_photometric_ops()` (count uniform, ops drawn
    with replacement and applied in the drawn order)."""
    steps = [
        A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=jitter_p),
        A.ToGray(p=grayscale_p),
        A.GaussianBlur(blur_limit=0, sigma_limit=tuple(blur_sigma), p=blur_p),
    ]
    if extra_ops:
        steps.append(random_ops(extra_photometric_ops(), extra_ops))
    return A.Compose(steps, strict=True)


def random_ops(ops: list, max_ops: int) -> A.OneOf:
    """n ~ U{1..max_ops}, then n ops drawn uniformly with replacement, applied in that order."""
    return A.OneOf([A.Sequential([A.OneOf(ops, p=1.0) for _ in range(n)], p=1.0) for n in range(1, max_ops + 1)],
                   p=1.0)


class FixedGaussianBlur(A.ImageOnlyTransform):
    """cv2.GaussianBlur with a fixed k×k kernel and σ derived from k (semseg's RandomGaussianBlur);
    albumentations' GaussianBlur builds its own kernel, which differs from cv2's by a few grey levels."""

    def __init__(self, kernel: int = 5, p: float = 0.5):
        super().__init__(p=p)
        self.kernel = kernel

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return cv2.GaussianBlur(img, (self.kernel, self.kernel), 0)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("kernel",)


class Sharpness(A.ImageOnlyTransform):
    """PIL's ImageEnhance.Sharpness: blend with the image smoothed by PIL's 3×3 SMOOTH kernel (a factor
    below 1 softens, above 1 sharpens); border pixels stay as they are, as in PIL."""

    _KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13

    def __init__(self, factor_range: tuple[float, float] = (0.05, 0.95), p: float = 0.5):
        super().__init__(p=p)
        self.factor_range = tuple(factor_range)

    def get_params(self) -> dict:
        return {"factor": self.py_random.uniform(*self.factor_range)}

    def apply(self, img: np.ndarray, factor: float = 1.0, **params) -> np.ndarray:
        image = img.astype(np.float32)
        smooth = image.copy()
        smooth[1:-1, 1:-1] = np.round(cv2.filter2D(image, -1, self._KERNEL))[1:-1, 1:-1]
        # PIL's blend truncates: smooth + factor·(image − smooth), clipped, then cast
        return np.clip(smooth + np.float32(factor) * (image - smooth), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("factor_range",)


def extra_photometric_ops() -> list:
    """DSSN's `strong_img_aug` list (voc/dataset/transform.py): identity, autocontrast, equalize, blur
    σ∈[0.1, 2], contrast, brightness, colour and sharpness factors in [0.05, 0.95] (always a reduction),
    posterize to 4-7 bits, solarize at a threshold in [1, 255], hue shift in ±0.5 of the circle."""
    reduce = (0.05, 0.95)
    return [
        A.NoOp(p=1.0),
        A.AutoContrast(method="pil", p=1.0),
        A.Equalize(mode="pil", p=1.0),
        A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=1.0),
        A.ColorJitter(brightness=(1, 1), contrast=reduce, saturation=(1, 1), hue=(0, 0), p=1.0),
        A.ColorJitter(brightness=reduce, contrast=(1, 1), saturation=(1, 1), hue=(0, 0), p=1.0),
        A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=reduce, hue=(0, 0), p=1.0),
        Sharpness(reduce, p=1.0),
        A.Posterize(num_bits=(4, 7), p=1.0),
        A.Solarize(threshold_range=(1 / 255, 1.0), p=1.0),
        A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(-0.5, 0.5), p=1.0),
    ]


def seed_transforms(transform, rng: np.random.Generator) -> None:
    """Make every transform of an albumentations pipeline draw from one stream seeded from `rng`.

    One shared pair of generators, drawn from in turn: `Compose.set_random_seed` instead gives each
    child its own generator with the *same* seed, so the children draw identical numbers (the scale,
    the crop position and the flip of the geometric view would all follow one uniform draw)."""
    transform.set_random_state(np.random.default_rng(rng.integers(2**63)), random.Random(int(rng.integers(2**63))))


def cutmix_box(size: int, rng: np.random.Generator, p: float = 0.5, area_range=(0.02, 0.4),
               ratio_range=(0.3, 1 / 0.3)) -> np.ndarray:
    """A (size, size) uint8 mask, 1 inside one random box (empty with probability 1 - p).

    Area ~ U(area_range)·size², aspect ratio ~ U(ratio_range); ratio and position are redrawn
    until the box fits, the area is kept (UniMatch's `obtain_cutmix_box`).
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    if rng.random() > p:
        return mask
    area = rng.uniform(*area_range) * size * size
    while True:
        ratio = rng.uniform(*ratio_range)
        w = int(math.sqrt(area / ratio))
        h = int(math.sqrt(area * ratio))
        x, y = int(rng.integers(0, size)), int(rng.integers(0, size))
        if x + w <= size and y + h <= size:
            break
    mask[y : y + h, x : x + w] = 1
    return mask
