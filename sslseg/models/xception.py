"""Xception-65 as UniMatch builds it: the backbone of every COCO number in the seed papers.

Entry: conv 3->32 (stride 2) + BN + ReLU, conv 32->64 + BN + ReLU; then 20 blocks of three separable
3x3 convs (block1 64->128 s2, block2 128->256 s2, block3 256->728 s2, blocks 4-19 728->728, block20
728->1024) and three separable convs 1024->1536->1536->2048. At output stride 16 block20 keeps
stride 1 and nothing is dilated; at OS8 block3 keeps stride 1 and blocks 4-20 and the exit convs use
dilation 2 (UniMatch's `stride_list` and `rate`). BatchNorm momentum 0.0003 everywhere, as in the
reference.

Stage outputs (what a decoder can read, `channels`): c1 = block2's second separable conv before its
strided third one (256 ch at stride 4, UniMatch's `block2.hook_layer`, not ReLU'd), c2 = block2's output
(256 ch, stride 8), c3 = block19's output (728 ch), c4 = conv5's output (2048 ch). DeepLabV3+ reads c1
and c4, like UniMatch.

State-dict keys are exactly those of the reference module (`conv1.weight`, `block4.sepconv2.depthwise.weight`,
`conv5.bn2.running_var`, ...; listed in tests/fixtures/xception65_keys.txt), so UniMatch's
`pretrained/xception.pth` loads through the strict loader of `pretrained.py`.

Differences from the reference code, both without effect on the computed function:
- The reference's blocks with an identity shortcut (blocks 4-19) start with an in-place ReLU that
  also rewrites the block input, so the shortcut adds relu(input), not the input (the pre-activation
  residual of the Xception paper). That is what UniMatch's numbers were trained with, and it is
  computed here explicitly instead of through the aliasing.
- c1 is returned from forward instead of being kept on the module (`hook_layer`), which holds a
  tensor between calls and breaks under torch.compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.0003  # the reference's bn_mom (PyTorch convention: weight of the new batch statistic)


class SeparableConv(nn.Module):
    """Depthwise 3x3 -> BN -> pointwise 1x1 -> BN. `relu_first`: one ReLU before the depthwise conv
    (the blocks); otherwise a ReLU after each BN (the exit convs)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, relu_first: bool = True,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, stride, dilation, dilation, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin, momentum=bn_momentum)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=bn_momentum)
        self.relu_first = relu_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_first:
            return self.bn2(self.pointwise(self.bn1(self.depthwise(F.relu(x)))))
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class Block(nn.Module):
    """Three separable convs (the stride on the third) plus a shortcut: a strided 1x1 conv + BN when the
    shape changes, otherwise relu(input) (see the module docstring)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, grow_first: bool = True,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        if cin != cout or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout, momentum=bn_momentum)
        else:
            self.skip = None
        mid = cout if grow_first else cin
        self.sepconv1 = SeparableConv(cin, mid, 1, dilation, bn_momentum=bn_momentum)
        self.sepconv2 = SeparableConv(mid, cout, 1, dilation, bn_momentum=bn_momentum)
        self.sepconv3 = SeparableConv(cout, cout, stride, dilation, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, the second separable conv's output: UniMatch's `hook_layer`)."""
        shortcut = F.relu(x) if self.skip is None else self.skipbn(self.skip(x))
        hook = self.sepconv2(self.sepconv1(x))
        return self.sepconv3(hook) + shortcut, hook


class Xception65(nn.Module):
    """UniMatch's Xception-65 backbone; forward returns (c1, c2, c3, c4), see the module docstring."""

    channels = (256, 256, 728, 2048)

    def __init__(self, output_stride: int = 16, bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"backbone.output_stride must be 8 or 16 for Xception-65, got {output_stride}")
        strides = {16: (2, 2, 1), 8: (2, 1, 1)}[output_stride]  # block2, block3, block20
        rate = 16 // output_stride
        bn = lambda c: nn.BatchNorm2d(c, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = bn(32)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False)
        self.bn2 = bn(64)
        self.block1 = Block(64, 128, 2, bn_momentum=bn_momentum)
        self.block2 = Block(128, 256, strides[0], bn_momentum=bn_momentum)
        self.block3 = Block(256, 728, strides[1], bn_momentum=bn_momentum)
        for i in range(4, 20):  # the middle flow: 16 identical blocks
            setattr(self, f"block{i}", Block(728, 728, 1, rate, bn_momentum=bn_momentum))
        self.block20 = Block(728, 1024, strides[2], rate, grow_first=False, bn_momentum=bn_momentum)
        self.conv3 = SeparableConv(1024, 1536, 1, rate, relu_first=False, bn_momentum=bn_momentum)
        self.conv4 = SeparableConv(1536, 1536, 1, rate, relu_first=False, bn_momentum=bn_momentum)
        self.conv5 = SeparableConv(1536, 2048, 1, rate, relu_first=False, bn_momentum=bn_momentum)

        for m in self.modules():  # the reference's N(0, sqrt(2 / (k*k*out))) is Kaiming fan-out
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x, _ = self.block1(x)
        c2, c1 = self.block2(x)
        x = c2
        for i in range(3, 20):
            x, _ = getattr(self, f"block{i}")(x)
        c3 = x
        x, _ = self.block20(x)
        c4 = self.conv5(self.conv4(self.conv3(x)))
        return c1, c2, c3, c4
