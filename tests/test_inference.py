import torch
from torch import nn

from sslseg.inference import _starts, predict


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
