"""DPT head as UniMatch V2 builds it (Ranftl et al., "Vision Transformers for Dense Prediction", 2021; the
UniMatch-V2 release's `model/semseg/dpt.py` and `model/util/blocks.py`, no BatchNorm).

Reassemble: each of the four ViT features (B, C, H/14, W/14) -> 1x1 conv to its projection width -> resampled to
strides 3.5, 7, 14, 28 (a 4x4 stride-4 transposed conv, a 2x2 stride-2 transposed conv, identity, a 3x3 stride-2
conv) -> a 3x3 conv without bias to the head width `features`.

Fusion, deepest first: the block on the stride-28 map refines it (a residual conv unit) and upsamples it to the
next map's size; each of the next three adds a residual conv unit of its skip map, refines the sum and upsamples
(to the next map's size, the last one 2x). Residual conv unit: x + conv(relu(conv(relu(x)))), 3x3 convs with bias;
each block ends with a 1x1 conv; upsampling is bilinear with align_corners=True.

Output: 3x3 conv + ReLU (`head`, the feature a method sees) and a 1x1 `classifier` at 8/14 of the input
resolution; the segmentor upsamples the logits to the input (bilinear, align_corners=True, as the release).

Sizes per encoder (the release's configs): S features 64, projections [48, 96, 192, 384]; B 128,
[96, 192, 384, 768]; L 256, [256, 512, 1024, 1024]; G 384, [1536] x 4. `features`/`projections` null picks them
from the encoder width; other widths (the tiny ViT) name them.

Difference from the release: the deepest fusion block has no skip input, and the release still builds its skip
unit (`refinenet4.resConfUnit1`), which never runs and never gets a gradient; it is not built here (an unused
parameter stops DDP, and the output is the same). UniMatch V2's logged parameter counts include it (ViT-S + DPT:
24.8M, of which the unit is 0.07M). Module names are this file's own (`project`, `resample`, `reduce`, `fusion`,
`head`, `classifier`), not the release's `projects`, `resize_layers`, `scratch.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.errors import UserError
from sslseg.models.segmentor import DecoderOutput

# Encoder width -> (head width, projection widths): UniMatch V2's configs for DINOv2 S, B, L, G.
UNIMATCH_V2_SIZES = {
    384: (64, (48, 96, 192, 384)),
    768: (128, (96, 192, 384, 768)),
    1024: (256, (256, 512, 1024, 1024)),
    1536: (384, (1536, 1536, 1536, 1536)),
}


def _upsample(x: torch.Tensor, size=None) -> torch.Tensor:
    if size is None:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))): the ReLUs are not in place, the shortcut adds the unactivated x."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """(x [+ skip_unit(skip)]) -> unit -> upsample (to `size`, else 2x) -> 1x1 conv."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        self.skip_unit = ResidualConvUnit(features) if has_skip else None
        self.unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        return self.out_conv(_upsample(self.unit(x), size))


class DPT(nn.Module):
    in_features = (0, 1, 2, 3)  # the four intermediate ViT features

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, features: int | None = None,
                 projections: tuple[int, ...] | None = None):
        super().__init__()
        width = in_channels[0]
        if features is None or projections is None:
            if width not in UNIMATCH_V2_SIZES:
                raise UserError(f"model.features and model.projections: UniMatch V2 sizes a DPT head for encoder "
                                f"widths {sorted(UNIMATCH_V2_SIZES)}, this encoder's is {width}; set both "
                                f"(conf/model/dpt_tiny.yaml does for vit_tiny)")
            default_features, default_projections = UNIMATCH_V2_SIZES[width]
            features = features or default_features
            projections = projections or default_projections
        projections = tuple(projections)
        if len(projections) != 4:
            raise UserError(f"model.projections must list 4 widths, got {list(projections)}")
        self.feature_channels = features
        self.project = nn.ModuleList(nn.Conv2d(c_in, c, 1) for c_in, c in zip(in_channels, projections))
        self.resample = nn.ModuleList([  # stride 14 -> 3.5, 7, 14, 28
            nn.ConvTranspose2d(projections[0], projections[0], 4, stride=4),
            nn.ConvTranspose2d(projections[1], projections[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(projections[3], projections[3], 3, stride=2, padding=1),
        ])
        self.reduce = nn.ModuleList(nn.Conv2d(c, features, 3, padding=1, bias=False) for c in projections)
        # fusion[k] fuses at level k (0: stride 3.5 ... 3: stride 28); the deepest has no skip input.
        self.fusion = nn.ModuleList(FusionBlock(features, has_skip=k < 3) for k in range(4))
        self.head = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(features, num_classes, 1)

    def forward(self, *feats: torch.Tensor) -> DecoderOutput:
        levels = [reduce(resample(project(f)))
                  for f, project, resample, reduce in zip(feats, self.project, self.resample, self.reduce)]
        path = self.fusion[3](levels[3], size=levels[2].shape[-2:])
        path = self.fusion[2](path, levels[2], size=levels[1].shape[-2:])
        path = self.fusion[1](path, levels[1], size=levels[0].shape[-2:])
        path = self.fusion[0](path, levels[0])  # 2x: stride 1.75
        features = self.head(path)
        return DecoderOutput(self.classifier(features), features)
