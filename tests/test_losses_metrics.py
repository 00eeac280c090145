import math

import torch
import torch.nn.functional as F

from sslseg.methods.losses import OhemCrossEntropy
from sslseg.predict.metrics import confusion_matrix_metric, iou_from_confusion


def _logits_with_p_gt(p_gt: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """2-class logits on a 1x1xN image whose true-class (0) probability is exactly p_gt."""
    p = torch.tensor(p_gt)
    logits = torch.stack([torch.log(p), torch.log(1 - p)])[None, :, None, :]  # (1, 2, 1, N)
    return logits, torch.zeros(1, 1, len(p_gt), dtype=torch.long)


def test_ohem_keeps_pixels_below_threshold():
    logits, target = _logits_with_p_gt([0.1, 0.5, 0.69, 0.8, 0.95, 0.99])
    loss = OhemCrossEntropy(thresh=0.7, min_kept=2)(logits, target)
    # 2nd smallest p_gt is 0.5 < 0.7, so the threshold is 0.7: keep 0.1, 0.5, 0.69.
    expected = -(math.log(0.1) + math.log(0.5) + math.log(0.69)) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_ohem_min_kept_raises_the_threshold():
    logits, target = _logits_with_p_gt([0.1, 0.5, 0.69, 0.8, 0.95, 0.99])
    loss = OhemCrossEntropy(thresh=0.7, min_kept=4)(logits, target)
    # 4th smallest p_gt is 0.8 > 0.7: threshold 0.8, keep the four hardest.
    expected = -(math.log(0.1) + math.log(0.5) + math.log(0.69) + math.log(0.8)) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_ohem_keeps_all_when_few_valid_and_skips_ignored():
    logits, target = _logits_with_p_gt([0.3, 0.9, 0.99, 0.2])
    target[0, 0, 3] = 255
    loss = OhemCrossEntropy(thresh=0.7, min_kept=10)(logits, target)  # 3 valid < min_kept: keep all valid
    expected = -(math.log(0.3) + math.log(0.9) + math.log(0.99)) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    full = F.cross_entropy(logits, target, ignore_index=255)
    assert math.isclose(loss.item(), full.item(), rel_tol=1e-5)


def test_ohem_min_kept_per_images_keeps_the_same_share_on_any_device_batch():
    """The references' min_kept is per GPU for their GPU batch; a global batch on fewer devices puts more
    images on each, and min_kept_images scales min_kept with them."""
    logits, target = _logits_with_p_gt([0.1, 0.5, 0.69, 0.8, 0.95, 0.99])
    one_image = OhemCrossEntropy(thresh=0.7, min_kept=4)(logits, target)  # keeps the 4 hardest (above)
    logits2, target2 = torch.cat([logits, logits]), torch.cat([target, target])  # a device holding 2 such images
    scaled = OhemCrossEntropy(thresh=0.7, min_kept=4, min_kept_images=1)(logits2, target2)
    fixed = OhemCrossEntropy(thresh=0.7, min_kept=4)(logits2, target2)  # 4 of 12 pixels: threshold 0.7, keeps 6
    assert math.isclose(scaled.item(), one_image.item(), rel_tol=1e-5)
    expected_fixed = -2 * (math.log(0.1) + math.log(0.5) + math.log(0.69)) / 6
    assert math.isclose(fixed.item(), expected_fixed, rel_tol=1e-5)


def test_iou_by_hand_with_ignore_and_absent_class():
    # 4 classes; class 3 never occurs in target or prediction.
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    metric = confusion_matrix_metric(4)
    metric.update(pred, target)
    iou, miou = iou_from_confusion(metric.compute())
    # class 0: TP 1, FP 1 (pixel 4), FN 1 (pixel 1) -> 1/3; class 1: TP 2, FP 1 -> 2/3;
    # class 2: TP 0, FN 1 (the 255 pixel is ignored, so its prediction 2 is not a FP) -> 0.
    torch.testing.assert_close(iou[:3], torch.tensor([100 / 3, 200 / 3, 0.0], dtype=torch.float64))
    assert torch.isnan(iou[3])
    assert math.isclose(miou.item(), (100 / 3 + 200 / 3 + 0) / 3)


def test_iou_accumulates_over_batches_not_averaged():
    metric = confusion_matrix_metric(2)
    metric.update(torch.tensor([[0, 0]]), torch.tensor([[0, 1]]))  # batch IoU: c0 1/2, c1 0
    metric.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]]))  # batch IoU: c1 1
    iou, _ = iou_from_confusion(metric.compute())
    # dataset level: c0 TP1 FP1 -> 1/2; c1 TP4 FN1 -> 4/5
    torch.testing.assert_close(iou, torch.tensor([50.0, 80.0], dtype=torch.float64))
