"""PCT: the class-aware cross-entropy, the classification loss, PseudoNet's IoU tracker and the image
weights, tags of masks, and both phases' steps."""

import math

import numpy as np
import pytest
import torch

from sslseg.methods.losses import class_aware_cross_entropy, class_aware_log_probs, tag_classification_loss
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


@pytest.mark.slow
def test_pct_runs_both_stages_and_resumes_in_stage2(data_dir, tmp_path):
    """Stage 1, the pseudo-labels, then stage 2 killed after its first epoch and resumed there."""
    import json

    from PIL import Image

    from tests.conftest import kill_train_when, mini_split, run_cli

    splits = mini_split(data_dir, tmp_path / "splits", unlabeled=16)
    run_dir = tmp_path / "run"
    args = ["method=pct", f"paths.data_dir={data_dir}", f"dataset.splits_dir={splits}", "split=mini", "logger=none",
            "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
            "method.stages.stage1.epochs=1", "method.stages.stage2.epochs=3", f"hydra.run.dir={run_dir}"]
    checkpoint = run_dir / "stage2" / "checkpoints" / "last.ckpt"
    kill_train_when(checkpoint, *args)
    assert checkpoint.is_file() and not (run_dir / "stage2" / "results.json").exists(), "not killed inside stage 2"

    # Every training image has a pseudo-label file: the labeled ones their ground truth, the others a label
    # at every pixel, among the image's tags.
    listed = [line.split() for line in (run_dir / "pseudo" / "pseudo.txt").read_text().splitlines() if line]
    assert len(listed) == 16 + 16
    for image, label in listed[16:]:
        pseudo = np.asarray(Image.open(run_dir / "pseudo" / label))
        truth = np.asarray(Image.open(data_dir / "toy" / image.replace("JPEGImages", "SegmentationClass")
                                      .replace(".jpg", ".png")))
        assert (pseudo != 255).all() and set(np.unique(pseudo)) <= set(np.unique(np.where(truth == 255, 0, truth)))

    second = run_cli("train.py", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = [line for line in second.stdout.splitlines() if line.startswith("stage ")]
    assert lines == ["stage stage1: done, skipped", "stage pseudo: done, skipped", "stage stage2: resuming (pseudo)"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stage"] == "stage2" and results["uses_image_tags"] is True
