"""``fan-edge label``: annotate unlabeled face photos with teachers (:func:`fan_edge.label.label_folder`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..limits import MAX_THREADS, MAX_WORKERS, threads_arg, workers_arg
from .common import trust_arg


def _limit(value: float) -> float | None:
    """A ``--max-*`` percentage: negative means no limit."""
    return None if value < 0 else value


def cmd_label(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..label import LabelSpec, Thresholds, label_folder

    check_writable(args.out, "--out", kind="folder")  # before the teachers load
    spec = LabelSpec(
        source=Path(args.dir), out=Path(args.out), teachers=tuple(args.teacher),
        boxes=Path(args.boxes) if args.boxes else None, all_faces=args.all_faces, copy=args.copy,
        max_images=args.max_images, consensus=args.consensus, flip=not args.no_flip, scan_size=args.scan_size,
        device=args.device, workers=args.workers, threads=args.threads, skip_unreadable=args.skip_unreadable, trust=args.trust,
        thresholds=Thresholds(_limit(args.max_disagreement), _limit(args.max_flip), args.min_detector_score),
    )
    summary = label_folder(spec, progress=not args.json and not args.no_progress)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


def add_label(sub: Any) -> None:
    from ..label.job import MAX_DEFAULT_WORKERS
    from ..label.quality import Thresholds
    from ..runtime.detect import SCAN_SIZE

    limits = Thresholds()
    p = sub.add_parser("label", help="annotate unlabeled face photos with teachers (FAN models, dlib): 300-W .pts training "
                       "data in --out, a quality record per face in OUT/labels.jsonl (resumable; docs/label.md)")
    p.add_argument("dir", help="folder of photos (searched recursively)")
    p.add_argument("--teacher", action="append", required=True, metavar="T",
                   help="a FAN checkpoint or trained zoo name (default, fan2-w64-i256-300w, an official 2DFAN-4 .pth.tar), "
                   "or dlib (its 68-point shape predictor; pip install 'fan-edge[label]'); repeat for a consensus")
    p.add_argument("--out", required=True, help="output folder: images (hard links) with .pts, labels.jsonl, label.json")
    p.add_argument("--boxes", metavar="JSON", help="face boxes {\"image path relative to DIR\": [[x1, y1, x2, y2], ...]} "
                   "instead of the detector (only the images it names are labelled)")
    p.add_argument("--all-faces", action="store_true", help="label every face of an image (NAME_1.jpg/.pts, NAME_2... as "
                   "300-W names them), not just the best-scoring one")
    p.add_argument("--copy", action="store_true", help="copy the images into --out instead of hard-linking them")
    p.add_argument("--max-images", type=int, metavar="N", help="label only the first N images (sorted); rerun with a larger "
                   "N to go on")
    p.add_argument("--max-disagreement", type=float, default=limits.max_disagreement, metavar="PCT",
                   help=f"drop a face whose teachers' mean NME io against their consensus is above PCT %% (default "
                   f"{limits.max_disagreement}; negative: no limit)")
    p.add_argument("--max-flip", type=float, default=limits.max_flip, metavar="PCT",
                   help=f"drop a face whose labels on the photo and on its mirror image differ by more than PCT %% NME io "
                   f"(default {limits.max_flip}; negative: no limit)")
    p.add_argument("--min-detector-score", type=float, metavar="S", help="drop a face whose dlib HOG detector score is "
                   "below S (default: keep every face the detector reports; it reports scores from 0)")
    p.add_argument("--consensus", choices=("mean", "median"), default="mean", help="per-point rule over the teachers (default "
                   "mean: better than the median on AFW, where teachers of one family agree with each other)")
    p.add_argument("--no-flip", action="store_true", help="skip the mirrored pass (faster; no flip check)")
    p.add_argument("--scan-size", type=int, default=SCAN_SIZE, metavar="PX", help=f"long side photos are resized to for "
                   f"detection (default {SCAN_SIZE})")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda for the FAN teachers")
    p.add_argument("--workers", type=workers_arg, metavar="N",
                   help=f"processes labelling images (1..{MAX_WORKERS}), one torch thread each (default: one "
                   f"per core, at most {MAX_DEFAULT_WORKERS}; 1: in this process)")
    p.add_argument("--threads", type=threads_arg, metavar="N",
                   help=f"torch threads per process (1..{MAX_THREADS}; default: the cores shared out)")
    p.add_argument("--skip-unreadable", action="store_true", help="record unreadable images and go on (default: stop "
                   "with an error naming the file)")
    trust_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_label)
