"""300-W data: .pts files, image folders, heatmap targets, augmentation and metrics.

Nothing here imports torch: datasets are plain indexable objects that torch's
DataLoader accepts, and metrics are numpy.
"""

from .dataset import FaceFolder
from ..files.folders import FaceItem, scan_folder
from .metrics import LandmarkScores, auc, ced_curve, failure_rate, per_face_nme, score
from ..files.folders import landmark_boxes
from ..files.pts import format_pts, parse_pts, read_pts, write_pts

__all__ = [
    "FaceFolder",
    "FaceItem",
    "LandmarkScores",
    "auc",
    "ced_curve",
    "failure_rate",
    "format_pts",
    "landmark_boxes",
    "parse_pts",
    "per_face_nme",
    "read_pts",
    "scan_folder",
    "score",
    "write_pts",
]
