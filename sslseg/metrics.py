"""Dataset-level IoU from an accumulated confusion matrix (torchmetrics, summed across DDP ranks).

IoU_c = TP / (TP + FP + FN) over the whole dataset; mIoU = mean over classes that occur in the
ground truth or the predictions (the mmseg / torchvision convention; on the real val sets every
class occurs, which makes it the references' mean over all K). Pixels labelled 255 are dropped.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from sslseg.data.transforms import IGNORE_INDEX


def confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    # validate_args=False: no torch.unique (a host sync) on every full-resolution update.
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=IGNORE_INDEX, validate_args=False)


def iou_from_confusion(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class IoU in %, NaN for classes absent from both target and prediction; mIoU in %).

    `confmat[t, p]` counts pixels of true class t predicted as p."""
    confmat = confmat.double()
    tp = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan"))) * 100
    return iou, iou.nanmean()
