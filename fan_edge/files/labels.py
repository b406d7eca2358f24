"""The files of a labelling job: ``labels.jsonl`` (the records), OUT's names, the boxes file, and the summary.

Kept apart from the run itself (:mod:`fan_edge.label.job`) so that anything
reading a finished job (a report, a notebook choosing thresholds from the
records) needs neither torch nor the teachers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import DataError

LABELS = "labels.jsonl"
MAX_BOXES_JSON = 64 << 20  # bytes: a boxes file for a very large folder, not an arbitrary blob

REASONS = ("detector_score", "disagreement", "flip")  # why a face is dropped, in the order they are checked


@dataclass
class LabelSummary:
    """What a job holds after a run (every image in its scope), and what this run did."""

    out: Path
    images: int = 0
    new_images: int = 0
    skipped: int = 0
    faces: int = 0
    new_faces: int = 0
    kept: int = 0
    dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    no_face: int = 0
    unreadable: int = 0
    linked: int = 0
    copied: int = 0
    seconds: float = 0.0
    disagreement: dict[str, float] = field(default_factory=dict)
    flip: dict[str, float] = field(default_factory=dict)

    @property
    def faces_per_second(self) -> float:
        return self.new_faces / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        d["faces_per_second"] = round(self.faces_per_second, 3) if self.new_faces else None
        return d

    def format(self) -> str:
        by = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in self.dropped_by.items() if n)
        lines = [
            f"{self.out}: {self.images} images ({self.new_images} labelled now, {self.skipped} already done), "
            f"{self.faces} faces found, {self.kept} kept, {self.dropped} dropped" + (f" ({by})" if by else "")
            + f", {self.no_face} with no face" + (f", {self.unreadable} unreadable" if self.unreadable else ""),
        ]
        for name, dist in (("disagreement", self.disagreement), ("flip", self.flip)):
            if dist:
                lines.append(f"{name} NME io %: " + "  ".join(f"{k} {v:.2f}" for k, v in dist.items()))
        if self.new_images:
            lines.append(f"{self.new_faces} faces in {self.seconds:.1f} s ({self.faces_per_second:.2f} faces/s, "
                         f"{self.new_images / self.seconds:.2f} images/s)")
        return "\n".join(lines)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values, dtype=np.float64)
    return {k: round(float(np.percentile(v, q)), 3) for k, q in (("p10", 10), ("p50", 50), ("p90", 90), ("p99", 99))} | {
        "max": round(float(v.max()), 3)}


def summarize(summary: LabelSummary, records: dict[str, list[dict[str, Any]]], scope: Sequence[str], teachers: int) -> LabelSummary:
    """Fill the job-wide counts of ``summary`` from the records of the images in ``scope``."""
    summary.images = len(scope)
    spreads, flips = [], []
    for image in scope:
        for r in records.get(image, []):
            if r.get("face") is None:
                summary.no_face += r.get("reason") == "no_face"
                summary.unreadable += r.get("reason") == "unreadable"
                continue
            summary.faces += 1
            if r.get("kept"):
                summary.kept += 1
                summary.linked += r.get("stored") == "link"
                summary.copied += r.get("stored") == "copy"
            else:
                summary.dropped += 1
                for reason in r.get("reasons", []):
                    summary.dropped_by[reason] = summary.dropped_by.get(reason, 0) + 1
            if teachers > 1 and r.get("disagreement") is not None:
                spreads.append(r["disagreement"])
            if r.get("flip") is not None:
                flips.append(r["flip"])
    summary.disagreement = _percentiles(spreads)
    summary.flip = _percentiles(flips)
    return summary


class Ledger:
    """``labels.jsonl``: records appended per image (one write, flushed and synced), read back for resuming."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def read(self) -> dict[str, list[dict[str, Any]]]:
        """Complete records by image. A kill can leave a partial last line or an image without all its face records;
        both are removed (the file is rewritten atomically) so the image is labelled again."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        by_image: dict[str, list[dict[str, Any]]] = {}
        for n, line in enumerate(whole.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(f"{self.path}: line {n} is not JSON; the file was edited or damaged "
                                "(remove that line to label the image again)") from None
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise DataError(f"{self.path}: line {n} is not a label record")
            by_image.setdefault(record["image"], []).append(record)
        complete = {k: v for k, v in by_image.items() if len(v) == max(1, int(v[0].get("faces") or 0))}
        if len(whole) != len(data) or len(complete) != len(by_image):
            text = "".join(json.dumps(r) + "\n" for recs in complete.values() for r in recs)
            write_text_atomic(self.path, text)
        return complete

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write("".join(json.dumps(r) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_boxes_file(path: Path) -> dict[str, np.ndarray]:
    """``{image path relative to DIR: [[x1, y1, x2, y2], ...]}`` (fan-edge's landmark-box convention, pixels)."""
    if not path.is_file():
        raise DataError(f"{path}: no such boxes file")
    if path.stat().st_size > MAX_BOXES_JSON:
        raise DataError(f"{path}: larger than {MAX_BOXES_JSON} bytes, not a boxes file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not JSON ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{\"image path relative to DIR\": [[x1, y1, x2, y2], ...], ...}}")
    boxes = {}
    for name, rows in data.items():
        ok = isinstance(rows, list) and all(isinstance(r, list) and len(r) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in r) for r in rows)
        if not ok:
            raise DataError(f"{path}: {name!r}: expected a list of [x1, y1, x2, y2] boxes of numbers")
        boxes[Path(name).as_posix()] = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return boxes


def output_names(image: str, face: int, all_faces: bool) -> tuple[str, str]:
    """(image, .pts) paths inside OUT for face ``face`` (0-based) of ``image``: the image's own path, or, with
    several faces per image, ``NAME_<face+1>`` as 300-W names them (one image file per annotated face)."""
    p = Path(image)
    stem = f"{p.stem}_{face + 1}" if all_faces else p.stem
    return (p.with_name(stem + p.suffix).as_posix(), p.with_name(stem + ".pts").as_posix())


def place_image(source: Path, target: Path, copy: bool) -> str:
    """Put ``source`` at ``target``: a hard link (no bytes copied) unless ``copy`` or the file system refuses, then a
    copy written atomically. Returns "link" or "copy". A link is created whole by the file system, so neither way
    leaves a half image."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            if target.exists() and os.path.samefile(source, target):
                return "link"
            if target.exists() or target.is_symlink():
                target.unlink()
            os.link(source, target)
            return "link"
        except OSError:
            pass  # another file system, no hard links (some network and FAT mounts), no permission: copy
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return "copy"


def read_label_job(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """A finished label job's settings (``label.json``) and its kept faces' records by ``.pts`` path relative to it.

    None when the folder holds no label job (ground-truth data): what a trainer
    asks to weigh or filter a source by its labels' quality.
    """
    settings_path, ledger_path = folder / "label.json", folder / LABELS
    if not settings_path.is_file() or not ledger_path.is_file():
        return None
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except ValueError:
        raise DataError(f"{settings_path}: not JSON; the file was edited or damaged") from None
    if not isinstance(settings, dict):
        raise DataError(f"{settings_path}: not a label job's settings")
    records = {r["pts"]: r for recs in Ledger(ledger_path).read().values() for r in recs
               if r.get("kept") and isinstance(r.get("pts"), str)}
    return settings, records
