"""Calibration data for post-training quantization (and the faces the export's parity report reads)."""

from .source import FaceCrops, spread_indices

__all__ = ["FaceCrops", "spread_indices"]
