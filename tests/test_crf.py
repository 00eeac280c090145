import numpy as np
import pytest

from sslseg.predict.crf import dense_crf

pytest.importorskip("pydensecrf.densecrf", reason="optional: pip install 'sslseg[crf]'")


def _scene():
    """Left half black, right half white; class 0 confident (0.9) on the left, class 1 on the right, except
    an isolated pixel that prefers class 1 (0.6) and a 4-column black strip at the colour edge that slightly
    prefers class 1 (0.55)."""
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = 255
    p0 = np.full((24, 32), 0.1, np.float32)
    p0[:, :16] = 0.9
    p0[5, 5] = 0.4
    p0[:, 12:16] = 0.45
    return image, np.stack([p0, 1 - p0])


def test_zero_iterations_return_the_input_probabilities():
    image, probs = _scene()
    np.testing.assert_allclose(dense_crf(image, probs, iterations=0), probs, atol=1e-6)


def test_reference_settings_smooth_noise_and_follow_colour_edges():
    image, probs = _scene()
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    labels = refined.argmax(0)
    assert labels[5, 5] == 0  # the isolated pixel joins its neighbours
    # The black strip takes the black region's class: the labels now change exactly at the colour edge.
    assert (labels[:, :16] == 0).all() and (labels[:, 16:] == 1).all()
    # Without the colour-aware kernel the strip's columns away from the left region keep class 1.
    no_colour = dense_crf(image, probs, bilateral_compat=0).argmax(0)
    assert (no_colour[:, 15] == 1).all() and (no_colour[:, :12] == 0).all()


def test_shapes_are_checked():
    image, probs = _scene()
    with pytest.raises(ValueError, match="image must be uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"probs must be \(K, H, W\)"):
        dense_crf(image, probs[:, :, :-1])


def test_validation_can_refine_with_densecrf():
    import torch

    from sslseg.methods import method_class
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["method=supervised", "dataset.eval.crf=true"])
    module = method_class(cfg)(cfg).eval()
    image = np.zeros((1, 3, 24, 24), np.uint8)
    image[..., 12:] = 255  # a black and a white half
    scores = torch.zeros(1, 6, 24, 24)
    scores[0, 1, :, :12] = scores[0, 2, :, 12:] = 1.0
    scores[0, 2, 5, 5] = 2.0  # one stray pixel inside the black half
    labels = module.labels(scores, {"image": torch.from_numpy(image)})
    assert (labels[0, :, :12] == 1).all() and (labels[0, :, 12:] == 2).all()  # smoothed away along the colour edge
