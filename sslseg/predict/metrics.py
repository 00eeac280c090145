"""Dataset-level IoU from an accumulated confusion matrix (torchmetrics, summed across DDP ranks).

IoU_c = TP / (TP + FP + FN) over the whole dataset; pixels labelled 255 are dropped. Two means:
- `mIoU` (results.json `*_val_mIoU`): over the classes that occur in the ground truth or the
  predictions (the mmseg / torchvision convention);
- `mIoU_all_classes` (results.json `*_val_mIoU_all_classes`): over all K classes, an absent class
  counting 0, as the references compute it (UniMatch's intersection / (union + 1e-10), averaged).
On the real val sets every class occurs and the two are equal; they differ on small or partial sets.
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


def mean_iou_all_classes(iou: torch.Tensor) -> torch.Tensor:
    """The references' mIoU: the mean of the per-class IoU over all K classes, 0 for a class absent
    from both target and prediction (NaN in `iou_from_confusion`)."""
    return torch.nan_to_num(iou, nan=0.0).mean()
