"""DeepLabV2 classifier as in DARS (AdvSemiSeg's `model/deeplab.py`, vendored as `model/deeplabv2.py`
in DARS), on layer4.

The logits are the sum of 3x3 convs c4 -> K classes with dilations (6, 12, 18, 24), padding = dilation,
with bias; weights ~ N(0, 0.01), biases PyTorch's default init (the release does the same). `features` is
the layer4 feature the classifier reads. No aux head (DARS: `aux_weight: 0.0`).

The backbone is `backbone=resnet101_deeplabv2`: a ResNet-101 with the 7x7 stem and a ceil-mode maxpool,
Caffe-style bottlenecks (stride on the first 1x1 conv), every layer3 block at dilation 2 and every
layer4 block at 4 (output stride 8), all BatchNorm affine parameters frozen. Its keys are torchvision's,
so torchvision's `resnet101-5d3b4d8f.pth` (the file DARS loads) loads strictly.

Deliberate differences from the released code:

- `branches`: the release's classifier returns inside its loop after adding the second branch, so only
  the dilation-6 and dilation-12 convs are summed (inherited from AdvSemiSeg). The DARS recipe
  (conf/recipe/dars_cityscapes_deeplabv2.yaml) is that published model, `branches: 2`; the model config's
  default sums all four (`branches: 4`), as the paper describes DeepLabV2. With 2, only the two used convs are
  built: the release also builds the dilation-18/24 convs, which never get a gradient and do not change the
  output, and unused parameters would stop DDP.
- Learning rates: the release hard-codes `index_split = 5` for its six backbone groups (conv1, bn1,
  layer1-4), so layer4 trains at 10x lr with the classifier. The recipe does the same
  (`optim.lr_mult: {backbone.layer4: 10.0}`), from the first iteration: the release's first iteration runs
  every group at its initial lr (layer4 at 1x) until its first poly update. Frozen BN parameters are left out.
- The release builds plain BatchNorm2d (per-GPU statistics); sslseg's `trainer=ddp` converts BN to
  SyncBN, so set `trainer.sync_batchnorm=false` to match it.
- With `pretrained: null` the backbone starts from DeepStemResNet's Kaiming init; the release draws
  every conv from N(0, 0.01) before loading the ImageNet weights over them.

Quirk kept, not fixed: torchvision's ImageNet weights were trained with the stride on the 3x3 conv, and
the release (so this backbone) runs them with the stride on the 1x1 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.models.segmentor import DecoderOutput


class DeepLabV2(nn.Module):
    in_features = (3,)  # layer4 only

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, dilations=(6, 12, 18, 24), branches: int = 4):
        super().__init__()
        dilations = tuple(dilations)
        if not 1 <= branches <= len(dilations):
            raise ValueError(f"model.branches must be between 1 and {len(dilations)}, got {branches}")
        c4_channels = in_channels[-1]
        self.branches = nn.ModuleList(nn.Conv2d(c4_channels, num_classes, 3, padding=d, dilation=d)
                                      for d in dilations[:branches])
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, c4: torch.Tensor) -> DecoderOutput:
        logits = sum(branch(c4) for branch in self.branches)
        return DecoderOutput(logits, c4)
