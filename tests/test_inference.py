"""Evaluation protocol (mode, windows, scales, flip, what is averaged) and the two mIoU definitions."""

import math

import pytest
import torch
from torch import nn

from sslseg.errors import UserError
from sslseg.predict.inference import _starts, _truncated_starts, predict, predict_with, sliding_window_probs
from sslseg.predict.metrics import confusion_matrix_metric, iou_from_confusion, mean_iou_all_classes


def _pointwise_model():
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, 1)  # translation-equivariant with no context: windows must not matter


def test_window_starts_cover_and_stay_inside():
    assert _starts(1024, 801, 534) == [0, 223]
    assert _starts(2048, 801, 534) == [0, 534, 1068, 1247]
    assert _starts(500, 801, 534) == [0]


def test_sliding_window_equals_whole_image_for_pointwise_model():
    model = _pointwise_model()
    image = torch.randn(2, 3, 70, 150)
    whole = model(image).softmax(1)
    slide = predict(model, image, "sliding", num_classes=5, crop=40, stride_ratio=2 / 3, window_batch=3)
    assert slide.shape == whole.shape
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_sliding_window_on_image_smaller_than_window():
    model = _pointwise_model()
    image = torch.randn(1, 3, 20, 30)
    slide = predict(model, image, "sliding", num_classes=5, crop=40)
    torch.testing.assert_close(slide, model(image).softmax(1), atol=1e-5, rtol=1e-5)


def test_center_crop_returns_original_pixels():
    model = _pointwise_model()
    image = torch.randn(1, 3, 21, 30)
    out = predict(model, image, "center_crop", num_classes=5, crop=41)
    torch.testing.assert_close(out, model(image), atol=1e-5, rtol=1e-5)



def test_center_crop_pads_with_black_before_normalisation():
    """DDFP (U2PL) pads the raw image with 0 and normalises after: the padding is black, not the mean colour."""
    from sslseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from sslseg.predict.inference import center_crop_logits

    seen = []
    center_crop_logits(lambda x: seen.append(x) or x, torch.zeros(1, 3, 4, 6), crop=8)
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    (padded,) = seen
    assert padded.shape == (1, 3, 8, 8)
    torch.testing.assert_close(padded[0, :, 0, 0], black)  # the top rows: padding
    assert (padded[0, :, 2:6, 1:7] == 0).all()  # the image itself, centred


def test_centred_windows_pad_a_small_image_around_its_centre():
    """semseg pads an image smaller than a window on all sides (pad // 2 on top and left), then crops back."""
    from sslseg.predict.inference import sliding_window_scores

    seen = []
    image = torch.ones(1, 3, 5, 12)

    def scores(x):
        seen.append(x)
        return x[:, :2]

    out = sliding_window_scores(scores, image, 2, crop=9, stride=6, window="centred")
    assert out.shape == (1, 2, 5, 12) and (out == 1).all()  # the original pixels, wherever the padding went
    assert seen[0].shape[-2:] == (9, 9) and (seen[0][0, 0, :2] == 0).all() and (seen[0][0, 0, 2:7] == 1).all()
    shifted = []
    sliding_window_scores(lambda x: shifted.append(x) or x[:, :2], image, 2, crop=9, stride=6, window="shifted")
    assert (shifted[0][0, 0, :5] == 1).all() and (shifted[0][0, 0, 5:] == 0).all()  # padded at the bottom

# -- the reference's truncated windows ----------------------------------------------------------------
class _WidthModel(nn.Module):
    """Class 0's logit is the width of the input it is given, class 1's is 0: a window's size shows."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        out[:, 0] = x.shape[-1]
        return out


def test_truncated_windows_are_unimatchs_grid():
    # UniMatch: starts 0, stride, ... < size, cut at the border. H 5, W 10, crop 4, stride int(4 * 0.5) = 2:
    # rows 0, 2, 4 (heights 4, 3, 1) x cols 0, 2, 4, 6, 8 (widths 4, 4, 4, 4, 2).
    model = _WidthModel()
    predict(model, torch.zeros(1, 3, 5, 10), "sliding", num_classes=2, crop=4, stride_ratio=0.5,
            window_batch=100, window="truncated")
    seen = sorted((h, w) for b, _, h, w in model.seen for _ in range(b))
    assert seen == sorted((h, w) for h in (4, 3, 1) for w in (4, 4, 4, 4, 2))
    assert _truncated_starts(2048, 534) == [0, 534, 1068, 1602]  # Cityscapes 801 / 534


def test_truncated_windows_average_the_window_outputs_at_the_border():
    # One row (H 3 <= crop). Windows [0,4) [2,6) [4,8) [6,10) are 4 wide, [8,10) is 2 wide, so with logits
    # averaged, class 0 is 4 everywhere except columns 8, 9: (4 + 2) / 2 = 3. Shifted windows are all 4 wide.
    image = torch.zeros(1, 3, 3, 10)
    truncated = predict(_WidthModel(), image, "sliding", num_classes=2, crop=4, stride_ratio=0.5,
                        window="truncated", average="logits")
    assert truncated[0, 0, 0].tolist() == [4.0] * 8 + [3.0, 3.0]
    shifted = predict(_WidthModel(), image, "sliding", num_classes=2, crop=4, stride_ratio=0.5, average="logits")
    assert shifted[0, 0, 0].tolist() == [4.0] * 10


def test_truncated_window_on_a_small_image_runs_it_unpadded():
    model = _WidthModel()
    predict(model, torch.zeros(1, 3, 3, 5), "sliding", num_classes=2, crop=8, window="truncated")
    assert model.seen == [(1, 3, 3, 5)]  # the shifted mode pads to 8 x 8 instead


# -- scales and flip ------------------------------------------------------------------------------------
def test_default_protocol_is_the_single_view_code_path():
    model = _pointwise_model()
    image = torch.randn(2, 3, 30, 50)
    with torch.no_grad():
        assert torch.equal(predict(model, image, "whole", 5, 40, scales=[1.0], flip=False), model(image))
        slide = predict(model, image, "sliding", 5, 20, 2 / 3, 3, scales=[1.0], flip=False)
        assert torch.equal(slide, sliding_window_probs(model, image, 5, 20, 13, 3))


def _column_model(x):
    """Class 0: the pixel's first channel; class 1: the column index (not flip-equivariant)."""
    cols = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
    return torch.cat([x[:, :1], cols], dim=1)


def test_flip_averages_each_pass_with_its_mirror_image():
    image = torch.randn(1, 3, 4, 7)
    out = predict(_column_model, image, "whole", 2, 8, flip=True, average="logits")
    torch.testing.assert_close(out[:, 0], image[:, 0])  # flip back: the pixel's own value
    assert torch.all(out[:, 1] == 3.0)  # (c + (6 - c)) / 2 = (W - 1) / 2
    # Per window in sliding mode (DARS, LPL): each 4-wide window averages c and 3 - c, whatever its place.
    out = predict(_column_model, image, "sliding", 2, 4, stride_ratio=0.5, flip=True, average="logits")
    assert torch.all(out[:, 1] == 1.5)


class _HeightModel(nn.Module):
    """Class 0's logit is the input height, class 1's is 8.5, everywhere."""

    def forward(self, x):
        return torch.stack([torch.full(x.shape[-2:], float(x.shape[-2])), torch.full(x.shape[-2:], 8.5)])[None]


def test_scales_resize_predict_resize_back_and_average():
    # H 8 at scales 0.5 and 1.5: heights 4 and 12. logits: class 0 = (4 + 12) / 2 = 8;
    # probs: class 0 = (sigmoid(4 - 8.5) + sigmoid(12 - 8.5)) / 2.
    image = torch.zeros(1, 3, 8, 6)
    logits = predict(_HeightModel(), image, "whole", 2, 8, scales=[0.5, 1.5], average="logits")
    assert logits.shape == (1, 2, 8, 6) and torch.all(logits[:, 0] == 8.0) and torch.all(logits[:, 1] == 8.5)
    probs = predict(_HeightModel(), image, "whole", 2, 8, scales=[0.5, 1.5], average="probs")
    expected = (1 / (1 + math.exp(4.5)) + 1 / (1 + math.exp(-3.5))) / 2
    torch.testing.assert_close(probs[:, 0], torch.full((1, 8, 6), expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 6))


def test_multi_scale_flip_sliding_runs_the_mode_at_every_scale():
    # H 8, W 12 at scales 0.5 and 1.0, crop 6, stride 3, shifted windows:
    # 4 x 6 (smaller than the crop: padded, one window) and 8 x 12 (rows 0, 2 x cols 0, 3, 6): each window
    # also runs flipped, so 2 x (1 + 6) = 14 passes of 6 x 6.
    model = _WidthModel()
    out = predict(model, torch.zeros(1, 3, 8, 12), "sliding", 2, 6, 0.5, window_batch=1, scales=[0.5, 1.0],
                  flip=True)
    assert model.seen == [(1, 3, 6, 6)] * 14 and out.shape == (1, 2, 8, 12)


def test_bad_protocol_options_are_one_line_errors():
    image = torch.zeros(1, 3, 4, 4)
    for kwargs, option in [({"average": "mean"}, "average"), ({"window": "clipped"}, "window"),
                           ({"scales": []}, "scales")]:
        with pytest.raises(UserError, match=rf"dataset\.eval\.{option}"):
            predict(_column_model, image, "whole", 2, 4, **kwargs)


# -- the two mIoU definitions ---------------------------------------------------------------------------
def test_miou_over_present_classes_and_over_all_k():
    # 4 classes; class 3 never occurs. IoU: class 0 1/3, class 1 2/3, class 2 0 (see test_losses_metrics).
    metric = confusion_matrix_metric(4)
    metric.update(torch.tensor([[0, 1, 1, 1, 0, 2]]), torch.tensor([[0, 0, 1, 1, 2, 255]]))
    iou, miou = iou_from_confusion(metric.compute())
    assert math.isclose(miou.item(), 100 / 3)  # (1/3 + 2/3 + 0) / 3 classes present
    assert math.isclose(mean_iou_all_classes(iou).item(), 25.0)  # (1/3 + 2/3 + 0 + 0) / 4


def test_base_size_resizes_the_long_side_as_semseg():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    out = predict(model, torch.randn(1, 3, 300, 500), "whole", num_classes=2, crop=64, base_size=400,
                  scales=[1.0, 0.5])
    # long side 500 -> 400 (short side round(400/500·300) = 240), and -> round(0.5·400) = 200 (120)
    assert seen == [(240, 400), (120, 200)] and out.shape == (1, 2, 300, 500)
    seen.clear()
    predict(model, torch.randn(1, 3, 500, 300), "whole", num_classes=2, crop=64, base_size=400)
    assert seen == [(400, 240)]  # a portrait image: the height is the long side


def _v2_original(model, image, multiplier):
    """UniMatch V2's supervised.py evaluate, mode 'original' with a multiplier, restated."""
    import torch.nn.functional as F

    ori_h, ori_w = image.shape[-2:]
    new_h, new_w = int(ori_h / multiplier + 0.5) * multiplier, int(ori_w / multiplier + 0.5) * multiplier
    pred = model(F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=True))
    return F.interpolate(pred, (ori_h, ori_w), mode="bilinear", align_corners=True)


class _Patches(nn.Module):
    """A model that, as a ViT, reads only sides that are multiples of its patch; it records the sizes it saw."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch, self.seen = patch, []
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        assert x.shape[-2] % self.patch == 0 and x.shape[-1] % self.patch == 0, x.shape
        self.seen.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_multiplier_is_unimatch_v2s_resize_to_multiples():
    torch.manual_seed(0)
    model, image = _Patches(14), torch.randn(2, 3, 40, 50)  # -> 42 x 56, logits back at 40 x 50
    out = predict(model, image, "whole", num_classes=5, crop=518, multiplier=14)
    assert model.seen == [(42, 56)] and out.shape == (2, 5, 40, 50)
    torch.testing.assert_close(out, _v2_original(model, image, 14))
    model.seen.clear()
    exact = torch.randn(1, 3, 28, 70)  # multiples already: the input itself, unresized
    torch.testing.assert_close(predict(model, exact, "whole", num_classes=5, crop=518, multiplier=14), model(exact))
    assert model.seen == [(28, 70), (28, 70)]


def test_multiplier_applies_to_every_forward_pass():
    """Windows, scales and flips each run at multiples (a truncated border window, a 0.75 scale)."""
    model, image = _Patches(8), torch.randn(1, 3, 44, 60)
    predict(model, image, "sliding", num_classes=5, crop=32, window="truncated", multiplier=8)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in model.seen) and (24, 16) in model.seen  # 23x18 -> 24x16
    predict(model, image, "whole", num_classes=5, crop=32, scales=[0.75, 1.0], flip=True, multiplier=8)


def test_multiplier_auto_is_the_backbones_patch_size():
    model, image = _Patches(8), torch.randn(1, 3, 44, 60)
    protocol = {"mode": "whole", "crop_size": 32, "multiplier": "auto"}
    predict_with(model, image, 5, protocol, patch_size=8)
    assert model.seen == [(48, 64)]
    cnn = _pointwise_model()  # a CNN (no patch size): auto resizes nothing
    torch.testing.assert_close(predict_with(cnn, image, 5, protocol), cnn(image))
    torch.testing.assert_close(predict_with(cnn, image, 5, {"mode": "whole", "crop_size": 32}), cnn(image))
    with pytest.raises(UserError, match="dataset.eval.multiplier must be auto, null or a positive integer, got 0"):
        predict_with(cnn, image, 5, {"mode": "whole", "crop_size": 32, "multiplier": 0})
    with pytest.raises(AssertionError):  # without the multiplier the ViT-like model refuses 44 x 60
        predict_with(model, image, 5, {"mode": "whole", "crop_size": 32, "multiplier": None}, patch_size=8)


def test_a_vit_module_evaluates_any_image_size_through_auto():
    from sslseg.methods import method_class
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["method=supervised", "backbone=vit_tiny", "model=dpt_tiny"])
    module = method_class(cfg)(cfg).eval()
    assert cfg.dataset.eval.multiplier == "auto" and module.patch_size() == 8
    with torch.no_grad():
        scores = module.predict_scores(torch.randint(0, 256, (1, 3, 44, 60), dtype=torch.uint8))
    assert scores.shape == (1, 6, 44, 60)
