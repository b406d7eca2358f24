"""The torch-free part of fan-edge: crop geometry, decoding, the artifact contract and inference sessions.

Everything under ``fan_edge.runtime`` needs numpy alone (plus one inference
backend for sessions) so that it can ship inside an app or on an edge box.
"""

from .contract import ModelContract, read_sidecar, sidecar_path
from .crop import CropSpec, apply_affine, check_boxes, crop_matrices, crop_matrix, invert_affine, warp_image
from .decode import crop_points_to_image, decode_heatmaps
from .session import CropPrediction, LandmarkSession, read_contract

__all__ = [
    "CropPrediction",
    "CropSpec",
    "LandmarkSession",
    "ModelContract",
    "apply_affine",
    "check_boxes",
    "crop_matrices",
    "crop_matrix",
    "crop_points_to_image",
    "decode_heatmaps",
    "invert_affine",
    "read_contract",
    "read_sidecar",
    "sidecar_path",
    "warp_image",
]
