"""The torch-free part of fan-edge: crop geometry, decoding and (later) inference sessions.

Everything under ``fan_edge.runtime`` needs numpy alone (plus one inference
backend for sessions) so that it can ship inside an app or on an edge box.
"""

from .crop import CropSpec, apply_affine, crop_matrices, crop_matrix, invert_affine, warp_image
from .decode import crop_points_to_image, decode_heatmaps

__all__ = [
    "CropSpec",
    "apply_affine",
    "crop_matrices",
    "crop_matrix",
    "crop_points_to_image",
    "decode_heatmaps",
    "invert_affine",
    "warp_image",
]
