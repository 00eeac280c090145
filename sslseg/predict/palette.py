"""Colours of predicted masks: palette PNGs (class ids as pixel values, colours for viewers) and overlays.

Pascal VOC's colour map for every dataset except Cityscapes, which gets its own 19 train-id colours, so
that predictions look like the datasets' ground-truth images. Index 255 (ignore) is black for Cityscapes
and VOC's border colour otherwise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """VOC's colour map: the bits of the class id interleaved over R, G and B, most significant first
    (flat [r0, g0, b0, r1, ...] for 256 ids)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


VOC_PALETTE = voc_palette()

# Cityscapes' colours of its 19 train ids (road, sidewalk, ..., bicycle), as in its label definitions.
CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
CITYSCAPES_PALETTE = [v for colour in CITYSCAPES_COLOURS for v in colour] + [0, 0, 0] * (256 - 19)


def palette_for(dataset_cfg) -> list[int]:
    """The flat 768-value palette for a dataset config (Cityscapes' layout gets Cityscapes' colours)."""
    cityscapes = dataset_cfg.get("layout") == "cityscapes" or dataset_cfg.get("name") == "cityscapes"
    return CITYSCAPES_PALETTE if cityscapes else VOC_PALETTE


def palette_png(mask: np.ndarray, palette: list[int]) -> Image.Image:
    """A mode-P image whose pixel values are the class ids (what `read_mask` reads back)."""
    png = Image.fromarray(mask.astype(np.uint8), mode="P")
    png.putpalette(palette)
    return png


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[int], alpha: float = 0.5) -> Image.Image:
    """The RGB image blended with its mask's colours: (1 − alpha)·image + alpha·colour at every pixel."""
    colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)[mask.astype(np.uint8)]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")
