"""Offline pseudo-labels: generation by a trained network, and the per-class thresholds of DARS and CBST."""
