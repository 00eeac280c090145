"""Prediction and evaluation: the evaluation protocol (inference), metrics, sslseg.Segmenter, export, DenseCRF,
eval.py's evaluation."""
