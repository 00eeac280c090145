"""PCT: the class-aware cross-entropy, the classification loss, PseudoNet's IoU tracker and the image
weights, tags of masks, and both phases' steps."""

import math

import pytest
import torch

from sslseg.losses import class_aware_cross_entropy, class_aware_log_probs, tag_classification_loss
from sslseg.methods.pct import IoUTracker, image_weights, tags_of_masks


def test_class_aware_cross_entropy_by_hand():
    logits = torch.tensor([2.0, 1.0, 0.0]).view(1, 3, 1, 1)
    tags = torch.tensor([[True, False, True]])
    log_probs = class_aware_log_probs(logits, tags).flatten()
    # softmax over classes 0 and 2 only: e^2 / (e^2 + e^0); class 1 is absent (the release's floor log 1e-5)
    assert log_probs[0].item() == pytest.approx(2 - math.log(math.exp(2) + 1))
    assert log_probs[2].item() == pytest.approx(0 - math.log(math.exp(2) + 1))
    assert log_probs[1].item() == pytest.approx(math.log(1e-5))
    assert log_probs[[0, 2]].exp().sum().item() == pytest.approx(1.0)  # absent classes get no probability
    loss = class_aware_cross_entropy(logits, torch.tensor([[[2]]]), tags)
    assert loss.item() == pytest.approx(math.log(math.exp(2) + 1))


def test_a_single_present_class_gives_zero_loss_and_huge_logits_stay_finite():
    logits = torch.randn(2, 4, 3, 3) * 1e4  # would overflow exp() without the max subtracted
    tags = torch.tensor([[False, True, False, False], [True, True, False, False]])
    target = torch.tensor([1, 0]).view(2, 1, 1).expand(2, 3, 3).clone()
    per_pixel = class_aware_cross_entropy(logits, target, tags, reduction="none")
    assert torch.isfinite(per_pixel).all() and (per_pixel[0] == 0).all()
    target[1, 0, 0] = 255
    assert class_aware_cross_entropy(logits, target, tags, reduction="none")[1, 0, 0] == 0  # ignored


def test_tag_classification_loss_on_max_pooled_foreground_logits():
    logits = torch.full((1, 3, 2, 2), -1.0)
    logits[0, 1, 0, 0] = 3.0  # class 1 peaks at 3; class 2 stays at -1; class 0 (background) is left out
    tags = torch.tensor([[True, True, False]])
    softplus = lambda x: math.log1p(math.exp(x))
    expected = (softplus(-3.0) + softplus(-1.0)) / 2  # -log σ(3) for present class 1, -log(1 - σ(-1)) for class 2
    assert tag_classification_loss(logits, tags).item() == pytest.approx(expected)


def test_tags_of_masks_count_ignore_as_background():
    masks = torch.tensor([[[1, 255], [1, 1]], [[0, 2], [2, 7]]])  # 7 ≥ K = 3 counts as background too
    assert tags_of_masks(masks, 3).tolist() == [[True, True, False], [True, False, True]]


def test_iou_tracker_counts_with_decay():
    tracker = IoUTracker(num_classes=2, decay=0.5)
    target = torch.tensor([[0, 0, 1, 255]])
    prediction = torch.tensor([[0, 1, 1, 1]])  # the ignored pixel's prediction counts in P, as released
    tracker.update(prediction, target)
    # T = 0.5·1 + [2, 1], P = [1, 3], TP = [1, 1]
    assert tracker.truth.tolist() == [2.5, 1.5] and tracker.predicted.tolist() == [1, 3]
    assert tracker.iou().tolist() == pytest.approx([1 / (2.5 + 1 - 1), 1 / (1.5 + 3 - 1)])


def test_image_weights_and_the_zero_iou_rule():
    iou = torch.tensor([0.9, 0.5, 0.0])
    tags = torch.tensor([[True, True, False], [True, False, True], [False, False, True]])
    assert image_weights(iou, tags, power=8).tolist() == pytest.approx([0.5**8, 0.0, 0.0])
    # The release: a class with IoU exactly 0 counts as absent; no class left gives weight 1.
    assert image_weights(iou, tags, power=8, zero_iou="absent").tolist() == pytest.approx([0.5**8, 0.9**8, 1.0])
