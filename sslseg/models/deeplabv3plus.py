"""DeepLabV3+ head as in UniMatch.

ASPP on c4 (1x1, three dilated 3x3, image pooling; no dropout) -> 1x1 project; upsample to c1;
`reduce` c1 to 48 channels; `fuse` = cat(reduce, aspp) (304-d for ResNet) -> two 3x3 convs (256-d);
`classifier` 1x1. Split into `fused_features` and `classify` so that a method can work on the
304-d fused feature between the two.

Options for Learning-Pseudo-Label's network (`lib/net/deeplabv3plus.py` and `lib/net/operators/ASPP.py`,
config `deeplabv3plus_lpl`); the defaults keep UniMatch's network and its state-dict keys:

- `aspp_dropout`: element-wise `nn.Dropout(p)` (not Dropout2d, as the reference) after the ASPP
  projection's BN-ReLU, appended to `aspp.project` (no parameters, so no new keys); 0 adds nothing.
- `low_level_kernel`: the kernel of `reduce` (c1 -> 48): 1 (UniMatch) or 3, padding 1 (the reference's
  `shortcut_conv`). Same keys, `reduce.0.weight` of shape (48, 256, k, k).

Differences from that reference kept here: the fused feature concatenates (reduce, aspp) where the
reference concatenates (aspp, shortcut), a permutation of `fuse`'s input channels that changes nothing
when training from scratch (a reference checkpoint would need `fuse.0.weight`'s input channels swapped);
its modules are named `shortcut_conv`, `aspp.branch1-5`, `aspp.conv_cat`, `cat_conv`, `cls_conv`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.errors import UserError
from sslseg.models.blocks import conv_bn_relu
from sslseg.models.segmentor import DecoderOutput


class ASPPPooling(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv_bn_relu(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, dilations=(6, 12, 18), dropout: float = 0.0):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout)] + [conv_bn_relu(cin, cout, 3, d) for d in dilations]
            + [ASPPPooling(cin, cout)]
        )
        self.project = conv_bn_relu(cout * (len(dilations) + 2), cout)
        if dropout:
            self.project.append(nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    in_features = (0, 3)  # layer1 (low-level, stride 4) and layer4

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, aspp_dilations=(6, 12, 18),
                 aspp_channels: int | None = None, low_level_channels: int = 48, decoder_channels: int = 256,
                 aspp_dropout: float = 0.0, low_level_kernel: int = 1):
        super().__init__()
        if not 0 <= aspp_dropout < 1:
            raise UserError(f"model.aspp_dropout must be in [0, 1), got {aspp_dropout}")
        if low_level_kernel not in (1, 3):
            raise UserError(f"model.low_level_kernel must be 1 or 3, got {low_level_kernel}")
        c1_channels, c4_channels = in_channels[0], in_channels[-1]
        aspp_channels = aspp_channels or c4_channels // 8
        self.aspp = ASPP(c4_channels, aspp_channels, tuple(aspp_dilations), aspp_dropout)
        self.reduce = conv_bn_relu(c1_channels, low_level_channels, low_level_kernel)
        self.fused_channels = low_level_channels + aspp_channels
        self.fuse = nn.Sequential(conv_bn_relu(self.fused_channels, decoder_channels, 3),
                                  conv_bn_relu(decoder_channels, decoder_channels, 3))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def fused_features(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """cat(reduce(c1), upsampled ASPP(c4)) at stride 4: the 304-d feature of the references."""
        aspp = self.aspp(c4)
        aspp = F.interpolate(aspp, size=c1.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([self.reduce(c1), aspp], dim=1)

    def classify(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at stride 4, the 256-d decoder feature)."""
        features = self.fuse(fused)
        return self.classifier(features), features

    def forward(self, c1: torch.Tensor, c4: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(*self.classify(self.fused_features(c1, c4)))
