"""Evaluation-time prediction: one protocol composed of a mode, scales and flip.

Mode (`dataset.eval.mode`):
- `whole`: the full image in one pass (UniMatch's Pascal/COCO protocol).
- `center_crop`: the image padded symmetrically to the crop size (DDFP's 513 protocol).
- `sliding`: crop-size windows with stride crop x stride_ratio (Cityscapes 801 / 534), window outputs
  averaged where they overlap. `window` picks the border windows:
  - `shifted` (default): a border window is moved back inside the image (mmseg style), so every
    window has the crop size and windows run in batches of `window_batch`. Not the reference's grid.
  - `truncated`: UniMatch's grid: windows start at 0, stride, 2·stride, ... < size and are cut at the
    border, each run at its own size (windows of one size still share a batch). Window for window the
    reference's evaluation; the reference sums the overlapping probabilities, the mean here has the
    same argmax.
  - `centred`: as `shifted`, but an image smaller than a window is padded around its centre, as semseg
    (DARS) pads it, instead of on the right and bottom; the padding is the mean colour in both.

Scales and flip (`dataset.eval.scales`, `dataset.eval.flip`), as Learning-Pseudo-Label's and DARS's
evaluations: for every scale s the image is resized to round(s·H) x round(s·W), predicted with the mode,
and its scores resized back to H x W (bilinear); the scales are averaged. With flip, every forward pass
(the whole image, or each window) also runs on the horizontally flipped input and the two are averaged,
as both references do it per window.

What is averaged (`dataset.eval.average`): `probs` averages softmax probabilities (UniMatch's sliding
window, DARS's evaluation), `logits` averages raw logits (Learning-Pseudo-Label's multi-scale test,
DARS's pseudo-label generation). It applies to every average: overlapping windows, flips and scales.

`scales: [1.0]`, `flip: false` (every dataset's default) runs exactly the single-view code path: whole
and centre-crop return raw logits, sliding returns averaged probabilities (with `average: probs`).

`base_size` (DARS's semseg protocol): the long side is resized to round(scale · base_size) instead of
the image's own size times the scale (VOC: 400 with 321 windows; Cityscapes 2048 or 1024).

`multiplier` (UniMatch V2's `evaluate(..., multiplier=14)`): every forward pass (the whole image, a window, a
scale) runs on its input resized so that each side is the nearest multiple of the multiplier m
(int(side / m + 0.5) · m, at least m), and its logits are resized back to the input's size, both bilinear with
align_corners=True: a ViT reads sides that are multiples of its patch size. An input whose sides are multiples
already runs unchanged (crop-size windows of a multiple crop). `auto` (every dataset's default): the backbone's
patch size for a ViT, nothing for a CNN (the caller passes `patch_size`); null: never resized.

Deliberate difference from the references: images and scores are resized with bilinear interpolation,
align_corners=True, on the normalised tensor (DARS resizes the raw image with OpenCV).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sslseg.errors import UserError

Logits = Callable[[torch.Tensor], torch.Tensor]

MODES = ("whole", "center_crop", "sliding")
AUTO = "auto"  # dataset.eval.multiplier: the backbone's patch size (a ViT), none (a CNN)
WINDOWS = ("shifted", "truncated", "centred")
AVERAGES = ("probs", "logits")


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window starts with the last window shifted back inside (every window full-size)."""
    if length <= crop:
        return [0]
    starts = list(range(0, length - crop, stride)) + [length - crop]
    return sorted(set(starts))


def _truncated_starts(length: int, stride: int) -> list[int]:
    """UniMatch's starts: 0, stride, 2·stride, ... while inside the image (border windows are cut)."""
    return list(range(0, length, stride))


def sliding_window_scores(scores_fn: Logits, image: torch.Tensor, num_classes: int, crop: int, stride: int,
                          window_batch: int = 8, window: str = "shifted") -> torch.Tensor:
    """`scores_fn` (the per-pass quantity to average) over windows, averaged where they overlap,
    (B, K, H, W) float32. Memory is bounded by window_batch crops, whatever the image size."""
    b, _, h, w = image.shape
    top = left = 0
    if window in ("shifted", "centred"):
        pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
        if window == "centred":  # semseg: the padding around the image (the mean colour, 0 once normalised)
            top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:  # images smaller than a window: pad, predict, crop back
            image = F.pad(image, (left, pad_w - left, top, pad_h - top))
        hp, wp = image.shape[-2:]
        boxes = [(y, x, crop, crop) for y in _starts(hp, crop, stride) for x in _starts(wp, crop, stride)]
    elif window == "truncated":
        hp, wp = h, w
        boxes = [(y, x, min(crop, h - y), min(crop, w - x))
                 for y in _truncated_starts(h, stride) for x in _truncated_starts(w, stride)]
    else:
        raise UserError(f"dataset.eval.window must be one of {WINDOWS}, got {window!r}")
    scores = image.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = image.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y, x, wh, ww in boxes:  # windows of one size share a forward pass
        by_size.setdefault((wh, ww), []).append((y, x))
    for (wh, ww), starts in by_size.items():
        for i in range(0, len(starts), window_batch):
            chunk = starts[i : i + window_batch]
            windows = torch.cat([image[:, :, y : y + wh, x : x + ww] for y, x in chunk])
            for (y, x), s in zip(chunk, scores_fn(windows).float().split(b)):
                scores[:, :, y : y + wh, x : x + ww] += s
                count[:, :, y : y + wh, x : x + ww] += 1
    return (scores / count)[:, :, top : top + h, left : left + w]


def sliding_window_probs(logits_fn: Logits, image: torch.Tensor, num_classes: int, crop: int, stride: int,
                         window_batch: int = 8, window: str = "shifted") -> torch.Tensor:
    """Softmax probabilities (B, K, H, W), averaged over overlapping windows."""
    return sliding_window_scores(lambda t: logits_fn(t).float().softmax(1), image, num_classes, crop, stride,
                                 window_batch, window)


def center_crop_logits(logits_fn: Logits, image: torch.Tensor, crop: int) -> torch.Tensor:
    """Pad the normalised image symmetrically to at least crop x crop with black, as DDFP (U2PL) pads the raw
    image with 0 before normalising it, run once, and return the logits of the original pixels."""
    from sslseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    h, w = image.shape[-2:]
    top, left = max(crop - h, 0) // 2, max(crop - w, 0) // 2
    bottom, right = max(crop - h, 0) - top, max(crop - w, 0) - left
    if top or left or bottom or right:
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        black = -mean / std  # a raw 0 after normalisation
        padded = black.expand(image.shape[0], 3, h + top + bottom, w + left + right).clone()
        padded[:, :, top : top + h, left : left + w] = image
        image = padded
    logits = logits_fn(image)
    return logits[:, :, top : top + h, left : left + w]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=True)


def at_multiple(logits_fn: Logits, multiplier: int | None) -> Logits:
    """`logits_fn` on its input resized to sides that are multiples of `multiplier`, logits resized back (UniMatch
    V2's evaluation; module docstring). None or 1: `logits_fn` itself."""
    if not multiplier or multiplier == 1:
        return logits_fn
    m = int(multiplier)

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (max(m, int(h / m + 0.5) * m), max(m, int(w / m + 0.5) * m))
        if size == (h, w):
            return logits_fn(x)
        return _resize(logits_fn(_resize(x, size)), (h, w))

    return run


def resolve_multiplier(value, patch_size: int | None) -> int | None:
    """`dataset.eval.multiplier` as a number: `auto` is the backbone's patch size (None for a CNN); null is None.
    Anything but auto, null or a positive integer is one UserError line."""
    if value == AUTO:
        return patch_size
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"dataset.eval.multiplier must be auto, null or a positive integer, got {value!r}")
    return value


def _scaled_size(h: int, w: int, scale: float, base_size: int | None) -> tuple[int, int]:
    """Relative to the image (round(s·H) x round(s·W)), or semseg's: the long side = round(s·base_size)."""
    if not base_size:
        return max(1, round(h * scale)), max(1, round(w * scale))
    long_side = round(scale * base_size)
    return (long_side, max(1, round(long_side / h * w))) if h > w else (max(1, round(long_side / w * h)), long_side)


def predict(logits_fn: Logits, image: torch.Tensor, mode: str, num_classes: int, crop: int,
            stride_ratio: float = 2 / 3, window_batch: int = 8, *, window: str = "shifted",
            scales: Sequence[float] = (1.0,), flip: bool = False, average: str = "probs",
            base_size: int | None = None, multiplier: int | None = None) -> torch.Tensor:
    """Scores (B, K, H, W) whose argmax is the prediction, for a normalised image batch (module docstring)."""
    logits_fn = at_multiple(logits_fn, resolve_multiplier(multiplier, None))
    if mode not in MODES:
        raise UserError(f"dataset.eval.mode must be whole, center_crop or sliding, got {mode!r}")
    if average not in AVERAGES:
        raise UserError(f"dataset.eval.average must be one of {AVERAGES}, got {average!r}")
    if window not in WINDOWS:
        raise UserError(f"dataset.eval.window must be one of {WINDOWS}, got {window!r}")
    scales = [float(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise UserError(f"dataset.eval.scales must be a non-empty list of positive numbers, got {scales}")
    stride = max(1, int(crop * stride_ratio))
    single_view = is_single_view(scales, flip, base_size)

    if single_view and mode != "sliding":  # nothing is averaged: the raw logits
        return logits_fn(image) if mode == "whole" else center_crop_logits(logits_fn, image, crop)

    def one_pass(x: torch.Tensor) -> torch.Tensor:
        out = logits_fn(x).float()
        return out.softmax(1) if average == "probs" else out

    def scores_fn(x: torch.Tensor) -> torch.Tensor:  # one forward, averaged with its mirror image
        out = one_pass(x)
        return (out + one_pass(x.flip(-1)).flip(-1)) / 2 if flip else out

    h, w = image.shape[-2:]
    total = None
    for s in scales:
        x = _resize(image, _scaled_size(h, w, s, base_size))
        if mode == "whole":
            out = scores_fn(x)
        elif mode == "center_crop":
            out = center_crop_logits(scores_fn, x, crop)
        else:
            out = sliding_window_scores(scores_fn, x, num_classes, crop, stride, window_batch, window)
        out = _resize(out, (h, w))
        total = out if total is None else total + out
    return total / len(scales)


def predict_with(logits_fn: Logits, image: torch.Tensor, num_classes: int, protocol,
                 patch_size: int | None = None) -> torch.Tensor:
    """`predict` with a protocol mapping (a dataset's `eval` section, DARS's `method.generation`):
    mode, crop_size, stride_ratio, window_batch, window, scales, flip, average, base_size, multiplier (absent:
    auto, resolved with the network's `patch_size`)."""
    multiplier = resolve_multiplier(protocol.get("multiplier", AUTO), patch_size)
    return predict(logits_fn, image, protocol.get("mode", "whole"), num_classes, int(protocol["crop_size"]),
                   float(protocol.get("stride_ratio", 2 / 3)), int(protocol.get("window_batch", 4)),
                   window=protocol.get("window", "shifted"), scales=list(protocol.get("scales", [1.0])),
                   flip=bool(protocol.get("flip", False)), average=protocol.get("average", "probs"),
                   base_size=protocol.get("base_size"), multiplier=multiplier)


def is_single_view(scales, flip, base_size) -> bool:
    """One pass at the image's own size: nothing for `predict` to average."""
    return [float(s) for s in scales] == [1.0] and not flip and not base_size


def returns_probabilities(protocol) -> bool:
    """Whether `predict_with(..., protocol)` returns probabilities (averaged softmax) rather than logits."""
    single_view = is_single_view(protocol.get("scales", [1.0]), protocol.get("flip"), protocol.get("base_size"))
    return protocol.get("average", "probs") == "probs" and (protocol.get("mode") == "sliding" or not single_view)
