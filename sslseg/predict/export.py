"""Exporting a checkpoint's reported network (`python eval.py ckpt_path=... export=onnx|torchscript`).

The exported graph is the network alone, in eval mode: input a float32 (B, 3, H, W) RGB batch normalised
as in training (ImageNet mean and std over 0..255 values: the sidecar JSON lists them), output the logits
(B, K, H, W) at the input size. The evaluation protocol (sliding windows, scales, flip) is not part of it:
for a `whole` protocol the argmax of the logits is the segmenter's mask; otherwise run the windows or
scales around the exported network.

  onnx         torch.onnx.export (the torch.export-based exporter; needs `pip install sslseg[export]`),
               batch, height and width dynamic where the network permits: the axes left fixed are named.
  torchscript  torch.jit.trace at the example size, saved with torch.jit.save. Tracing records the shape
               arithmetic, so other sizes and batch sizes run when the network has no size-dependent
               Python branch; the export checks one other size against the eager network and says which.

The example input is `size` (default: the dataset's crop size, the size the network was trained on).
Beside the file, `<file>.json` records the classes, the normalisation, the network and the dynamic axes.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from sslseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslseg.errors import UserError
from sslseg.predict.segmenter import Segmenter

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
AXES = ("batch", "height", "width")  # of the input (B, 3, H, W): dims 0, 2, 3


class LogitsOnly(nn.Module):
    """The segmentor's logits at the input size, the exported graph's one output."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentor(x).logits


def default_path(ckpt_path: str | Path, fmt: str) -> Path:
    """Beside the checkpoint: best.ckpt -> best.onnx / best.torchscript.pt."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(ckpt_path.stem + SUFFIXES[fmt])


def example_size(segmenter: Segmenter, size) -> tuple[int, int]:
    """(H, W) of the example input: `size` (an int or [H, W]) or the dataset's crop size."""
    size = segmenter.dataset_cfg.crop_size if size is None else size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise UserError(f"export_size must be positive, got {size}")
    return int(h), int(w)


def export(segmenter: Segmenter, fmt: str, path: str | Path, size=None) -> dict:
    """Write the segmenter's network to `path` in `fmt`; returns what the sidecar JSON records."""
    if fmt not in SUFFIXES:
        raise UserError(f"export must be one of {list(SUFFIXES)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly(copy.deepcopy(segmenter.network)).eval().cpu()  # the segmenter keeps its device
    h, w = example_size(segmenter, size)
    example = torch.randn(1, 3, h, w)
    dynamic = _onnx(model, example, path) if fmt == "onnx" else _torchscript(model, example, path)
    info = {
        "format": fmt, "file": str(path), "method": segmenter.module.cfg.method.name,
        "network": segmenter.network_name, "network_selected_by_validation": segmenter.selected,
        "classes": segmenter.class_names,
        "input": "float32 (batch, 3, height, width), RGB, (x - mean) / std with x in 0..255",
        "mean": [round(255 * m, 4) for m in IMAGENET_MEAN], "std": [round(255 * s, 4) for s in IMAGENET_STD],
        "output": "float32 logits (batch, classes, height, width)", "example_size": [h, w],
        "dynamic_axes": dynamic, "fixed_axes": [a for a in AXES if a not in dynamic],
        "eval_protocol": segmenter.protocol,
    }
    Path(f"{path}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"export=onnx needs the export extra: pip install 'sslseg[export]' "
                        f"({exc.name} missing)") from exc
    names = {0: "batch", 2: "height", 3: "width"}
    for logger in ("onnx_ir", "onnxscript"):  # their optimiser logs every pass at INFO (Hydra prints INFO)
        logging.getLogger(logger).setLevel(logging.WARNING)
    with torch.no_grad():
        try:  # named dynamic axes; a network that needs a fixed size fails this and is exported with AUTO
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=(names,), verbose=False)
        except Exception:
            auto = torch.export.Dim.AUTO
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=({0: auto, 2: auto, 3: auto},),
                                        verbose=False)
    program.save(str(path))
    shape = program.model.graph.inputs[0].shape
    return [name for dim, name in names.items() if not isinstance(shape[dim], int)]


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    with torch.no_grad(), warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export; the format is still what C++ and mobile load.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)  # checked below, at another size
        torch.jit.save(traced, str(path))
        # Another batch size and size: does the trace follow them?
        _, _, h, w = example.shape
        other = torch.randn(2, 3, h + 16, w + 8)
        try:
            follows = torch.allclose(traced(other), model(other), rtol=1e-4, atol=1e-4)
        except RuntimeError:
            follows = False
    return list(AXES) if follows else []
