"""U2PL's DeepLabV3+ decoder as DDFP uses it (Gavinwxy/DDFP `model/model/decoder.py`).

ASPP on c4 (image pooling, 1x1, three dilated 3x3; concatenated in that order) -> `head` 3x3 conv + BN + ReLU +
Dropout2d(0.1) -> upsample to c1; `low_conv` 1x1 (with bias) on c1; fused = cat(low, aspp) (304-d for ResNet) ->
`classifier` block: two [3x3 conv (bias) + MixBatchNorm2d + ReLU + Dropout2d(0.1)] (256-d) -> `final` 1x1.

Differences from the released code, all deliberate:
* The mixed BN is a module holding two ordinary `BatchNorm2d` children (`main`, `aux`) instead of a SyncBatchNorm
  subclass with an `aux_bn`: `nn.SyncBatchNorm.convert_sync_batchnorm` (Lightning's `sync_batchnorm=True`) then
  converts both and keeps the routing, where converting a BN subclass would replace it by a plain SyncBatchNorm and
  drop the aux BN. Plain BatchNorm2d elsewhere for the same reason.
* The mode is set with `decoder.bn_mode(mode)` (a context manager) instead of `model.apply(to_<mode>_status)`.
* Widths follow `in_channels` and the config (ResNet: 256 -> 48 low-level, 2048 -> 256 ASPP, 256 classifier), so a
  tiny backbone works; the release hard-codes 256 for `low_conv`'s input and `head`'s output (= inner_planes).
* `forward` returns the classifier-block features for the whole batch and not detached; the release returns a
  detached copy of the first `batch_num` samples. The flow-guided perturbation (DDFP's `attack`) is the method's
  job, on `fused_features` and `classify`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.models.blocks import conv_bn_relu
from sslseg.models.segmentor import DecoderOutput

BN_MODES = ("clean", "adv", "warm_up", "mix")


class MixBatchNorm2d(nn.Module):
    """A main and an auxiliary BatchNorm2d; `mode` says which one normalises which part of the batch:
    `clean` all main, `adv` all aux, `warm_up` the first ⌊B/2⌋ main and the rest aux (labeled | unlabeled),
    `mix` the first ⌊B/3⌋·2 main and the rest aux (labeled | strong | perturbed). DDFP's MixSyncBatchNorm."""

    def __init__(self, num_features: int):
        super().__init__()
        self.main = nn.BatchNorm2d(num_features)
        self.aux = nn.BatchNorm2d(num_features)
        self.mode = "clean"

    def main_count(self, batch_size: int) -> int:
        """How many leading samples go through the main BN."""
        if self.mode == "clean":
            return batch_size
        if self.mode == "adv":
            return 0
        if self.mode == "warm_up":
            return batch_size // 2
        if self.mode == "mix":
            return batch_size // 3 * 2
        raise ValueError(f"unknown BN mode {self.mode!r}, expected one of {BN_MODES}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_main = self.main_count(x.shape[0])
        if n_main == x.shape[0]:
            return self.main(x)
        if n_main == 0:
            return self.aux(x)
        return torch.cat([self.main(x[:n_main]), self.aux(x[n_main:])])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class U2PLASPP(nn.Module):
    """Five branches of `channels` each, concatenated as image pooling, 1x1, then the dilated 3x3s."""

    def __init__(self, cin: int, channels: int, dilations=(6, 12, 18)):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, channels))
        self.convs = nn.ModuleList([conv_bn_relu(cin, channels)]
                                   + [conv_bn_relu(cin, channels, 3, d) for d in dilations])
        self.out_channels = channels * (len(dilations) + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([pooled, *(conv(x) for conv in self.convs)], dim=1)


def _classifier_stage(cin: int, cout: int, dropout: float) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=True), MixBatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout)]


class U2PLDeepLabV3Plus(nn.Module):
    in_features = (0, 3)  # layer1 (low-level, stride 4) and layer4

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, aspp_dilations=(6, 12, 18),
                 aspp_channels: int | None = None, low_level_channels: int = 48, decoder_channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        c1_channels, c4_channels = in_channels[0], in_channels[-1]
        aspp_channels = aspp_channels or c4_channels // 8
        self.aspp = U2PLASPP(c4_channels, aspp_channels, tuple(aspp_dilations))
        self.head = nn.Sequential(*conv_bn_relu(self.aspp.out_channels, aspp_channels, 3), nn.Dropout2d(dropout))
        self.low_conv = conv_bn_relu(c1_channels, low_level_channels, bias=True)
        self.fused_channels = low_level_channels + aspp_channels
        self.feature_channels = decoder_channels
        self.classifier = nn.Sequential(*_classifier_stage(self.fused_channels, decoder_channels, dropout),
                                        *_classifier_stage(decoder_channels, decoder_channels, dropout))
        self.final = nn.Conv2d(decoder_channels, num_classes, 1, bias=True)

    def fused_features(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """cat(low_conv(c1), head(ASPP(c4)) upsampled to c1) at stride 4: the 304-d feature DDFP perturbs."""
        aspp = self.head(self.aspp(c4))
        aspp = F.interpolate(aspp, size=c1.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([self.low_conv(c1), aspp], dim=1)

    def classify(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at stride 4, the 256-d classifier-block output that DDFP's flow models). The classifier
        block's BNs route by the current `bn_mode`."""
        features = self.classifier(fused)
        return self.final(features), features

    def forward(self, c1: torch.Tensor, c4: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(*self.classify(self.fused_features(c1, c4)))

    def mix_norms(self) -> list[MixBatchNorm2d]:
        return [m for m in self.classifier.modules() if isinstance(m, MixBatchNorm2d)]

    @contextmanager
    def bn_mode(self, mode: str) -> Iterator[None]:
        """Route the classifier block's BNs by `mode` ("clean", "adv", "warm_up", "mix") inside the block, then
        restore the previous mode (the default is "clean")."""
        if mode not in BN_MODES:
            raise ValueError(f"unknown BN mode {mode!r}, expected one of {BN_MODES}")
        norms = self.mix_norms()
        previous = [norm.mode for norm in norms]
        for norm in norms:
            norm.mode = mode
        try:
            yield
        finally:
            for norm, old in zip(norms, previous):
                norm.mode = old
