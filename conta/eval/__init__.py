"""Evaluation: confusion-matrix metrics, scoring folders of predictions, the study's statistics."""
