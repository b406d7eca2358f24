"""Calibration data for int8 (post-training and quantization-aware), and the faces the export's parity report reads."""

from .selection import cover, lighting, pose_proxies
from .source import FaceCrops, calibration_faces
from ..files.folders import spread_indices

__all__ = ["FaceCrops", "calibration_faces", "cover", "lighting", "pose_proxies", "spread_indices"]
