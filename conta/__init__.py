"""conta: weakly-supervised semantic segmentation with causal intervention (CONTA)."""

__version__ = "0.1.0"
