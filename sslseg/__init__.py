"""sslseg: semi-supervised semantic segmentation methods on one Hydra + Lightning suite."""

import os

# albumentations asks PyPI for a newer version on import; never do that from a training job.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
