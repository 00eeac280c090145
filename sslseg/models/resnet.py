"""Deep-stem ResNet ("ResNet-v1s"), the backbone of UniMatch, DAW and DDFP, and its variants.

Stem 3->64->64->128 (three 3x3 convs) instead of torchvision's 7x7, then torchvision Bottleneck
stages (stride on the 3x3 conv). State-dict keys are exactly those of the seed methods'
resnet{50,101}.pth (`conv1.0.weight` ... `layer4.2.bn3.*`). `stem="torchvision"` builds the 7x7
stem instead, which loads torchvision-style ImageNet weights.

Options for the other references' backbones (every default keeps the network above unchanged):

- `dilate_all_blocks`: how a dilated stage (output stride 8 or 16) is built. False (torchvision's
  `replace_stride_with_dilation`): the first block of a dilated stage keeps the previous stage's
  dilation, so at OS8 layer3.0 runs at dilation 1 and layer4.0 at 2. True (semseg's PSPNet, AdvSemiSeg's
  DeepLabV2): every block of layer3 runs at dilation 2 and every block of layer4 at 4.
- `maxpool_ceil_mode`: the stem's MaxPool2d(3, 2, 1) with ceil_mode=True (AdvSemiSeg, U2PL, DDFP).
- `stride_in_1x1`: Caffe-style bottleneck, the stride of a block sits on its first 1x1 conv instead of
  the 3x3 (AdvSemiSeg's DeepLabV2). Same parameters and keys, different network.
- `freeze_bn_affine`: every BatchNorm's weight and bias get requires_grad=False (DeepLabV2); the
  running statistics still update in train mode.
- `weights_format`: how the pretrained file names the keys (`native`: the module's own names; `semseg`:
  semseg's resnet50_v2.pth, stem `conv1, bn1, conv2, bn2, conv3, bn3`); read by
  `sslseg.models.pretrained.load_backbone_weights`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from sslseg.models.pretrained import KEY_FORMATS


class DeepStemResNet(nn.Module):
    def __init__(self, layers=(3, 4, 23, 3), stem_width: int = 64, base_width: int = 64,
                 output_stride: int = 16, stem: str = "deep", dilate_all_blocks: bool = False,
                 maxpool_ceil_mode: bool = False, stride_in_1x1: bool = False, freeze_bn_affine: bool = False,
                 weights_format: str = "native"):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride must be 8, 16 or 32, got {output_stride}")
        if weights_format not in KEY_FORMATS:
            raise ValueError(f"backbone.weights_format must be one of {sorted(KEY_FORMATS)}, got {weights_format!r}")
        self.weights_format = weights_format
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
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=maxpool_ceil_mode)
        self.dilation = 1
        self.dilate_all_blocks = dilate_all_blocks
        self.stride_in_1x1 = stride_in_1x1
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
                m.requires_grad_(not freeze_bn_affine)

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
        # torchvision convention: the first block at the previous dilation, the rest at the new one.
        first_dilation = self.dilation if self.dilate_all_blocks else previous_dilation
        first = Bottleneck(self.inplanes, planes, stride, downsample, dilation=first_dilation)
        if self.stride_in_1x1 and stride != 1:
            # Move the stride from the 3x3 conv to the 1x1 before it: the conv modules read their stride
            # at call time, so this changes the computation without changing parameters or keys.
            first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
        self.inplanes = planes * Bottleneck.expansion
        blocks_ = [first] + [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c1, c2, c3, c4): layer1 at stride 4 ... layer4 at the output stride."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4
