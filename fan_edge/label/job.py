"""``fan-edge label``: annotate a folder of unlabeled face photos with teachers, as 300-W training data.

The FAN paper built LS3D-W by labelling unlabeled faces with a trained
network; this is that step for any folder of photos. For each image: faces
from dlib's HOG detector (the best-scoring one, or all of them) or from a
boxes file; every teacher's 68 points (and its points on the mirrored face);
their consensus and quality figures (:mod:`fan_edge.label.quality`); and,
for a face that passes the thresholds, ``OUT/<image>`` (a hard link, or a
copy) with a standard ``.pts`` beside it, which every fan-edge command reads
as annotated data (``fan-train --data OUT``).

``OUT/labels.jsonl`` gets one JSON record per face (and one per image without
a face), appended image by image and flushed to disk, so the job is
resumable: the same command skips the images already recorded. An image's
records go in one write and are recorded only after its files are in place
(each written atomically, :mod:`fan_edge.atomic`): a killed run leaves no
half ``.pts``, and an image whose record is missing is simply labelled again.
``OUT/label.json`` holds the settings that decide a label (teachers,
consensus rule, thresholds, boxes); a rerun with other settings is refused
rather than mixing two kinds of labels in one folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..files.folders import scan_folder
from ..files.images import check_image_file, read_image
from ..files.pts import write_pts
from ..errors import BackendError, ConfigError, DataError, FanEdgeError
from ..limits import MAX_THREADS, MAX_WORKERS, check_int
from ..progress import progress_bar
from ..runtime.detect import SCAN_SIZE
from ..files.labels import LABELS, LabelSummary, Ledger, output_names, place_image, read_boxes_file, summarize
from .quality import CONSENSUS_RULES, Thresholds, consensus, drop_reasons, flip_nme, teacher_nme
from .teachers import Teacher, load_teacher

SETTINGS = "label.json"
# Appended to the refusal of an unreadable image, wherever it is found: the way on.
SKIP_HINT = "(--skip-unreadable records such images and labels the rest)"
# Worker processes by default: one per core, each with one torch thread. On 2 cores two such processes labelled 7.6
# faces/s against 4.3 for one process with two torch threads (the detector, dlib's predictor, crops and decoding use
# one core each), and two torch threads collapse when anything else runs; docs/label.md. At most this many by default
# (each loads its own teachers, a few hundred MB).
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker process per core, at most :data:`MAX_DEFAULT_WORKERS`."""
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True)
class LabelSpec:
    """One labelling job: what to label, with which teachers, where to, and what to keep.

    ``max_images`` limits the job to the first N images (sorted paths), so a
    rerun with a larger N extends it. ``workers`` > 1 labels images in that
    many processes (default: :func:`default_workers`), each with ``threads``
    torch threads (default: the cores shared out); 1 labels in this process.
    """

    source: Path
    out: Path
    teachers: tuple[str, ...]
    boxes: Path | None = None
    all_faces: bool = False
    copy: bool = False
    max_images: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    consensus: str = "mean"
    flip: bool = True
    scan_size: int = SCAN_SIZE
    device: str = "cpu"
    workers: int | None = None
    threads: int | None = None
    skip_unreadable: bool = False
    trust: bool = False


# ---- inputs -------------------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- labelling one image (in this process or a worker) -----------------------------------------------------


@dataclass
class ImageResult:
    """A teacher pass over one image: per face its box, detector score, (T, K, 2) points and mirrored points."""

    image: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    detector_scores: np.ndarray | None = None
    points: np.ndarray | None = None  # (T, N, K, 2)
    flipped: np.ndarray | None = None  # (T, N, K, 2)
    unreadable: str | None = None
    error: str | None = None


class Labeller:
    """Teachers and detector loaded once; :meth:`__call__` labels one image by its path relative to ``source``."""

    def __init__(self, spec: LabelSpec, boxes: dict[str, np.ndarray] | None, teachers: Sequence[Teacher] | None = None) -> None:
        self.spec = spec
        self.boxes = boxes
        self.teachers = list(teachers) if teachers is not None else [load_teacher(t, spec.device, spec.trust) for t in spec.teachers]
        self.detector = None
        if boxes is None:
            from ..runtime.detect import DlibHogDetector

            self.detector = DlibHogDetector(scan_size=spec.scan_size)

    def __call__(self, image: str) -> ImageResult:
        try:
            pixels = read_image(self.spec.source / image)
        except DataError as exc:
            return ImageResult(image, unreadable=str(exc))
        try:
            if self.boxes is not None:
                boxes, scores = self.boxes.get(image, np.zeros((0, 4))), None
            else:
                assert self.detector is not None
                found = self.detector.detect(pixels)
                boxes, scores = found.boxes, found.scores
            if not self.spec.all_faces:
                boxes = boxes[:1]
                scores = None if scores is None else scores[:1]
            if len(boxes) == 0:
                return ImageResult(image, boxes, scores)
            outs = [t.label(pixels, boxes, flip=self.spec.flip) for t in self.teachers]
        except FanEdgeError as exc:
            return ImageResult(image, error=f"{self.spec.source / image}: {exc}")
        points = np.stack([o.points for o in outs])
        flipped = np.stack([o.flipped for o in outs]) if self.spec.flip else None  # type: ignore[misc]
        return ImageResult(image, np.asarray(boxes, dtype=np.float64), scores, points, flipped)


_WORKER: Labeller | None = None
_WORKER_ERROR: str | None = None
_PARENT: int | None = None


def _init_worker(spec: LabelSpec, boxes: dict[str, np.ndarray] | None, threads: int, parent: int) -> None:
    """Worker initializer: a worker ignores Ctrl-C (the parent stops it) and loads its own teachers."""
    import signal

    global _WORKER, _WORKER_ERROR, _PARENT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PARENT = parent  # the job's pid, given by the job: a parent killed before this runs must not be taken as the reaper
    if sys.platform.startswith("linux"):
        # A parent killed outright (SIGKILL, the OOM killer) runs no cleanup: the kernel then stops this worker too,
        # instead of leaving it blocked on the task queue for good (every worker holds the queue's write end too,
        # so it never sees end-of-file). Set before the slow imports, then check the parent did not die first.
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != _PARENT:
        os._exit(1)
    import torch

    torch.set_num_threads(threads)
    try:
        _WORKER = Labeller(spec, boxes)
    except Exception as exc:  # an initializer that raises breaks the whole executor: report it with the first task instead
        _WORKER_ERROR = f"{type(exc).__name__}: {exc}"


def _work(image: str) -> ImageResult:
    # The executor queues every image up front: a worker whose parent was killed (SIGKILL runs no cleanup) would
    # otherwise go on labelling the whole queue for nobody. Reparenting is how it notices.
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)
    if _WORKER is None:
        return ImageResult(image, error=f"labelling worker failed to start: {_WORKER_ERROR}")
    return _WORKER(image)


def terminate_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM stop the job as Ctrl-C does (cleanup runs, workers are cancelled); returns the undo.

    SIGTERM's default kills the process without running ``finally``: the
    executor's queue would be left to worker processes that no longer have
    a parent to report to.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _raise(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _raise)
    return lambda: signal.signal(signal.SIGTERM, old)


# ---- judging and writing -----------------------------------------------------------------------------------


def _round(values: np.ndarray | Sequence[float], digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def judge_image(result: ImageResult, spec: LabelSpec) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Records for one image's faces (kept or dropped, and why) and each face's consensus points."""
    n = len(result.boxes)
    if result.unreadable is not None:
        return [{"image": result.image, "face": None, "faces": 0, "kept": False, "reason": "unreadable",
                 "error": result.unreadable}], []
    if n == 0 or result.points is None:
        return [{"image": result.image, "face": None, "faces": 0, "kept": False, "reason": "no_face"}], []
    # Each teacher's estimate averages its passes on the face and on the mirrored face (test-time flipping: better
    # for every teacher on AFW, docs/label.md); the label is the consensus of those estimates.
    estimates = result.points if result.flipped is None else (result.points + result.flipped) / 2.0
    label = consensus(estimates, spec.consensus)
    per_teacher = teacher_nme(estimates, label)
    spread = per_teacher.mean(axis=0)
    flip = flip_by = None
    if result.flipped is not None:
        flip = flip_nme(consensus(result.points, spec.consensus), consensus(result.flipped, spec.consensus))
        flip_by = np.stack([flip_nme(p, f) for p, f in zip(result.points, result.flipped)])
    records = []
    for i in range(n):
        score = None if result.detector_scores is None else float(result.detector_scores[i])
        reasons = drop_reasons(spec.thresholds, float(spread[i]), None if flip is None else float(flip[i]), score)
        record: dict[str, Any] = {
            "image": result.image,
            "face": i,
            "faces": n,
            "box": _round(result.boxes[i], 2),
            "detector_score": None if score is None else round(score, 4),
            "teachers": {t: round(float(per_teacher[k, i]), 3) for k, t in enumerate(spec.teachers)},
            "disagreement": round(float(spread[i]), 3),
            "flip": None if flip is None else round(float(flip[i]), 3),
            "flip_by_teacher": None if flip_by is None else {t: round(float(flip_by[k, i]), 3) for k, t in enumerate(spec.teachers)},
            "kept": not reasons,
            "reason": reasons[0] if reasons else None,
            "reasons": reasons,
        }
        records.append(record)
    return records, list(label)


def _write_kept(spec: LabelSpec, records: list[dict[str, Any]], labels: list[np.ndarray]) -> None:
    """Image (link or copy) and .pts for each kept face; the names go into its record."""
    for record, points in zip(records, labels):
        if not record["kept"]:
            continue
        image_name, pts_name = output_names(record["image"], record["face"], spec.all_faces)
        record["stored"] = place_image(spec.source / record["image"], spec.out / image_name, spec.copy)
        write_pts(spec.out / pts_name, points)
        record["out_image"], record["pts"] = image_name, pts_name


# ---- the job ------------------------------------------------------------------------------------------------


def _check_spec(spec: LabelSpec) -> None:
    if not spec.teachers:
        raise ConfigError("give at least one --teacher (a FAN checkpoint or zoo name, or dlib)")
    if len(set(spec.teachers)) != len(spec.teachers):
        raise ConfigError(f"a teacher is named twice: {', '.join(spec.teachers)}")
    if spec.consensus not in CONSENSUS_RULES:
        raise ConfigError(f"unknown consensus rule {spec.consensus!r}; expected one of: {', '.join(CONSENSUS_RULES)}")
    if spec.max_images is not None and spec.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {spec.max_images}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spec.device):
        raise ConfigError(f"--device {spec.device!r}: expected cpu, cuda or cuda:N")
    # Bounded (fan_edge.limits): each worker is a process with a model, each thread a native one.
    if spec.workers is not None:
        check_int("--workers", spec.workers, 1, MAX_WORKERS)
    if spec.threads is not None:
        check_int("--threads", spec.threads, 1, MAX_THREADS)
    if not spec.source.is_dir():
        raise DataError(f"{spec.source}: no such folder" if not spec.source.exists() else f"{spec.source}: not a folder")
    src, out = spec.source.resolve(), spec.out.resolve()
    if _inside(out, src):
        raise ConfigError(f"--out {spec.out} is inside {spec.source}: the labels would become input; choose a folder outside it")
    if _inside(src, out):
        raise ConfigError(f"{spec.source} is inside --out {spec.out}: choose an output folder that does not hold the photos")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {spec.out}: exists and is not a folder")


def named_default(spec: LabelSpec) -> LabelSpec:
    """``spec`` with the teacher ``default`` named as the zoo model it is now.

    The alias moves when a new default is bundled; the labels' settings, records and the cards of models trained on
    them must keep saying which model labelled them, and a job resumed after the default changed must be refused
    (its settings differ) rather than mix two teachers' labels under one name.
    """
    if "default" not in spec.teachers:
        return spec
    from ..models import DEFAULT_NAME

    return dataclasses.replace(spec, teachers=tuple(DEFAULT_NAME if t == "default" else t for t in spec.teachers))


def _scope(spec: LabelSpec, boxes: dict[str, np.ndarray] | None) -> list[str]:
    """Images of the job, sorted: every image under DIR (or those the boxes file names), the first ``max_images``."""
    images = [item.image.relative_to(spec.source).as_posix() for item in scan_folder(spec.source, require_points=False)]
    if boxes is not None:
        present = set(images)
        missing = [name for name in boxes if name not in present]
        if missing:
            raise DataError(f"{spec.boxes}: names {missing[0]!r}, which is not an image under {spec.source}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        images = [name for name in images if name in boxes]
    images = images[: spec.max_images]
    stems: dict[str, str] = {}
    for name in images:
        key = Path(name).with_suffix("").as_posix()
        if key in stems:
            raise DataError(f"{stems[key]} and {name} would share one .pts in --out; rename one of them")
        stems[key] = name
    return images


def _settings(spec: LabelSpec) -> dict[str, Any]:
    """What decides a label: a rerun into the same OUT must agree on all of it."""
    return {
        "source": str(spec.source.resolve()),
        "teachers": list(spec.teachers),
        "consensus": spec.consensus,
        "flip": spec.flip,
        "all_faces": spec.all_faces,
        "boxes": None if spec.boxes is None else _sha256(spec.boxes),
        "scan_size": spec.scan_size if spec.boxes is None else None,
        "thresholds": spec.thresholds.to_dict(),
    }


def _check_settings(spec: LabelSpec, settings: dict[str, Any]) -> bool:
    """Whether OUT already has the settings file; a refusal when it holds other settings."""
    path = spec.out / SETTINGS
    if not path.is_file():
        return False
    try:
        before = json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path}: not JSON; remove it only if {spec.out} holds no labels you want to keep") from None
    changed = [k for k in settings if not isinstance(before, dict) or before.get(k) != settings[k]]
    if changed:
        raise ConfigError(f"{spec.out} holds labels made with other settings ({', '.join(changed)} differ; see {path}): "
                          "rerun with the same ones, or label into a new --out")
    return True


def label_folder(
    spec: LabelSpec,
    *,
    progress: bool = True,
    on_image: Callable[[list[dict[str, Any]]], None] | None = None,
) -> LabelSummary:
    """Label every not yet recorded image of ``spec.source`` into ``spec.out`` and summarize the whole job.

    ``on_image`` is called with each image's records once they are on disk
    (a progress hook; raising from it stops the run there, as a kill would,
    and the next run resumes after that image). Refusals are one-line
    :class:`~fan_edge.errors.FanEdgeError`\\ s, raised before any work.
    With ``spec.workers`` > 1 the workers are spawned processes: a script
    calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    _check_spec(spec)
    spec = named_default(spec)
    boxes = read_boxes_file(spec.boxes) if spec.boxes is not None else None
    scope = _scope(spec, boxes)
    settings = _settings(spec)
    has_settings = _check_settings(spec, settings)
    ledger = Ledger(spec.out / LABELS)
    done = ledger.read()
    todo = [name for name in scope if name not in done]
    if not spec.skip_unreadable:
        for name in todo:  # headers only: a bad file is found now, not hours in
            try:
                check_image_file(spec.source / name)
            except DataError as exc:
                raise DataError(f"{exc} {SKIP_HINT}") from None
    if boxes is None:  # dlib present, a valid scan size: refused now rather than in every worker
        from ..runtime.detect import DlibHogDetector

        DlibHogDetector(scan_size=spec.scan_size)
    # Load every teacher here even when workers do the labelling: an unknown name or a bad checkpoint is refused now.
    teachers = [load_teacher(t, spec.device, spec.trust) for t in spec.teachers]
    if not has_settings:
        write_text_atomic(spec.out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    summary = LabelSummary(spec.out, skipped=len(scope) - len(todo))
    workers = 1 if spec.device != "cpu" or len(todo) < 2 else (spec.workers or default_workers())
    start = time.perf_counter()
    bar = progress_bar(len(scope), "labelling", "img", initial=summary.skipped, enabled=progress)
    stop = terminate_as_interrupt()
    try:
        executor = None
        if workers == 1:
            if spec.threads is not None:
                import torch

                torch.set_num_threads(spec.threads)
            results: Iterator[ImageResult] = map(Labeller(spec, boxes, teachers), todo)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            del teachers  # the workers load their own
            threads = spec.threads or max(1, (os.cpu_count() or 1) // workers)
            # spawn: a forked child of a process that has run torch's OpenMP threads can hang. An executor, not a
            # multiprocessing.Pool: a worker that dies (killed, out of memory) breaks it loudly instead of hanging.
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                           initargs=(spec, boxes, threads, os.getpid()))
            results = executor.map(_work, todo)
        try:
            for result in results:
                if result.error is not None:
                    raise DataError(result.error)
                if result.unreadable is not None and not spec.skip_unreadable:
                    raise DataError(f"{result.unreadable} {SKIP_HINT}")
                records, labels = judge_image(result, spec)
                _write_kept(spec, records, labels)
                ledger.append(records)
                done[result.image] = records
                summary.new_images += 1
                summary.new_faces += sum(r["face"] is not None for r in records)
                bar.update(1)
                if on_image is not None:
                    on_image(records)
        except BrokenProcessPool:
            raise BackendError("a labelling worker process died (out of memory, killed, or a calling script without "
                               "`if __name__ == '__main__':`); what was labelled is kept, rerun to go on, or use --workers 1") from None
        finally:
            if executor is not None:  # a stop does not wait for the images the workers have started
                executor.shutdown(wait=summary.new_images == len(todo), cancel_futures=True)
    finally:
        stop()
        ledger.close()
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summarize(summary, done, scope, len(spec.teachers))
