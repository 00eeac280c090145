import math

import pytest
import torch

from sslseg.methods.components import cutmix
from sslseg.methods.daw import DistributionAlignment
from sslseg.methods.losses import masked_cross_entropy
from sslseg.methods.selection import JumpThreshold, above_threshold, gaussian_intersection


def _pdf(x, mu, sigma):
    return math.exp(-((x - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))


def test_gaussian_intersection_by_hand():
    # μ⁺=0.9 σ⁺=0.1, μ⁻=0.5 σ⁻=0.2: A=-0.03, B=0.062, C=0.0025-0.0324+0.0008·ln2=-0.0293455,
    # E=B²-4AC=3.22542e-4, τ=(-B+√E)/2A = 0.734009.
    root, ok = gaussian_intersection(0.9, 0.1, 0.5, 0.2)
    assert bool(ok) and float(root) == pytest.approx(0.734009, abs=1e-6)
    assert _pdf(float(root), 0.9, 0.1) == pytest.approx(_pdf(float(root), 0.5, 0.2), rel=1e-4)


def test_gaussian_intersection_equal_variances_is_the_midpoint():
    root, ok = gaussian_intersection(0.9, 0.1, 0.5, 0.1)
    assert bool(ok) and float(root) == pytest.approx(0.7)


def test_gaussian_intersection_without_real_root():
    # α=100 scales the negative density far below the positive one: no crossing (E < 0).
    _, ok = gaussian_intersection(0.9, 0.05, 0.6, 0.15, alpha=100.0)
    assert not bool(ok)


def test_no_real_root_keeps_the_previous_threshold():
    jump = JumpThreshold(num_classes=2, alpha=100.0, init_tau=0.95)
    jump.mu_pos.fill_(0.9), jump.var_pos.fill_(0.05**2), jump.mu_neg.fill_(0.6), jump.var_neg.fill_(0.15**2)
    jump.momentum = 1.0  # freeze the statistics: only the root decides
    logits = torch.zeros(1, 2, 1, 4)
    jump.update(logits.softmax(1), torch.zeros(1, 1, 4, dtype=torch.long))
    assert float(jump.tau) == 0.95


def _two_class_logits(p_class0: list[float]) -> torch.Tensor:
    p = torch.tensor(p_class0)
    return torch.stack([torch.log(p), torch.log(1 - p)])[None, :, None, :]  # (1, 2, 1, N)


def test_jump_threshold_one_ema_update():
    # 10 correct pixels (5 at 0.7, 5 at 0.9), 3 wrong ones (0.6, predicted 0, label 1), 2 ignored.
    logits = _two_class_logits([0.7] * 5 + [0.9] * 5 + [0.6] * 3 + [0.99] * 2)
    target = torch.tensor([0] * 10 + [1] * 3 + [255] * 2).view(1, 1, -1)
    jump = JumpThreshold(num_classes=2)
    jump.update(logits.softmax(1), target)
    # positives: batch mean 0.8, variance Σ0.1²/(10-1) = 0.0111; EMA from (1/K=0.5, 0.5).
    assert float(jump.mu_pos) == pytest.approx(0.99 * 0.5 + 0.01 * 0.8)
    assert float(jump.var_pos) == pytest.approx(0.99 * 0.5 + 0.01 * 0.1 / 9)
    # negatives: 3 < 10 samples, the EMA values stand in: unchanged.
    assert float(jump.mu_neg) == pytest.approx(0.5) and float(jump.var_neg) == pytest.approx(0.5)
    # The root (≈0.038) lies below 1/K, so τ is clamped to 0.5.
    assert float(jump.tau) == pytest.approx(0.5)


def test_jump_threshold_averages_over_ranks():
    logits = _two_class_logits([0.7] * 5 + [0.9] * 5)
    target = torch.zeros(1, 1, 10, dtype=torch.long)
    jump = JumpThreshold(num_classes=2)
    jump.update(logits.softmax(1), target, reduce_mean=lambda t: (t + 0.6) / 2)  # the other rank's mean is 0.6
    assert float(jump.mu_pos) == pytest.approx(0.99 * 0.5 + 0.01 * 0.7)


def test_distribution_alignment_of_a_known_tensor():
    align = DistributionAlignment(num_classes=2)
    align.labeled.copy_(torch.tensor([0.9, 0.6]))
    align.unlabeled.copy_(torch.tensor([0.6, 0.6]))
    probs = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    # [0.5·1.5, 0.5·1.0] = [0.75, 0.5] -> renormalised [0.6, 0.4]: the argmax may change.
    torch.testing.assert_close(align(probs).flatten(), torch.tensor([0.6, 0.4]))


def test_distribution_alignment_update():
    align = DistributionAlignment(num_classes=3)
    # labeled: class 0 predicted at 0.8, 0.8 and 0.6 (one more pixel at 0.9 is ignored); class 1, 2 never.
    probs_l = torch.tensor([[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]]).T.reshape(1, 3, 1, 4)
    valid_l = torch.tensor([[[True, True, True, False]]])
    probs_u = torch.tensor([[0.2, 0.7, 0.1]]).T.reshape(1, 3, 1, 1)
    align.update(probs_l, valid_l, probs_u, torch.ones(1, 1, 1, dtype=torch.bool))
    third = 1 / 3
    torch.testing.assert_close(align.labeled, torch.tensor([0.99 * third + 0.01 * (2.2 / 3), third, third]))
    torch.testing.assert_close(align.unlabeled, torch.tensor([third, 0.99 * third + 0.01 * 0.7, third]))


def test_masked_cross_entropy_normalisations():
    # 4 pixels, 2 classes, pseudo-label 0 everywhere. conf: 0.97 ✓, 0.5 (below τ), 0.99 (padding), 0.96 ✓.
    logits = _two_class_logits([0.97, 0.5, 0.99, 0.96])
    pseudo = torch.zeros(1, 1, 4, dtype=torch.long)
    conf = torch.tensor([0.97, 0.5, 0.99, 0.96]).view(1, 1, 4)
    ignore = torch.tensor([0, 0, 255, 0]).view(1, 1, 4)
    selected = above_threshold(conf, 0.95)
    ce = -math.log(0.97) - math.log(0.96)
    # UniMatch: (CE_1 + CE_4) / 3 non-padded pixels, not / 2 confident ones.
    assert float(masked_cross_entropy(logits, pseudo, selected, ignore)) == pytest.approx(ce / 3, rel=1e-5)
    # U2PL/DDFP: the mean over the selected non-padded pixels.
    assert float(masked_cross_entropy(logits, pseudo, selected, ignore, "selected")) == pytest.approx(ce / 2, rel=1e-5)


def test_cutmix_inside_the_box_only():
    images = torch.zeros(2, 3, 4, 4)
    partners = torch.ones(2, 3, 4, 4)
    boxes = torch.zeros(2, 4, 4, dtype=torch.uint8)
    boxes[0, 1:3, 2:4] = 1
    mixed = cutmix(images, partners, boxes)
    assert mixed[0].sum() == 3 * 4 and (mixed[0, :, 1:3, 2:4] == 1).all() and mixed[1].sum() == 0
    labels = cutmix(torch.zeros(2, 4, 4, dtype=torch.long), torch.full((2, 4, 4), 7), boxes)
    assert (labels[0, 1:3, 2:4] == 7).all() and labels.sum() == 7 * 4
