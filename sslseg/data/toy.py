"""The procedural toy dataset: `python train.py` trains on it by default, on a CPU, in minutes.

Written once, deterministically (seeded per image), into the data folder in Pascal VOC's layout
(JPEGImages/*.jpg, SegmentationClass/*.png palette masks, ImageSets/Segmentation/{train,val}.txt)
with its own split lists, so training reads it through the same code path as Pascal.

It is built so that few labels underfit and unlabeled images help: five object classes differ in
shape *and* (mostly) texture, while colour, scale, rotation, clutter, occlusion, lighting and noise
vary freely. A model trained on 16-64 labeled images sees few combinations of these nuisances;
consistency on the unlabeled images covers the rest. Object borders are 255 (ignore), as in VOC.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sslseg.data.splits import Sample, write_split_file
from sslseg.predict.palette import VOC_PALETTE

CLASS_NAMES = ["background", "disk", "square", "triangle", "ring", "cross"]
IMAGE_SIZE = 96
NUM_TRAIN = 1000
NUM_VAL = 200
LABELED_SPLITS = (16, 32, 64, 128)
TEXTURE_MATCH = 0.8  # probability that an object wears its own class's texture
CLUTTER_STROKES = 3  # at most this many 1-px background strokes
CLASS_HUES = [0, 0, 72, 144, 216, 288]  # degrees, per foreground class (index 0 unused)
HUE_NOISE = 40.0
VERSION = (f"toy-v5 hue={HUE_NOISE} tex={TEXTURE_MATCH} size={IMAGE_SIZE} train={NUM_TRAIN} val={NUM_VAL} "
           f"splits={LABELED_SPLITS}")


PALETTE = VOC_PALETTE  # masks look like VOC's in image viewers


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of class `cls`'s shape in rotated, centred coordinates (u, v) with radius r."""
    if cls == 1:  # disk
        return u**2 + v**2 < r**2
    if cls == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) < 0.85 * r
    if cls == 3:  # equilateral triangle
        return (v > -0.5 * r) & (np.sqrt(3) * u + v < r) & (-np.sqrt(3) * u + v < r)
    if cls == 4:  # ring
        d2 = u**2 + v**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    if cls == 5:  # cross
        w = 0.32 * r
        return ((np.abs(u) < w) & (np.abs(v) < r)) | ((np.abs(v) < w) & (np.abs(u) < r))
    raise ValueError(cls)


def _texture(kind: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] pattern per pixel; `kind` 1..5 = stripes, checker, dots, plain, rings."""
    period = rng.uniform(8.0, 12.0)
    w = 2 * np.pi / period
    if kind == 1:
        return (np.sin(w * u) > 0).astype(np.float32)
    if kind == 2:
        return ((np.floor(u / period * 2) + np.floor(v / period * 2)) % 2).astype(np.float32)
    if kind == 3:
        return ((np.sin(w * u) * np.sin(w * v)) > 0.5).astype(np.float32)
    if kind == 4:
        return np.ones_like(u)
    return (np.sin(w * np.sqrt(u**2 + v**2)) > 0).astype(np.float32)


def _class_colours(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two texture colours around the class's hue (±HUE_NOISE degrees, random saturation and value):
    colour is a quick but unreliable cue, as in real images; shape and texture are the robust ones."""
    colours = []
    for value in (rng.uniform(150, 255), rng.uniform(20, 110)):
        hue = (CLASS_HUES[cls] + rng.uniform(-HUE_NOISE, HUE_NOISE)) % 360
        hsv = np.uint8([[[hue / 2, rng.uniform(90, 255), value]]])  # OpenCV: H in [0, 180)
        colours.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32))
    return colours[0], colours[1]


def render(index: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and mask (size, size) uint8 of sample `index`."""
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Background: a random colour gradient, low-frequency blotches and clutter strokes (label 0).
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    c0, c1 = (c0 + c0.mean()) / 2, (c1 + c1.mean()) / 2  # half-desaturated: objects carry the colour
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy) / size
    image = c0 + (c1 - c0) * t[..., None]
    image = image + cv2.resize(rng.uniform(-30, 30, (4, 4, 3)).astype(np.float32), (size, size))
    for _ in range(rng.integers(0, CLUTTER_STROKES + 1)):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(image, tuple(int(a) for a in p0), tuple(int(a) for a in p1),
                 tuple(float(a) for a in rng.uniform(0, 255, 3)), 1)

    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(2, 5)):  # later objects occlude earlier ones
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        r = rng.uniform(0.16, 0.34) * size
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        theta = rng.uniform(0, 2 * np.pi)
        u = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)
        v = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy)
        inside = _shape_mask(cls, u, v, r)
        kind = cls if rng.random() < TEXTURE_MATCH else int(rng.integers(1, 6))
        pattern = _texture(kind, u, v, rng)[..., None]
        fg, bg = _class_colours(cls, rng)
        image[inside] = (bg + (fg - bg) * pattern)[inside]
        label[inside] = cls

    # Lighting, noise; VOC-style ignore band on object borders.
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    image = image + rng.normal(0, rng.uniform(2, 8), image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[border] = 255
    return image, label


def ensure_toy_dataset(root: str | Path, seed: int = 0) -> Path:
    """Generate the toy set into `root` unless a complete copy of this version is already there."""
    root = Path(root)
    marker = root / "VERSION"
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        # Never write into a folder we did not create.
        from sslseg.errors import UserError

        raise UserError(f"{root} exists but holds no toy dataset; point paths.data_root elsewhere")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
    except OSError as exc:
        from sslseg.errors import UserError

        raise UserError(f"cannot write the toy dataset to {root} (paths.data_root): {exc.strerror}") from None

    def write(name: str, index: int) -> Sample:
        image, label = render(index, seed)
        cv2.imwrite(str(tmp / "JPEGImages" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(PALETTE)
        mask.save(tmp / "SegmentationClass" / f"{name}.png")
        return Sample(f"JPEGImages/{name}.jpg", f"SegmentationClass/{name}.png")

    train = [write(f"toy_train_{i:05d}", i) for i in range(NUM_TRAIN)]
    val = [write(f"toy_val_{i:05d}", NUM_TRAIN + i) for i in range(NUM_VAL)]
    (tmp / "ImageSets/Segmentation/train.txt").write_text("\n".join(Path(s.image).stem for s in train) + "\n")
    (tmp / "ImageSets/Segmentation/val.txt").write_text("\n".join(Path(s.image).stem for s in val) + "\n")

    # Split lists (UniMatch format) inside the dataset folder; unlabeled lines name the image only.
    order = np.random.default_rng(seed).permutation(NUM_TRAIN)
    for n in LABELED_SPLITS:
        labeled = [train[i] for i in sorted(order[:n])]
        unlabeled = [Sample(train[i].image, None) for i in sorted(order[n:])]
        write_split_file(tmp / "splits" / str(n) / "labeled.txt", labeled)
        write_split_file(tmp / "splits" / str(n) / "unlabeled.txt", unlabeled)
    write_split_file(tmp / "splits" / "val.txt", val)
    (tmp / "VERSION").write_text(VERSION + "\n")

    if marker.is_file() and marker.read_text().strip() == VERSION:
        # Another process (a second run started at the same time) finished first: its copy is in use.
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # an older version of the toy set
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first (e.g. a second DDP launch)
        shutil.rmtree(tmp, ignore_errors=True)
    return root
