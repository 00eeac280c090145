"""Deep-stem ResNet ("ResNet-v1s", specs §2.1), the backbone of UniMatch, DAW and DDFP.

Stem 3->64->64->128 (three 3x3 convs) instead of torchvision's 7x7, then torchvision Bottleneck
stages (stride on the 3x3 conv). State-dict keys are exactly those of the seed methods'
resnet{50,101}.pth (`conv1.0.weight` ... `layer4.2.bn3.*`). `stem="torchvision"` builds the 7x7
stem instead, which loads torchvision-style ImageNet weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck


class DeepStemResNet(nn.Module):
    def __init__(self, layers=(3, 4, 23, 3), stem_width: int = 64, base_width: int = 64,
                 output_stride: int = 16, stem: str = "deep"):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride must be 8, 16 or 32, got {output_stride}")
        if stem == "deep":
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, stem_width, 3, 2, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, 2 * stem_width, 3, 1, 1, bias=False),
            )
            self.inplanes = 2 * stem_width
        elif stem == "torchvision":
            self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
            self.inplanes = stem_width
        else:
            raise ValueError(f"backbone.stem must be 'deep' or 'torchvision', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.dilation = 1
        # OS16 dilates layer4, OS8 layer3 and layer4 (replace_stride_with_dilation).
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        widths = [base_width, base_width * 2, base_width * 4, base_width * 8]
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2, dilate=dilate[2])
        self.channels = (widths[0] * 4, widths[1] * 4, widths[2] * 4, widths[3] * 4)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        # First block at the previous dilation, the rest at the new one (torchvision convention).
        blocks_ = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        blocks_ += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c1, c2, c3, c4): layer1 at stride 4 ... layer4 at the output stride."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4
