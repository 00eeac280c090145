"""sslseg: semi-supervised semantic segmentation methods on one Hydra + Lightning suite.

`sslseg.Segmenter` (sslseg/predict/segmenter.py) predicts with a trained checkpoint. It is imported on first use,
so that `import sslseg` (every entry point) does not pay for importing torch and Lightning.
"""

import os

# albumentations asks PyPI for a newer version on import; never do that from a training job.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["Segmenter"]


def __getattr__(name: str):
    if name == "Segmenter":
        from sslseg.predict.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'sslseg' has no attribute {name!r}")
