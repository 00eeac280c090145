"""DenseCRF post-processing (Krähenbühl & Koltun's fully connected CRF), as Learning-Pseudo-Label's
stage-2 evaluation (`lib/utils/DenseCRF.py`, `TEST_CRF`): softmax probabilities of the
averaged multi-scale, flipped logits, refined by one mean-field iteration, then argmax by the caller.

Needs the optional `pydensecrf2` package (`pip install "sslseg[crf]"`; where pip finds no wheel it builds
the sdist, which needs a C++ compiler); it installs the module `pydensecrf`, the name of the unmaintained
original it forks, so the two must not be installed together.

Differences from the reference: it rebuilds the colour image from the normalised input tensor
(denormalise, x255, clip, truncate to uint8); here the caller passes the image itself, which can
differ from that reconstruction by one intensity level. The reference's `scale_factor` (always 1
there) is left out.
"""

from __future__ import annotations

import numpy as np

from sslseg.errors import UserError

UNARY_CLIP = 1e-5  # probabilities are clipped here before -log, as pydensecrf's unary_from_softmax


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = 1, gaussian_sxy: float = 3,
              gaussian_compat: float = 3, bilateral_sxy: float = 32, bilateral_srgb: float = 13,
              bilateral_compat: float = 10) -> np.ndarray:
    """Refined class probabilities (K, H, W) float32 of `probs` (K, H, W, summing to 1 over K) for the
    uint8 RGB `image` (H, W, 3). Unary: -log(clip(probs, 1e-5, 1)); pairwise: a Gaussian kernel on
    positions (`gaussian_sxy` pixels, Potts weight `gaussian_compat`) and a bilateral kernel on
    positions and colours (`bilateral_sxy` pixels, `bilateral_srgb` intensity levels, Potts weight
    `bilateral_compat`); `iterations` mean-field steps. The defaults are the reference's TEST_CRF settings."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise UserError('DenseCRF post-processing needs the pydensecrf2 package: pip install "sslseg[crf]"') from exc
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (K, H, W) with the image's H, W {image.shape[:2]}, got {probs.shape}")
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, UNARY_CLIP, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(num_classes, height, width)
