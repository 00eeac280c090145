"""DDFP's model pieces: the GLOW flow + Gaussian-mixture prior (sslseg/models/flow.py) and U2PL's DeepLabV3+
decoder with mixed BN (sslseg/models/u2pl_deeplabv3plus.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sslseg.models import build_segmentor
from sslseg.models.flow import (
    UNLABELED,
    AffineCoupling,
    FeatureDensity,
    FixedPermutation,
    GaussianMixturePrior,
    GlowFlow,
    soft_clamp,
)
from sslseg.models.u2pl_deeplabv3plus import MixBatchNorm2d, U2PLDeepLabV3Plus
from tests.conftest import compose_cfg

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------------------------
# Flow


def test_soft_clamp_is_bounded_and_linear_near_zero():
    s_raw = torch.tensor([-1e8, -50.0, -1.0, 0.0, 1.0, 50.0, 1e8], dtype=torch.float64)
    s = soft_clamp(s_raw, clamp=2.0)
    bound = 2.0 * 0.636 * math.pi / 2  # 1.998: FrEIA's ATAN clamp never exceeds ±clamp·0.636·π/2
    assert s.abs().max() <= bound
    assert s[0].item() == pytest.approx(-bound, abs=1e-7) and s[-1].item() == pytest.approx(bound, abs=1e-7)
    assert torch.all(s[1:] > s[:-1])  # monotone, so the coupling stays invertible
    # Near 0, s ≈ clamp·0.636·s_raw (slope 1.272 for clamp 2: FrEIA's form has no /clamp inside the atan).
    small = torch.tensor([-1e-4, 1e-4], dtype=torch.float64)
    torch.testing.assert_close(soft_clamp(small, 2.0), 1.272 * small, rtol=1e-7, atol=0)
    assert soft_clamp(torch.tensor(1.0), 2.0).item() == pytest.approx(1.272 * math.pi / 4, rel=1e-6)


def _scaled(module: nn.Module, std: float) -> nn.Module:
    """Larger weights than the 0.05 init, so that the flow is far from the identity and the clamp bites."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn_like(p))
    return module.double()


def test_coupling_and_flow_are_invertible():
    torch.manual_seed(0)
    x = 2 * torch.randn(5, 6, dtype=torch.float64)
    for module in (_scaled(AffineCoupling(6, hidden=16), 0.4), _scaled(GlowFlow(6, n_blocks=3, hidden=16), 0.4)):
        z, logdet = module(x)
        assert (z - x).abs().max() > 0.5 and logdet.abs().min() > 0.1  # a non-trivial map
        torch.testing.assert_close(module.inverse(z), x, rtol=0, atol=1e-10)
    # At the default size and init, in float32.
    flow = GlowFlow(dim=256)
    x = torch.randn(64, 256)
    torch.testing.assert_close(flow.inverse(flow(x)[0]), x, rtol=0, atol=1e-5)


def test_logdet_equals_the_autograd_jacobian():
    torch.manual_seed(0)
    x = 2 * torch.randn(4, 6, dtype=torch.float64)
    for module in (_scaled(AffineCoupling(6, hidden=16), 0.7), _scaled(GlowFlow(6, n_blocks=2, hidden=16), 0.7)):
        _, logdet = module(x)
        for i in range(len(x)):
            jac = torch.autograd.functional.jacobian(lambda v, m=module: m(v.unsqueeze(0))[0].squeeze(0), x[i])
            _, expected = torch.linalg.slogdet(jac)  # log|det|: a permutation's sign does not matter
            assert logdet[i].item() == pytest.approx(expected.item(), abs=1e-9)


def test_coupling_by_hand():
    """All subnet weights zero, biases chosen: s2 = soft_clamp(b), t2 = c on the first half, the second half
    untouched; log|det J| = (D/2)·s2. Checks the [s, t] order of the subnet output and which half is which."""
    block = AffineCoupling(4, hidden=3, clamp=2.0).double()
    b, c = 0.8, -1.5
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.subnet2[-1].bias.copy_(torch.tensor([b, b, c, c]))
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0]], dtype=torch.float64)
    s = 2.0 * 0.636 * math.atan(b)
    y, logdet = block(x)
    torch.testing.assert_close(y, torch.tensor([[math.exp(s) * 1.0 + c, math.exp(s) * -2.0 + c, 3.0, 4.0]],
                                                dtype=torch.float64))
    assert logdet.item() == pytest.approx(2 * s)


def test_flow_matches_freia_on_fixed_weights():
    """FrEIA 0.2 (PyPI) ReversibleGraphNet of 2 × [GLOWCouplingBlock(clamp 2), PermuteRandom(seed=k)], D = 6,
    subnets 3 -> 8 -> 8 -> 6, its i-th trainable parameter set to 0.8·sin(0.7·arange(numel) + i): the values
    below were computed with FrEIA itself (float64)."""
    flow = GlowFlow(dim=6, n_blocks=2, hidden=8, clamp=2.0).double()
    with torch.no_grad():
        for i, p in enumerate(flow.parameters()):
            p.copy_(0.8 * torch.sin(0.7 * torch.arange(p.numel(), dtype=torch.float64) + i).reshape(p.shape))
    x = 2 * torch.cos(1.3 * torch.arange(18.0, dtype=torch.float64)).reshape(3, 6)
    z, logdet = flow(x)
    freia_z = torch.tensor([[8.824791477437, 2.857548006961, 4.313389926283, 3.765348004782, 3.197732456138,
                             9.821795573345],
                            [8.467007882641, 3.276319248168, 4.323061616784, 3.308317926087, 3.291936730972,
                             10.620132366516],
                            [9.582502079994, 4.327722106721, 4.07220839374, 2.795011281227, 3.281957774285,
                             8.835831390141]], dtype=torch.float64)
    freia_logdet = torch.tensor([-8.758528739851, -9.659345289067, -11.41564322283], dtype=torch.float64)
    torch.testing.assert_close(z, freia_z, rtol=0, atol=1e-9)
    torch.testing.assert_close(logdet, freia_logdet, rtol=0, atol=1e-9)


def _same_numpy_state(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def test_permutations_are_numpys_seeded_ones_and_leave_the_global_rng_alone():
    np.random.seed(1234)
    before = np.random.get_state()
    flow = GlowFlow(dim=256, n_blocks=3, hidden=4)
    assert _same_numpy_state(np.random.get_state(), before)
    try:
        for k, permutation in enumerate(flow.permutations):
            np.random.seed(k)  # what FrEIA's PermuteRandom(seed=k) does
            assert permutation.perm.tolist() == np.random.permutation(256).tolist()
    finally:
        np.random.set_state(before)
    assert flow.permutations[0].perm.tolist() != flow.permutations[1].perm.tolist()
    # Semantics: y[:, i] = x[:, perm[i]], and the inverse undoes it.
    perm = FixedPermutation(5, seed=0)
    x = torch.arange(10.0).reshape(2, 5)
    expected = [[x[r, perm.perm[i]].item() for i in range(5)] for r in range(2)]
    assert perm(x).tolist() == expected
    assert torch.equal(perm.inverse(perm(x)), x)


def test_parameters_start_as_scaled_normals():
    """0.05·N(0, 1) for every weight and bias; PyTorch's default Linear init is uniform (|w| ≤ 1/sqrt(fan_in)
    = 0.088 here) with nearly the same std, so the tails tell them apart."""
    torch.manual_seed(0)
    density = FeatureDensity(num_classes=21)
    flat = torch.cat([p.flatten() for p in density.flow.parameters()])
    assert flat.numel() > 500_000
    assert flat.mean().item() == pytest.approx(0, abs=1e-3) and flat.std().item() == pytest.approx(0.05, rel=0.01)
    assert (flat.abs() > 0.1).float().mean().item() == pytest.approx(0.0455, abs=0.003)  # P(|N(0,1)| > 2)
    for p in density.flow.parameters():  # biases too
        assert p.std().item() == pytest.approx(0.05, rel=0.25)
    means = density.prior.means
    assert means.shape == (21, 256) and means.requires_grad and means.std().item() == pytest.approx(1, rel=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Prior and NLL


def _prior_2d() -> GaussianMixturePrior:
    prior = GaussianMixturePrior(num_classes=2, dim=2).double()
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    return prior


def _mixture(d0: float, d1: float) -> float:
    """log(½ N0 + ½ N1) in D = 2 with squared distances d0, d1."""
    return math.log(0.5 * math.exp(-LOG_2PI - d0 / 2) + 0.5 * math.exp(-LOG_2PI - d1 / 2))


def test_log_densities_by_hand():
    prior = _prior_2d()
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    # squared distances to the means (0,0) and (3,0): z0: 2 and 5; z1: 4 and 1
    torch.testing.assert_close(prior.component_log_probs(z), torch.tensor(
        [[-LOG_2PI - 1.0, -LOG_2PI - 2.5], [-LOG_2PI - 2.0, -LOG_2PI - 0.5]], dtype=torch.float64))
    mixture = torch.tensor([_mixture(2, 5), _mixture(4, 1)], dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), mixture)
    torch.testing.assert_close(prior.log_prob(z, torch.tensor([UNLABELED, UNLABELED])), mixture)
    # class-conditional: log N(z; μ_y, I), no log(1/K)
    torch.testing.assert_close(prior.log_prob(z, torch.tensor([1, 0])),
                               torch.tensor([-LOG_2PI - 2.5, -LOG_2PI - 2.0], dtype=torch.float64))
    torch.testing.assert_close(prior.log_prob(z, torch.tensor([0, UNLABELED])),
                               torch.tensor([-LOG_2PI - 1.0, _mixture(4, 1)], dtype=torch.float64))


def test_nll_by_hand_with_a_permutation_only_flow():
    """Zero subnet parameters make each coupling the identity (s = t = 0, log|det J| = 0); with both coordinates
    of x equal, the permutations do not matter either, so the NLL is the prior's alone."""
    density = FeatureDensity(num_classes=2, dim=2, hidden=3).double()
    with torch.no_grad():
        for p in density.flow.parameters():
            p.zero_()
        density.prior.means.copy_(torch.tensor([[0.0, 0.0], [3.0, 3.0]]))
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)  # squared distances: 2, 8 and 8, 2
    labels = torch.tensor([1, UNLABELED])
    expected = -((-LOG_2PI - 4.0) + _mixture(8, 2)) / 2
    assert density.nll(x, labels).item() == pytest.approx(expected, rel=1e-12)
    assert density.nll(x).item() == pytest.approx(-(_mixture(2, 8) + _mixture(8, 2)) / 2, rel=1e-12)


def test_nll_gradient_reaches_the_flow_and_every_mean():
    torch.manual_seed(0)
    density = FeatureDensity(num_classes=3, dim=8, hidden=16)
    x = torch.randn(32, 8)
    labels = torch.tensor([0, 1, UNLABELED, 2] * 8)
    for lab in (labels, None):
        density.zero_grad()
        density.nll(x, lab).backward()
        for name, p in density.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert (density.prior.means.grad.abs().sum(1) > 0).all()  # every class mean moves


def test_prior_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    prior = GaussianMixturePrior(num_classes=4, dim=16)
    z = (5 * torch.randn(8, 16)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = prior.log_prob(z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, prior.log_prob(z.float()))


# ---------------------------------------------------------------------------------------------------------------
# Decoder


RESNET_CHANNELS = (256, 512, 1024, 2048)


def test_resnet_layout_shapes_and_parameter_count():
    torch.manual_seed(0)
    decoder = U2PLDeepLabV3Plus(RESNET_CHANNELS, num_classes=21).eval()
    # Instantiating the released `dec_deeplabv3_plus(2048, 21, inner_planes=256, dilations=[6, 12, 18])` gives
    # 19,467,173 parameters; by hand: ASPP 15,206,912 + head 2,949,632 + low_conv 12,432 + classifier 701,696
    # + 591,104 (each mixed BN holds two affine pairs) + final 5,397.
    assert sum(p.numel() for p in decoder.parameters()) == 19_467_173
    c1, c4 = torch.randn(2, 256, 9, 9), torch.randn(2, 2048, 3, 3)
    fused = decoder.fused_features(c1, c4)
    assert fused.shape == (2, 304, 9, 9)
    torch.testing.assert_close(fused[:, :48], decoder.low_conv(c1))  # cat[low-level 48, ASPP 256]
    # ASPP branches in U2PL's order: image pooling first (constant over the map), then 1x1 and dilated 3x3s
    branches = decoder.aspp(c4).split(256, dim=1)
    assert len(branches) == 5 and torch.equal(branches[0], branches[0][..., :1, :1].expand_as(branches[0]))
    assert not any(torch.equal(b, b[..., :1, :1].expand_as(b)) for b in branches[1:])
    out = decoder(c1, c4)
    assert out.logits.shape == (2, 21, 9, 9) and out.features.shape == (2, 256, 9, 9) and out.aux is None


def _tiny_segmentor():
    cfg = compose_cfg(["model=u2pl_deeplabv3plus_tiny"])
    return build_segmentor(cfg.backbone, cfg.model, num_classes=6, load_pretrained=False)


def test_tiny_config_builds_and_classify_composes_to_forward():
    torch.manual_seed(0)
    net = _tiny_segmentor().eval()
    assert isinstance(net.decoder, U2PLDeepLabV3Plus)
    x = torch.randn(2, 3, 32, 32)
    c1, c4 = net.encode(x)
    fused = net.decoder.fused_features(c1, c4)
    assert fused.shape == (2, 16 + 64, 8, 8)  # low-level 16 + ASPP 512/8, at stride 4
    logits, features = net.decoder.classify(fused)
    assert features.shape == (2, 64, 8, 8)
    out = net(x)
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.logits, nn.functional.interpolate(logits, size=(32, 32), mode="bilinear",
                                                                     align_corners=True))


def _two_level_batch(batch: int, n_first: int, channels: int = 3) -> torch.Tensor:
    """The first n_first samples have per-channel mean exactly +5, the rest exactly -3 (unit-ish spread)."""
    torch.manual_seed(0)
    x = torch.randn(batch, channels, 4, 4)
    parts = [x[:n_first], x[n_first:]]
    centred = [p - p.mean(dim=(0, 2, 3), keepdim=True) for p in parts if len(p)]
    x = torch.cat(centred)
    x[:n_first] += 5
    x[n_first:] -= 3
    return x


@pytest.mark.parametrize("mode,batch,n_main", [
    ("clean", 6, 6), ("adv", 6, 0),
    ("warm_up", 6, 3), ("warm_up", 7, 3),
    ("mix", 6, 4), ("mix", 7, 4), ("mix", 5, 2), ("mix", 9, 6),
])
def test_mixed_bn_normalises_each_part_with_its_own_bn(mode, batch, n_main):
    bn = MixBatchNorm2d(3).train()
    bn.mode = mode
    x = _two_level_batch(batch, n_main)
    y = bn(x)
    # momentum 0.1 from zero: the running mean moves to 0.1 × the mean of the part that BN saw, or stays at 0
    main_expected = 0.5 if n_main else 0.0
    aux_expected = -0.3 if n_main < batch else 0.0
    torch.testing.assert_close(bn.main.running_mean, torch.full((3,), main_expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.aux.running_mean, torch.full((3,), aux_expected), atol=1e-5, rtol=0)
    assert bn.main.num_batches_tracked.item() == int(n_main > 0)
    assert bn.aux.num_batches_tracked.item() == int(n_main < batch)
    # each part is normalised by its own batch statistics: zero mean within each part
    for part in (y[:n_main], y[n_main:]):
        if len(part):
            torch.testing.assert_close(part.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_mixed_bn_in_eval_mode_uses_each_bns_running_statistics():
    bn = MixBatchNorm2d(2).eval()
    with torch.no_grad():
        bn.main.running_mean.fill_(5.0)
        bn.aux.running_mean.fill_(-3.0)
    bn.mode = "mix"
    y = bn(torch.zeros(6, 2, 1, 1))
    scale = 1 / math.sqrt(1 + bn.main.eps)
    torch.testing.assert_close(y.flatten(1), torch.tensor([[-5.0] * 2] * 4 + [[3.0] * 2] * 2) * scale)
    bn.mode = "sideways"
    with pytest.raises(ValueError, match="unknown BN mode"):
        bn(torch.zeros(2, 2, 1, 1))


def test_decoder_bn_mode_switches_the_whole_classifier_block_and_restores():
    torch.manual_seed(0)
    decoder = U2PLDeepLabV3Plus((16, 32, 64, 128), num_classes=4, aspp_dilations=(1, 2, 3),
                                low_level_channels=8, decoder_channels=16).train()
    norms = decoder.mix_norms()
    assert len(norms) == 2 and all(n.mode == "clean" for n in norms)
    fused = torch.randn(4, 8 + 16, 6, 6)
    with decoder.bn_mode("adv"):
        assert all(n.mode == "adv" for n in norms)
        decoder.classify(fused)
    assert all(n.mode == "clean" for n in norms)
    assert all(n.aux.num_batches_tracked.item() == 1 and n.main.num_batches_tracked.item() == 0 for n in norms)
    with pytest.raises(RuntimeError), decoder.bn_mode("mix"):
        raise RuntimeError("a failing step")
    assert all(n.mode == "clean" for n in norms)
    with pytest.raises(ValueError, match="unknown BN mode"), decoder.bn_mode("adversarial"):
        pass


def test_sync_batchnorm_conversion_keeps_both_bns_and_the_routing():
    torch.manual_seed(0)
    decoder = U2PLDeepLabV3Plus((16, 32, 64, 128), num_classes=4, aspp_dilations=(1, 2, 3),
                                low_level_channels=8, decoder_channels=16)
    with torch.no_grad():
        decoder.classifier[1].aux.weight.fill_(2.0)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(decoder)
    norms = converted.mix_norms()
    assert len(norms) == 2
    assert all(type(n.main) is nn.SyncBatchNorm and type(n.aux) is nn.SyncBatchNorm for n in norms)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())  # ASPP, head, low_conv too
    assert torch.all(norms[0].aux.weight == 2.0)  # parameters carried over
    # Without a process group SyncBatchNorm normalises locally, so the routing can run on CPU.
    converted.train()
    with converted.bn_mode("warm_up"):
        converted.classify(torch.randn(4, 8 + 16, 6, 6))
    assert all(n.main.num_batches_tracked.item() == 1 and n.aux.num_batches_tracked.item() == 1 for n in norms)
