"""Backbones, decoders and the segmentor that methods train.

`Segmentor`, `SegOutput` and `build_segmentor` are imported on first use, so that the torch-free parts of the package
(the backbone registry, sslseg/models/backbones.py, which `python -m sslseg list` reads) import without torch.
"""

__all__ = ["SegOutput", "Segmentor", "build_segmentor"]


def __getattr__(name: str):
    if name in __all__:
        from sslseg.models import segmentor

        return getattr(segmentor, name)
    raise AttributeError(f"module 'sslseg.models' has no attribute {name!r}")
