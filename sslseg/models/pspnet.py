"""PSPNet head as in DARS (semseg's `model/pspnet.py`), on layer3 and layer4.

Pyramid pooling on c4: for each bin b in (1, 2, 3, 6), AdaptiveAvgPool(b) -> 1x1 conv (no bias) -> BN ->
ReLU, upsampled bilinearly (align_corners=True) to c4's size; concatenated with c4 (2 x 2048 for
ResNet-50) -> 3x3 conv 512 (no bias) -> BN -> ReLU, the decoder feature -> Dropout2d(0.1) -> 1x1 conv to
K classes (bias). Auxiliary head on c3 (training only): 3x3 conv 256 (no bias) -> BN -> ReLU ->
Dropout2d(0.1) -> 1x1 conv to K. Widths default to semseg's ratios of the backbone's channels
(pooled branches c4 / len(bins), head c4 / 4, aux head c3 / 4), so a narrow backbone gets a narrow head.

Use it with `backbone=resnet50_psp` (deep-stem ResNet-50 at output stride 8, every layer3/layer4 block
dilated) and `model=pspnet`; the method's supervised loss adds `model.aux_weight` (0.4) x the aux loss.

Deliberate differences from the released code:

- semseg upsamples the logits to ((H-1)/8*8+1, (W-1)/8*8+1) and asserts (H-1) % 8 == 0; the segmentor
  upsamples to (H, W) with the same bilinear align_corners=True interpolation. For the crops DARS uses
  (321, 361, 713: (crop-1) % 8 == 0) both are the same size, hence the same output; other sizes are
  accepted here instead of failing.
- The aux head runs in training mode only (`aux=None` in eval); the release computes it in eval too
  and discards it.
- The release's apex SyncBN is `trainer.sync_batchnorm` here (on with `trainer=ddp`); the module builds
  plain BatchNorm2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.models.blocks import conv_bn_relu
from sslseg.models.segmentor import DecoderOutput


class PyramidPooling(nn.Module):
    """cat(x, one pooled-and-upsampled branch per bin): in_channels + len(bins) x channels."""

    def __init__(self, in_channels: int, channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, channels, 1))
                                    for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=True) for stage in self.stages]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(nn.Module):
    in_features = (2, 3)  # layer3 (aux head) and layer4, both at the output stride

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, bins=(1, 2, 3, 6),
                 ppm_channels: int | None = None, head_channels: int | None = None, aux_channels: int | None = None,
                 dropout: float = 0.1, aux_weight: float = 0.4):
        super().__init__()
        c3_channels, c4_channels = in_channels[2], in_channels[3]
        bins = tuple(bins)
        ppm_channels = ppm_channels or c4_channels // len(bins)
        head_channels = head_channels or c4_channels // 4
        aux_channels = aux_channels or c3_channels // 4
        self.ppm = PyramidPooling(c4_channels, ppm_channels, bins)
        self.bottleneck = conv_bn_relu(c4_channels + len(bins) * ppm_channels, head_channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(head_channels, num_classes, 1))
        self.aux_head = nn.Sequential(conv_bn_relu(c3_channels, aux_channels, 3), nn.Dropout2d(dropout),
                                      nn.Conv2d(aux_channels, num_classes, 1))
        # The loss weight is read by the method from `model.aux_weight`; it is a constructor argument only
        # because the segmentor builder passes every model-config key here.
        self.aux_weight = aux_weight

    def forward(self, c3: torch.Tensor, c4: torch.Tensor) -> DecoderOutput:
        features = self.bottleneck(self.ppm(c4))
        aux = self.aux_head(c3) if self.training else None
        return DecoderOutput(self.classifier(features), features, aux)
