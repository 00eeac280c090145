"""DSSN: class-aware selection, the standardised MSE, where each loss term takes its gradient and its
targets from, and the first-step rule."""

import math

import pytest
import torch

from sslseg.methods import method_class
from sslseg.methods.components import confidence
from sslseg.methods.losses import standardized_mse
from sslseg.methods.selection import class_aware
from sslseg.methods.weak_to_strong import PseudoTargets, StudentLogits, Targets
from sslseg.perf.bench import synthetic_batch
from tests.conftest import compose_cfg

K = 6


def _class_aware_from_probs(probs: torch.Tensor, ratio=0.96, min_confidence=0.92) -> torch.Tensor:
    """The release's get_adaptive_binary_mask written from its definition: per image and class the
    highest probability M, threshold 0.96·M if M > 0.92 else M, a pixel kept when any class exceeds it."""
    best = probs.flatten(2).amax(2)
    thresh = torch.where(best > min_confidence, best * ratio, best)[:, :, None, None]
    return (probs > thresh).sum(1)


def test_class_aware_selection_by_hand():
    # One image, 3 classes, 4 pixels (1 x 4). Class 0 peaks at 0.95 (> 0.92): keep p0 > 0.912.
    # Class 1 peaks at 0.90 (≤ 0.92): dropped, even its best pixel. Class 2 is never the argmax.
    p0 = [0.95, 0.93, 0.05, 0.90]
    p1 = [0.03, 0.05, 0.90, 0.06]
    p2 = [1 - a - b for a, b in zip(p0, p1)]
    probs = torch.tensor([p0, p1, p2]).view(1, 3, 1, 4)
    conf, label = confidence(probs)
    kept = class_aware(label, conf, num_classes=3)
    assert kept.tolist() == [[[True, True, False, False]]]  # 0.90 < 0.96·0.95 = 0.912
    assert torch.equal(kept.long(), _class_aware_from_probs(probs))


def test_class_aware_selection_is_per_image():
    # The same pixel values pass or fail depending on the best pixel of *their* image.
    probs = torch.tensor([[0.94, 0.05], [0.99, 0.94]]).view(2, 1, 1, 2)  # class 0's probability per image
    probs = torch.cat([probs, 1 - probs], 1)
    conf, label = confidence(probs)
    kept = class_aware(label, conf, num_classes=2)
    # image 0: class 0 best 0.94 → keep > 0.9024 (0.94 ✓); class 1 best 0.95 → keep > 0.912 (0.95 ✓).
    # image 1: class 0 best 0.99 → keep > 0.9504: 0.99 ✓, 0.94 ✗; class 1 best 0.06: dropped.
    assert kept.tolist() == [[[True, True]], [[True, False]]]


def test_class_aware_selection_matches_the_definition_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, K, 9, 11, generator=gen) * 4  # sharp enough that many classes peak above 0.92
    probs = logits.softmax(1)
    conf, label = confidence(probs)
    kept = class_aware(label, conf, K)
    reference = _class_aware_from_probs(probs)
    assert reference.max() <= 1  # at most one class per pixel
    assert torch.equal(kept.long(), reference) and 0 < kept.float().mean() < 1


def test_standardized_mse_by_hand():
    # Per pixel over K = 3 channels: [1, 2, 3] → z = [−1, 0, 1] (unbiased std 1); [3, 2, 1] → [1, 0, −1].
    a = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    b = torch.tensor([3.0, 2.0, 1.0]).view(1, 3, 1, 1)
    assert float(standardized_mse(a, b)) == pytest.approx(8 / 3)  # (4 + 0 + 4) / 3
    # Invariant to each pixel's scale and shift: 2·a + 5 standardises to the same z.
    assert float(standardized_mse(a, 2 * a + 5)) == pytest.approx(0.0, abs=1e-12)
    # = 2(K−1)/K · (1 − r) with r the per-pixel Pearson correlation: r = −1 here, 4·2/3 = 8/3.


def _dssn(*overrides):
    cfg = compose_cfg(["method=dssn", *overrides])
    module = method_class(cfg)(cfg)
    return module, synthetic_batch(module.data_streams(cfg.method), 2, 32, K, torch.device("cpu"))


def _targets(label: int, shape=(2, 32, 32)) -> Targets:
    return Targets(torch.full(shape, label), torch.full(shape, 0.99), torch.zeros(shape, dtype=torch.long))


def _confident_logits(label: int, shape=(2, 32, 32)) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.full(shape, label), K).permute(0, 3, 1, 2).float() * 50


def test_each_unsupervised_term_takes_its_gradient_from_its_own_views():
    module, _ = _dssn()
    preds = {name: torch.randn(2, K, 32, 32, requires_grad=True) for name in ("s1", "s2", "fp1", "fp2")}
    logits = StudentLogits(torch.zeros(2, K, 32, 32), _confident_logits(1), (preds["fp1"], preds["fp2"]),
                           (preds["s1"], preds["s2"]))
    # Strong view 1 keeps the weak view's targets (empty box), view 2 takes the partner's (full box).
    targets = PseudoTargets(_targets(2), _targets(3), (torch.zeros(2, 32, 32), torch.ones(2, 32, 32)))
    _, terms = module.unsupervised_loss(torch.zeros(()), logits, targets)
    expected = {"s1": {"s1"}, "s2": {"s2"}, "fp1": {"fp1"}, "fp2": {"fp2"}, "mse_img": {"s1", "s2"},
                "mse_feat": {"fp1", "fp2"}}
    assert set(terms) == {f"loss_{name}" for name in expected} | {"mask_ratio"}
    for term, sources in expected.items():
        grads = torch.autograd.grad(terms[f"loss_{term}"], list(preds.values()), allow_unused=True, retain_graph=True)
        touched = {name for name, g in zip(preds, grads) if g is not None and g.abs().sum() > 0}
        assert touched == sources, term


def test_strong_views_learn_the_teachers_labels_and_perturbed_views_the_students():
    module, batch = _dssn()
    u = batch["unlabeled"]

    def constant_probs(label: int):
        return lambda weak: torch.nn.functional.one_hot(torch.full(weak.shape[:1] + weak.shape[2:], label), K) \
            .permute(0, 3, 1, 2).float() * 0.95 + 0.05 / K

    # The teacher says 4 for the partners (labelled first), 5 for the weak view; the student says 0.
    calls = iter([constant_probs(4), constant_probs(5)])
    module.label = lambda weak, student_logits=None: next(calls)(weak)
    with torch.no_grad():
        module.model.decoder.classifier.bias.copy_(torch.tensor([50.0, 0, 0, 0, 0, 0]))
    seen = {}
    original = module.unsupervised_loss
    module.unsupervised_loss = lambda loss_x, logits, targets: seen.update(logits=logits, targets=targets) \
        or original(loss_x, logits, targets)
    module.train()
    module.training_step(batch, 0)
    assert (Targets.of(seen["logits"].probs(seen["logits"].weak), u["ignore"]).label == 0).all()
    for view, box in enumerate((u["box1"], u["box2"])):
        assert torch.equal(seen["targets"].strong(view).label, torch.where(box.bool(), 4, 5))


def test_strong_view_losses_are_dropped_while_the_teacher_is_a_copy():
    module, batch = _dssn("method.selection=threshold", "method.conf_thresh=0")  # every pixel counts
    terms = {}
    original = module.unsupervised_loss

    def recording(loss_x, logits, targets):
        loss, logged = original(loss_x, logits, targets)
        terms.update({name.removeprefix("loss_"): value for name, value in logged.items()}, x=loss_x)
        return loss, logged

    module.unsupervised_loss = recording
    module.train()
    w = module.cfg.method.loss_weights
    weak_part = lambda t: w.x * t["x"] + w.fp * (t["fp1"] + t["fp2"]) + w.mse * (t["mse_img"] + t["mse_feat"])
    loss = module.training_step(batch, 0)  # train_steps = 0: the very first step
    assert float(loss) == pytest.approx(float(weak_part(terms)) / 2, rel=1e-6)
    module.train_steps = 1
    loss = module.training_step(batch, 1)
    assert float(terms["s1"] + terms["s2"]) > 0
    expected = (weak_part(terms) + w.s1 * terms["s1"] + w.s2 * terms["s2"]) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert not math.isnan(float(loss))
