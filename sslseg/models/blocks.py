"""Building blocks shared by the decoders."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv -> BatchNorm2d -> in-place ReLU as the children `0`, `1`, `2` of a Sequential, the names the decoders'
    state-dict keys use. The padding keeps the size for an odd kernel at any dilation. To put the three into a longer
    Sequential, unpack it: `nn.Sequential(pool, *conv_bn_relu(...))` (keys `1.*`, `2.*` there)."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
