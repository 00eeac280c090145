"""Augmentation of UniMatch's data pipeline (specs §1.3), with albumentations.

Images stay uint8 (H, W, 3) here; normalisation runs on the device inside the LightningModule, so
the loaders move 4x fewer bytes. Padding the image with 0 before normalisation is what the
reference does (black padding), so normalising later gives identical tensors.
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def geometric_transform(crop_size: int, scale_range: tuple[float, float], mask_fill: int = IGNORE_INDEX):
    """Random rescale (uniform factor in scale_range, aspect kept), pad right/bottom to the crop
    (image 0, mask `mask_fill`), random crop, horizontal flip. Applied to image and mask together."""
    low, high = scale_range
    return A.Compose(
        [
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0),
                interpolation=cv2.INTER_LINEAR,
                # centre-aligned like bilinear (and PIL's NEAREST); cv2.INTER_NEAREST floors and
                # shifts masks up to half a source pixel against their images
                mask_interpolation=cv2.INTER_NEAREST_EXACT,
                p=1.0,
            ),
            A.RandomCrop(
                crop_size,
                crop_size,
                pad_if_needed=True,
                pad_position="top_left",  # pad right/bottom only, as the reference
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=mask_fill,
            ),
            A.HorizontalFlip(p=0.5),
        ],
        strict=True,
    )


def strong_transform(jitter_p: float = 0.8, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                     hue: float = 0.25, grayscale_p: float = 0.2, blur_p: float = 0.5,
                     blur_sigma: tuple[float, float] = (0.1, 2.0)):
    """Photometric strong view; the defaults are UniMatch's: colour jitter (p 0.8; hue as a fraction of
    the hue circle, 0.25 = ±90°), grayscale (p 0.2), Gaussian blur σ∈[0.1, 2] (p 0.5)."""
    return A.Compose(
        [
            A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=jitter_p),
            A.ToGray(p=grayscale_p),
            A.GaussianBlur(blur_limit=0, sigma_limit=tuple(blur_sigma), p=blur_p),
        ],
        strict=True,
    )


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
