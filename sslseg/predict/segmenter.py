"""Prediction from Python with a trained checkpoint of any method:

    from sslseg import Segmenter
    segmenter = Segmenter.from_checkpoint("outputs/daw/toy_16/<run>/checkpoints/best.ckpt")
    mask = segmenter(image)  # image: uint8 H x W x 3 RGB -> mask: H x W class ids (segmenter.class_names)

The checkpoint carries everything: the method (its network is rebuilt from the training config, no
pretrained file is read), the weights, the dataset's evaluation protocol (`dataset.eval`: whole image,
centre crop or sliding windows, scales, flip; run by sslseg/predict/inference.py, as in validation), the class
names, and which network the run reported: DAW, DSSN and DDFP validate student and teacher and keep the
better (PCT's stage 1: HybridNet and PseudoNet), and the checkpoint records the one its validation
selected (`best_network`), so the segmenter predicts with the network behind the reported mIoU.

Images are normalised as in training (ImageNet mean and std of RGB values in 0..255). Prediction runs in
fp32 under torch.inference_mode, one image at a time for numpy and PIL inputs (images may differ in size).
PCT's stage-1 validation reads the val images' class tags (`method.eval_with_tags`); a segmenter has no
tags and predicts over all classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from sslseg.methods.base import SemiSegModule
from sslseg.methods.teacher import Teacher
from sslseg.run.checkpoint import read_checkpoint
from sslseg.run.console import NETWORK_NAMES  # noqa: F401  (one wording for the console and results.json)


def load_module(path: str | Path, replace: Mapping | None = None) -> tuple[SemiSegModule, bool]:
    """The checkpoint's method module with its weights, in eval mode on the CPU, its recorded network set
    as the inference network; and whether a validation selected that network (False: no record, the
    method's first evaluated network). `replace`: top-level config sections to use instead of the
    checkpoint's (eval.py's dataset, paths, data and trainer)."""
    from sslseg.methods import method_class  # lazy: sslseg/__init__ imports this module first

    checkpoint, cfg = read_checkpoint(path)
    for key, value in (replace or {}).items():
        cfg[key] = value
    module = method_class(cfg)(cfg, load_pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    selected = module.restore_selection(checkpoint)
    return module.eval(), selected


class Segmenter:
    """A checkpoint's reported network with its evaluation protocol, as a callable: images in, class masks out.

    `segmenter(images)` accepts
      * a uint8 RGB numpy array (H, W, 3)             -> a numpy mask (H, W)
      * a PIL image (any mode, converted to RGB)      -> a numpy mask (H, W)
      * a list or tuple of those (sizes may differ)   -> a list of numpy masks
      * a torch tensor (B, 3, H, W): float = already normalised (ImageNet mean/std over 0..255 RGB values,
        `normalize`), uint8 = raw RGB                 -> a torch.int64 tensor (B, H, W) on the input's device
    Masks hold class ids 0..num_classes-1 (numpy: uint8) at the input's size.
    """

    def __init__(self, module: SemiSegModule, device: str | torch.device = "cpu", selected: bool = True):
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.selected = selected  # False: the checkpoint records no validation's choice of network

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        protocol: Mapping | None = None) -> Segmenter:
        """Load any sslseg checkpoint (every method, every stage of a staged run). `protocol`: keys of
        `dataset.eval` to change (e.g. {"flip": True}); the checkpoint's protocol otherwise. A missing or
        foreign file raises sslseg.errors.UserError with one line naming it."""
        module, selected = load_module(path)
        if protocol:
            module.cfg.dataset.eval = OmegaConf.merge(module.cfg.dataset.eval, dict(protocol))
        evaluated = module.evaluated_networks()
        if not selected and len(evaluated) > 1:
            warnings.warn(f"{path} records no validation's choice between {', '.join(evaluated)}; predicting with "
                          f"{module.best_network}", stacklevel=2)
        return cls(module, device, selected)

    # -- what the checkpoint says ------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.module.class_names)

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    @property
    def network_name(self) -> str:
        """The module attribute of the network used: model (the student), teacher, pseudo_net (PCT)."""
        return self.module.best_network

    @property
    def network(self) -> nn.Module:
        """The predicting Segmentor (backbone + decoder), in eval mode; `network(x).logits` are (B, K, H, W)."""
        net = self.module.inference_model()
        return net.network if isinstance(net, Teacher) else net

    @property
    def protocol(self) -> dict:
        """The evaluation protocol applied (the checkpoint's `dataset.eval`, with any changes)."""
        return OmegaConf.to_container(self.module.cfg.dataset.eval, resolve=True)

    @property
    def dataset_cfg(self):
        return self.module.cfg.dataset

    # -- prediction --------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, 3, H, W) -> the network's float input (on the segmenter's device)."""
        return self.module.normalize(images.to(self.device))

    @torch.inference_mode()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, K, H, W) of a normalised batch with the protocol: logits for a single whole-image
        pass, averaged probabilities or logits (`average`) when windows, scales or flips are averaged."""
        return self.module.scores(self.module.inference_model(), x.to(self.device))

    @torch.inference_mode()
    def _masks(self, x: torch.Tensor, raw: torch.Tensor | None) -> torch.Tensor:
        """argmax of the scores (of their DenseCRF refinement with `dataset.eval.crf`, which needs the raw image)."""
        scores = self.scores(x)
        if not self.module.cfg.dataset.eval.get("crf"):
            return scores.argmax(1)
        if raw is None:  # a normalised input: back to 0..255 for the CRF's colour term
            raw = (x * self.module.pixel_std.to(x.device) + self.module.pixel_mean.to(x.device)).round().clamp(0, 255)
        return self.module.labels(scores, {"image": raw.to(torch.uint8)})

    def __call__(self, images):
        if isinstance(images, torch.Tensor):
            return self._predict_tensor(images)
        if isinstance(images, (np.ndarray, Image.Image)):
            return self._predict_image(images)
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            return [self._predict_image(image) for image in images]
        raise TypeError(f"Segmenter takes a numpy image, a PIL image, a list of them or a tensor, got "
                        f"{type(images).__name__}")

    def _predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
            raise ValueError(f"a tensor input must be (B, 3, H, W) with H, W >= 1, got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return self._masks(self.normalize(images), images.to(self.device)).to(images.device)
        if not images.is_floating_point():
            raise ValueError(f"a tensor input must be float (normalised) or uint8 (raw RGB), got {images.dtype}")
        if not bool(torch.isfinite(images).all()):  # NaN would give an arbitrary mask, not an error
            raise ValueError("a tensor input holds NaN or infinite values")
        return self._masks(images.float(), None).to(images.device)

    def _predict_image(self, image) -> np.ndarray:
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray):
            raise TypeError(f"expected a numpy or PIL image, got {type(image).__name__}")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"a numpy image must be uint8 (H, W, 3) RGB with H, W >= 1, got {image.dtype} "
                             f"{image.shape}")
        raw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        mask = self._predict_tensor(raw)[0].cpu().numpy()
        return mask.astype(np.uint8 if self.num_classes <= 256 else np.int64)
