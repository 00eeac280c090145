"""DARS's thresholds, sampling ratios and selection; the fp16 histograms against exact sorted banks."""

import numpy as np
import pytest
import torch

from sslseg.pseudo_labels.thresholds import (
    FP16_BINS,
    cbst_thresholds,
    class_targets,
    confidence_histogram,
    dars_thresholds,
    labeled_prior,
    select_pixels,
)


def _hist(banks: list[list[float]]) -> torch.Tensor:
    label = torch.cat([torch.full((len(b),), j) for j, b in enumerate(banks)])
    conf = torch.cat([torch.tensor(b, dtype=torch.float16) for b in banks])
    return confidence_histogram(label, conf, len(banks))


def test_thresholds_and_sampling_ratios_by_hand():
    banks = [
        [1.0, 1.0, 1.0, 1.0, 0.9, 0.5],  # n = 2: τ = 1.0, tied four times → sp = 2/4
        [0.9, 0.8, 0.7, 0.6],            # n = 3: τ = 0.7 (no tie) → sp = 1
        [0.8, 0.8],                      # n = 5 > 2 (overflow): keep all, τ = 0.8, sp = 1
        [0.99],                          # n = 0: nothing
        [],                              # empty bank (the release crashes): nothing
    ]
    thresholds, ratios = dars_thresholds(_hist(banks), torch.tensor([2, 3, 5, 0, 4]))
    assert thresholds[:3].tolist() == pytest.approx([1.0, float(np.float16(0.7)), float(np.float16(0.8))])
    assert ratios.tolist() == pytest.approx([0.5, 1.0, 1.0, 0.0, 0.0])
    assert torch.isinf(thresholds[3:]).all()


def test_histogram_thresholds_equal_the_sorted_bank_on_random_data():
    gen = torch.Generator().manual_seed(0)
    k = 4
    logits = (torch.randn(3, k, 40, 50, generator=gen) * 3).half()
    probs = logits.softmax(1)  # fp16 softmax, as DARS: ties at quantised values
    conf, label = probs.max(1)
    hist = confidence_histogram(label, conf, k)
    assert hist.shape == (k, FP16_BINS) and int(hist.sum()) == label.numel()
    targets = torch.tensor([10, 500, 1, 2000])
    thresholds, ratios = dars_thresholds(hist, targets)
    for j in range(k):
        bank = np.sort(conf[label == j].float().numpy())[::-1]  # the release: sorted, largest first
        n = int(targets[j])
        threshold = bank[-1] if n > len(bank) else bank[n - 1]
        assert float(thresholds[j]) == threshold
        assert float(ratios[j]) == pytest.approx(min(1.0, n / (bank >= threshold).sum()))
    assert (ratios < 1).any()  # fp16 ties made some sampling necessary


def test_cbst_keeps_each_classes_own_top_share():
    bank = [0.1 * i for i in range(1, 11)]  # 0.1 ... 1.0
    thresholds, ratios = cbst_thresholds(_hist([bank]), 0.3)
    # ascending bank[-int(10 · 0.3) - 1] = bank[-4] = 0.7
    assert float(thresholds[0]) == float(np.float16(0.7)) and float(ratios[0]) == 1.0


def test_class_targets_follow_the_labeled_distribution():
    # labeled: 30 background, 10 class 1, 0 class 2 pixels (255 not counted); 1000 unlabeled pixels, ratio 0.4
    mask = np.array([0] * 30 + [1] * 10 + [255] * 5, dtype=np.uint8)
    prior = labeled_prior([mask], 3)
    assert prior.tolist() == [30, 10, 0]
    assert class_targets(prior, 0.4, 1000).tolist() == [300, 100, 0]


def test_selection_thresholds_then_samples_each_class_per_image():
    label = np.array([[0, 0, 0, 0, 1, 1, 2, 2]])
    conf = np.array([[1.0, 1.0, 1.0, 1.0, 0.9, 0.6, 0.99, 0.99]], dtype=np.float16)
    thresholds = np.array([1.0, 0.7, 0.5])
    ratios = np.array([0.5, 1.0, 0.0])
    out = select_pixels(label, conf, thresholds, ratios, np.random.default_rng(0))
    assert (out[0, :4] == 0).sum() == 2 and (out[0, :4] == 255).sum() == 2  # 4 tied at τ, sp 1/2: int(4 − 2) dropped
    assert out[0, 4] == 1 and out[0, 5] == 255  # 0.6 < τ_1 = 0.7
    assert (out[0, 6:] == 255).all()  # sp_2 = 0: class 2 dropped
    again = select_pixels(label, conf, thresholds, ratios, np.random.default_rng(0))
    assert np.array_equal(out, again)  # seeded: reproducible
