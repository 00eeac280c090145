"""Reading images and masks, with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sslseg.data.transforms import IGNORE_INDEX
from sslseg.errors import UserError

cv2.setNumThreads(0)  # DataLoader workers are the parallelism; OpenCV threads would oversubscribe


JPEG_END, PNG_END = b"\xff\xd9", b"IEND\xaeB`\x82"


def _ends_complete(data: np.ndarray) -> bool:
    """Whether an encoded JPEG or PNG ends with its end marker (other formats: no check). OpenCV decodes
    a truncated file into a partly grey image and says so on stderr only."""
    head, tail = data[:8].tobytes(), data[-64:].tobytes().rstrip(b"\x00\n\r ")
    if head.startswith(b"\xff\xd8"):
        return tail.endswith(JPEG_END)
    if head.startswith(b"\x89PNG"):
        return tail.endswith(PNG_END)
    return True


def _decodes_completely(path: Path) -> bool:
    """PIL's decoder reports a truncated file (the arbiter when the end marker is missing: some writers
    append bytes after it)."""
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except OSError:
        return False


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), decoded completely: a truncated file is refused, not half-grey."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read image: {path}") from exc
    if data.size and not _ends_complete(data) and not _decodes_completely(Path(path)):
        raise UserError(f"image file is truncated: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"cannot read image: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def reduce_zero_label(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """ADE20K's official annotations (0 = "other", classes 1..150) as class ids: c -> c - 1, 0 -> 255 (ignore), as
    mmsegmentation's `reduce_zero_label` and UniMatch V2's preprocessed masks have them. A mask that holds 255
    already is such a preprocessed mask: reducing it again would shift every class, so it is refused."""
    if (mask == IGNORE_INDEX).any():
        raise UserError(f"mask holds {IGNORE_INDEX} although dataset.reduce_zero_label is on (official ADE20K masks "
                        f"hold 0..150): a mask reduced already (UniMatch V2's annotations)? set "
                        f"dataset.reduce_zero_label=false: {path}")
    return (mask.astype(np.int32) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def read_mask(path: str | Path, num_classes: int, zero_is_ignored: bool = False) -> np.ndarray:
    """Class-index mask (H, W) uint8; 255 = ignore. Palette PNGs give their indices (not colours).
    `zero_is_ignored`: the file holds 0 = ignore and classes from 1 (`reduce_zero_label`)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise UserError(f"mask is not single-channel class indices (mode {img.mode}): {path}")
            mask = np.array(img)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"cannot read mask: {path} ({exc.__class__.__name__})") from exc
    if zero_is_ignored:
        mask = reduce_zero_label(mask, path)
    if mask.max(initial=0) >= num_classes:
        bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise UserError(
                f"mask has labels {bad[:5].tolist()} outside 0..{num_classes - 1} (and not {IGNORE_INDEX}): {path}"
            )
    return mask.astype(np.uint8, copy=False)  # 16-bit masks holding small ids are fine


def read_pair(image_path: str | Path, mask_path: str | Path, num_classes: int,
              zero_is_ignored: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, which must be the same size (else every crop would misalign them)."""
    image, mask = read_image(image_path), read_mask(mask_path, num_classes, zero_is_ignored)
    if image.shape[:2] != mask.shape:
        raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]} (width x height)")
    return image, mask
