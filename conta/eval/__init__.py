"""Evaluation: confusion-matrix metrics and per-round reports."""
