"""Backbones, decoders and the segmentor that methods train."""

from sslseg.models.segmentor import Segmentor, SegOutput, build_segmentor

__all__ = ["SegOutput", "Segmentor", "build_segmentor"]
