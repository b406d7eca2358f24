"""Machine labels for unlabeled faces: teachers, their consensus and its quality, as 300-W training data.

``fan-edge label DIR --teacher T [--teacher T2 ...] --out OUT`` (docs/label.md):
:func:`label_folder` (:mod:`.job`) runs a :class:`LabelSpec`; :mod:`.teachers`
holds the FAN and dlib teachers, :mod:`.quality` the consensus and the
figures that decide which labels are kept, :mod:`.files` the job's files
(``labels.jsonl``, OUT's names, the boxes file) and its summary.
"""

from ..files.labels import LABELS, LabelSummary, Ledger, output_names, place_image, read_boxes_file, summarize
from .job import SETTINGS, LabelSpec, label_folder
from .quality import CONSENSUS_RULES, Thresholds, consensus, disagreement, drop_reasons, flip_nme, teacher_nme
from .teachers import DlibTeacher, FanTeacher, Teacher, TeacherOutput, landmark_box_to_dlib, load_teacher

__all__ = [
    "CONSENSUS_RULES",
    "LABELS",
    "SETTINGS",
    "DlibTeacher",
    "FanTeacher",
    "LabelSpec",
    "LabelSummary",
    "Ledger",
    "Teacher",
    "TeacherOutput",
    "Thresholds",
    "consensus",
    "disagreement",
    "drop_reasons",
    "flip_nme",
    "label_folder",
    "landmark_box_to_dlib",
    "load_teacher",
    "output_names",
    "place_image",
    "read_boxes_file",
    "summarize",
    "teacher_nme",
]
