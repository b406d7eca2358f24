"""The one training loop: ``fan-train``, ``fan-distill``, ``fan-prune``'s fine-tune and ``fan-quantize --qat``.

Resumable to the batch: the order of faces in an epoch and every augmentation
draw are functions of ``(seed, epoch, index)``, so a run restarted from its
last checkpoint sees exactly the batches it would have seen. Checkpoints and
the best model are written atomically; one process in a ``torchrun`` group
(rank 0) writes, validates and logs. What differs between the commands is a
:class:`Recipe` (the model's preparation, the loss, extra checkpoint state,
the files written); the loop, resume, saving, signals, stop rules, the LR
schedule, the log, the progress bar, ``--device`` and ``torchrun`` are shared.
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_path, check_writable, write_text_atomic
from ..evaluation import evaluate_model
from ..files.folders import read_folder
from ..errors import BoxError, CheckpointError, ConfigError
from ..limits import check_batch
from ..progress import progress_bar
from ..models import create_model, save_checkpoint
from ..models.checkpoints import load_optimizer_state, load_weights, read_training_state
from ..models.complexity import count_macs, count_parameters
from ..models.pretrained import combined_config, config_and_weights
from ..models.fan import FAN
from .distributed import Distributed
from .losses import LOSSES, stack_weights, stacked_loss
from .sources import ConcatFaces, build_datasets, epoch_pool
from .compute import check_autocast, memory_layout, training_forward
from .ema import WeightAverage, averaged
from .spec import TrainSpec
from .warm_start import warm_start

LAST = "last.ckpt"
# What a resume reads from LAST, with types: a file that lacks one is refused in one line, not a KeyError mid-resume.
RESUME_ENTRIES = {"model": dict, "optimizer": dict, "epoch": int, "batch": int, "best": dict, "history": list,
                  "spec": dict, "spec.epochs": int, "config": dict}
BEST = "best.safetensors"
FINAL = "final.safetensors"
# Settings of one invocation, not of the run: a resume takes them from the command, everything else from LAST.
# The forward precision is one of them: it changes how fast a run goes, not what it trains (docs/zoo.md, Training notes).
RUN_CONTROLS = ("out", "workers", "device", "max_minutes", "max_batches", "checkpoint_minutes", "autocast")
log = logging.getLogger("fan_edge.train")


def epoch_batches(n: int | np.ndarray, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded permutation of ``range(n)`` (or of a pool of indices,
    :func:`fan_edge.train.sources.epoch_pool`), dealt round-robin, last partial batch dropped."""
    pool = np.asarray(n) if isinstance(n, np.ndarray) else np.arange(n)
    order = pool[np.random.default_rng([seed, epoch, 7919]).permutation(len(pool))]
    n = len(pool)
    usable = (n // (batch_size * world)) * batch_size * world
    mine = order[:usable][rank::world]
    return [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]


_EPOCH_LINE = re.compile(r"\bepoch (\d+)/\d+ ")


def epoch_line(entry: dict[str, Any], epochs: int) -> str:
    """The log line of one history entry, ``epoch N/M loss=... seconds=...``: one format for fan-train and fan-quantize."""
    figures = " ".join(f"{k}={v:.4f}" if isinstance(v, float) and k != "seconds" else f"{k}={v}"
                       for k, v in entry.items() if k != "epoch")
    return f"epoch {entry['epoch']}/{epochs} {figures}"


def unlogged_epochs(log_file: Path, history: list[dict[str, Any]], epochs: int) -> list[str]:
    """Epoch lines of ``history`` that ``log_file`` lacks, for a resumed run to write.

    Why: the end of an epoch saves the state, then logs its line. A run
    killed between the two resumes after that epoch (the state has it) and
    never logs it again; this restores the line, so that the log lists every
    epoch of the history exactly once (logging first and saving second made
    a kill between them repeat the epoch and its line).
    """
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        text = ""
    logged = {int(m.group(1)) for m in _EPOCH_LINE.finditer(text)}
    return [epoch_line(entry, epochs) for entry in history
            if isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and entry["epoch"] not in logged]


def _setup_logging(out: Path, is_main: bool, filename: str = "train.log") -> None:
    """The run's log (``out/filename`` and stderr, rank 0 only) on this module's logger and its children."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    if not is_main:
        log.addHandler(logging.NullHandler())
        return
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    fh = logging.FileHandler(out / filename)
    fh.setFormatter(fmt)
    log.addHandler(fh)
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    log.addHandler(sh)


def build_model(spec: TrainSpec) -> FAN:
    """The student: a registry variant or a checkpoint, with the spec's preprocessing overrides."""
    model = create_model(spec.model, input_size=spec.input_size, head_stride=spec.head_stride)
    model.fine_every_stack = spec.fine_every_stack
    if spec.init:
        warm_start(model, spec.init)
    crop = model.weights.crop  # crop and refinement are the weights' record's (models/pretrained.py)
    if spec.reference_scale is not None or spec.center_shift is not None:
        crop = type(crop)(
            reference_scale=spec.reference_scale if spec.reference_scale is not None else crop.reference_scale,
            center_shift=spec.center_shift if spec.center_shift is not None else crop.center_shift,
            window=crop.window,
        )
    model.weights = model.weights.replace(crop=crop, refine=spec.refine or model.weights.refine)
    return model


def make_optimizer(spec: TrainSpec, params: Any) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ConfigError(f"unknown optimizer {spec.optimizer!r}; expected adam, adamw or rmsprop")


def lr_factor(spec: TrainSpec, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` epochs into the run (fractional)."""
    if spec.warmup_epochs > 0 and progress < spec.warmup_epochs:
        return max(progress / spec.warmup_epochs, 0.01)
    if spec.schedule == "cosine":
        span = max(spec.epochs - spec.warmup_epochs, 1e-9)
        t = min(max((progress - spec.warmup_epochs) / span, 0.0), 1.0)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))
    if spec.schedule == "step":
        return 0.1 ** int(progress // spec.step_epochs)
    raise ConfigError(f"unknown schedule {spec.schedule!r}; expected cosine or step")


def _card(spec: TrainSpec, model: FAN, figures: dict[str, float], epoch: int, dataset: ConcatFaces,
          history: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [h["seconds"] for h in history if isinstance(h.get("seconds"), (int, float))]
    return {
        "recipe": spec.command(),
        "train_spec": spec.to_dict(),
        "data": {"train": spec.data, "validation": spec.val, "boxes": "ground-truth landmark boxes",
                 "sources": [s.to_dict() for s in dataset.sources]},
        "epoch_seconds": round(float(np.median(seconds)), 1) if seconds else None,
        "seed": spec.seed,
        "epoch": epoch,
        "parameters": count_parameters(model),
        "macs": count_macs(model, model.config.input_size),
        "figures": figures,
    }


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def validate(model: FAN, spec: TrainSpec, device: torch.device) -> dict[str, float]:
    """The model's figures on ``spec.val`` (NME etc., in percent), evaluated on ``device``."""
    assert spec.val is not None
    result = evaluate_model(model, spec.val, batch_size=32, device=str(device))
    return {k: round(v, 4) for k, v in result.scores.as_percent().items()}


def heatmap_loss(spec: TrainSpec, outputs: list[torch.Tensor], batch: dict[str, Any], images: torch.Tensor,
                 teacher: FAN | None, weights: list[float], device: torch.device) -> torch.Tensor:
    """The heatmap loss on every stack: against the ground truth; with a teacher (fan-distill, fan-prune, QAT),
    ``distill_weight`` of it against the teacher's heatmaps and the rest against the ground truth of the faces
    that have it."""
    target = batch["heatmaps"].to(device, non_blocking=True)
    if teacher is None:
        return stacked_loss(outputs, target, spec.loss, weights)
    mask = batch["has_points"].to(device).float()
    with torch.no_grad():
        view = batch["teacher_image"].to(device, non_blocking=True) if "teacher_image" in batch else images
        soft = teacher_heatmaps(teacher, view, outputs[-1].shape[-1])
    loss = spec.distill_weight * stacked_loss(outputs, soft, spec.loss, weights)
    if mask.sum() > 0:
        loss = loss + (1 - spec.distill_weight) * stacked_loss(outputs, target, spec.loss, weights, mask)
    return loss


class Recipe:
    """What makes a run of :func:`train` one command or another: the hooks of the one training loop.

    The loop is shared (resume to the batch, atomic saves with the state
    saved before its epoch's log line, signals and stop rules, the LR
    schedule, the log and progress bar, ``--device`` and ``torchrun``); a
    recipe says what differs:

    - :meth:`prepare_model`: the student, new or rebuilt from a saved state
      (QAT wraps it in fake quantizers once the float weights are loaded);
    - :meth:`loss`: :func:`heatmap_loss` (the ground truth, plus the
      teacher's heatmaps when the spec names a teacher);
    - :meth:`extra_state`: entries ``last.ckpt`` holds beside the trainer's
      (QAT: its quantizers' config), read back by :meth:`resumed_spec` and
      :meth:`prepare_model` with :attr:`resume_entries` checked first;
    - :meth:`make_optimizer`, :meth:`train_mode`, :meth:`keep_best`,
      :meth:`finish`: parameter groups, BatchNorm, the files written.

    This base is fan-train and fan-distill; fan-prune's fine-tune is
    fan-distill of the pruned checkpoint (its pruned architecture is the
    channel map in its config, which ``last.ckpt`` keeps too);
    :class:`fan_edge.quantize.qat.QATRecipe` is fan-quantize --qat.
    """

    log_file = "train.log"
    progress_label = "epoch"
    resume_entries: dict[str, Any] = RESUME_ENTRIES
    channels_last: bool = True  # the model and batches channels-last on the CPU (train/compute.py)
    require_points: bool | None = None  # only faces with .pts; None: unless a teacher boxes the others

    def resumed_spec(self, saved: dict[str, Any], given: TrainSpec, path: Path) -> TrainSpec:
        """The spec a resume continues with: the saved one, with ``given``'s run controls and at least its epochs."""
        controls = {name: getattr(given, name) for name in RUN_CONTROLS}
        return TrainSpec.from_dict({**saved, **controls, "epochs": max(given.epochs, saved["epochs"])})

    def spec_dict(self, spec: TrainSpec) -> dict[str, Any]:
        """The run's spec as ``last.ckpt`` and ``spec.json`` record it."""
        return spec.to_dict()

    def prepare_model(self, spec: TrainSpec, state: dict[str, Any] | None, dist: Distributed, out: Path) -> FAN:
        """The student: new (``state`` None) or as saved; the trainer moves it to the device after."""
        if state is None:
            return build_model(spec)
        model = FAN(*config_and_weights(state["config"]))
        load_weights(model, state["model"])
        return model

    def make_optimizer(self, spec: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(spec, model.parameters())

    def train_mode(self, net: nn.Module) -> None:
        """Put the network in training mode (at the start of every epoch: validation leaves it in eval mode)."""
        net.train()

    def loss(self, spec: TrainSpec, outputs: list[torch.Tensor], batch: dict[str, Any], images: torch.Tensor,
             teacher: FAN | None, weights: list[float], device: torch.device) -> torch.Tensor:
        return heatmap_loss(spec, outputs, batch, images, teacher, weights, device)

    def extra_state(self, model: FAN) -> dict[str, Any]:
        """Entries ``last.ckpt`` holds beside the trainer's own (:data:`RESUME_ENTRIES`)."""
        return {}

    def keep_best(self, model: FAN, spec: TrainSpec, figures: dict[str, float], epoch: int, dataset: ConcatFaces,
                  history: list[dict[str, Any]], out: Path) -> None:
        """Write the best model so far (or, without --val, the latest): ``best.safetensors`` with its card."""
        save_checkpoint(model, out / BEST, _card(spec, model, figures, epoch, dataset, history))

    def finish(self, model: FAN, spec: TrainSpec, history: list[dict[str, Any]], best: dict[str, Any],
               dataset: ConcatFaces, out: Path) -> dict[str, Any]:
        """The end of the schedule (rank 0): write the final model; returns entries for the summary."""
        # The weights at the end of the schedule, selected by nothing: what zoo models ship.
        final_figures = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("epoch", "loss", "seconds")}
        save_checkpoint(model, out / FINAL, _card(spec, model, final_figures, spec.epochs, dataset, history))
        log.info("done: final %s, best %s", json.dumps(final_figures), json.dumps(best))
        return {}


def load_teacher(name: str, student: FAN, device: Any) -> FAN:
    """The frozen teacher on ``device``; its crop must be the student's, or its heatmaps would not line up."""
    teacher = create_model(name).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher.weights.crop != student.weights.crop:
        raise ConfigError(
            f"teacher crop {teacher.weights.crop} differs from the student's {student.weights.crop}: its heatmaps would not line up; "
            "give the student the teacher's --reference-scale and --center-shift"
        )
    return teacher


def _stop_reason(signalled: bool, spec: TrainSpec, started: float, done_batches: int) -> str | None:
    """Why this process should stop after the batch it just did ("signal", "--max-minutes", "--max-batches"), or None."""
    if signalled:
        return "signal"
    if spec.max_minutes is not None and time.monotonic() - started > 60 * spec.max_minutes:
        return "--max-minutes"
    if spec.max_batches is not None and done_batches >= spec.max_batches:
        return "--max-batches"
    return None


def _restore_handlers(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _position(state: dict[str, Any] | None) -> tuple[int, int, dict[str, Any], list[dict[str, Any]]]:
    """Where a run starts: epoch, batch, best figures and history (a fresh run: 0, 0, {}, [])."""
    if not state:
        return 0, 0, {}, []
    best = state["best"] if isinstance(state.get("best"), dict) else {}  # a QAT checkpoint of the old loop has none
    return state["epoch"], state["batch"], best, state["history"]


def _announce(out: Path, spec: TrainSpec, recipe: Recipe, model: FAN, dataset: Any, history: list[dict[str, Any]],
              dist: Distributed) -> None:
    """The run's opening lines (and any epoch line a kill cut off), and spec.json: rank 0 only."""
    for line in unlogged_epochs(out / recipe.log_file, history, spec.epochs):  # killed between a save and its line
        log.info("%s (logged on resume)", line)
    write_text_atomic(out / "spec.json", json.dumps(recipe.spec_dict(spec), indent=2) + "\n")
    log.info("model %s: %d params, %.3f GMACs, %d faces, device %s%s, world %d",
             spec.model, count_parameters(model), count_macs(model, model.config.input_size) / 1e9,
             len(dataset), dist.device, f" (forward in {spec.autocast})" if spec.autocast else "", dist.world)
    for source in dataset.sources:
        log.info("data %s", source.describe())


def validation_due(spec: TrainSpec, epoch: int) -> bool:
    """Whether the run validates after ``epoch`` (1-based): every ``val_every`` epochs and after the last."""
    return spec.val is not None and (epoch % spec.val_every == 0 or epoch == spec.epochs)


def _validate_epoch(model: FAN, spec: TrainSpec, recipe: Recipe, epoch: int, entry: dict[str, Any], best: dict[str, Any],
                    dataset: Any, history: list[dict[str, Any]], out: Path, device: Any) -> dict[str, Any]:
    """Validate after ``epoch`` (1-based) when due, add the figures to ``entry``, let the recipe keep the best; the best."""
    if not spec.val:
        recipe.keep_best(model, spec, {}, epoch, dataset, history, out)
        return best
    if not validation_due(spec, epoch):
        return best
    figures = validate(model, spec, device)
    entry.update(figures)
    if not best or figures["nme_io"] < best["nme_io"]:
        best = dict(figures, epoch=epoch)
        recipe.keep_best(model, spec, figures, epoch, dataset, history, out)
    return best


def _validate_averaged(model: FAN, average: WeightAverage | None, spec: TrainSpec, recipe: Recipe, epoch: int,
                       entry: dict[str, Any], best: dict[str, Any], dataset: Any, history: list[dict[str, Any]], out: Path,
                       device: Any) -> dict[str, Any]:
    """:func:`_validate_epoch` on the run's weight average when it keeps one (``--ema``), with the raw weights'
    NME io beside it in ``entry`` (``raw_nme_io``): each epoch's line shows what the average gained."""
    if average is not None and validation_due(spec, epoch):
        entry["raw_nme_io"] = validate(model, spec, device)["nme_io"]
    with averaged(average, model):
        return _validate_epoch(model, spec, recipe, epoch, entry, best, dataset, history, out, device)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module,
                   average: WeightAverage | None) -> None:
    """One step on ``loss``; the weight average (``--ema``), when the run keeps one, takes in the new weights."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if average is not None:
        average.update(model)


def weight_average(spec: TrainSpec, model: nn.Module, state: dict[str, Any] | None, last_path: Path) -> WeightAverage | None:
    """The run's average of its weights (``--ema``): new, or as ``last.ckpt`` saved it; None without ``--ema``."""
    if spec.ema is None:
        return None
    if state is None:
        return WeightAverage(model, spec.ema)
    if "ema" not in state:
        raise CheckpointError(f"{last_path}: the run keeps a weight average (--ema) but this checkpoint holds none")
    return WeightAverage.from_state(model, state["ema"], str(last_path))


def train(spec: TrainSpec, resume: bool = True, recipe: Recipe | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final summary (best figures, paths).

    ``recipe``: the command's hooks (default: fan-train's, or fan-distill's when the spec names a teacher).
    """
    recipe = recipe if recipe is not None else Recipe()
    dist = Distributed.from_env(spec.device)
    out = check_writable(spec.out, "--out", kind="folder")  # a one-line error now, not a traceback at the first save
    _setup_logging(out, dist.is_main, recipe.log_file)
    torch.manual_seed(spec.seed)
    if spec.loss not in LOSSES:
        raise ConfigError(f"unknown loss {spec.loss!r}; expected one of {', '.join(LOSSES)}")

    last_path = out / LAST
    state = read_training_state(last_path, recipe.resume_entries) if resume and last_path.is_file() else None
    if state is not None:
        spec = recipe.resumed_spec(state["spec"], spec, last_path)
        log.info("resuming %s at epoch %d batch %d", last_path, state["epoch"], state["batch"])

    check_autocast(spec.autocast, dist.device)
    model = recipe.prepare_model(spec, state, dist, out)
    check_batch(spec.batch_size, model.config.input_size)  # at the model's own input size when the spec sets none
    teacher = load_teacher(spec.teacher, model, dist.device) if spec.teacher else None
    layout = memory_layout(dist.device, recipe.channels_last)
    model.to(dist.device, memory_format=layout)
    model.train()
    require_points = teacher is None if recipe.require_points is None else recipe.require_points
    dataset = build_datasets(spec, model, require_points=require_points,
                        teacher_size=None if teacher is None else teacher.config.input_size)
    if spec.val is not None:
        read_folder(spec.val)  # a bad --val is a one-line error now, not after the first epoch
    if teacher is not None and not require_points:
        _box_unlabeled(dataset, teacher, model, dist.device)
    net: nn.Module = dist.wrap(model)
    optimizer = recipe.make_optimizer(spec, model)
    if state is not None:
        load_optimizer_state(optimizer, state["optimizer"], last_path)
    weights = stack_weights(model.config.stacks, spec.stack_weights)
    average = weight_average(spec, model, state, last_path)
    start_epoch, start_batch, best, history = _position(state)
    if dist.is_main:
        _announce(out, spec, recipe, model, dataset, history, dist)

    stop = {"flag": False}

    def _on_signal(signum: int, _frame: Any) -> None:
        stop["flag"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    done_batches = 0
    last_save = time.monotonic()

    def save(epoch: int, batch: int) -> None:
        if dist.is_main:
            _save_state(last_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": batch,
                "best": best, "history": history, "spec": recipe.spec_dict(spec), "config": combined_config(model.config, model.weights),
                **recipe.extra_state(model), **({"ema": average.state_dict()} if average is not None else {}),
            })

    try:
        for epoch in range(start_epoch, spec.epochs):
            dataset.set_epoch(epoch)
            batches = epoch_batches(epoch_pool(dataset, spec.seed, epoch), spec.batch_size, spec.seed, epoch, dist.rank, dist.world)
            epoch_started = time.monotonic()
            first = start_batch if epoch == start_epoch else 0
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=batches[first:], num_workers=spec.workers, persistent_workers=False,
            )
            recipe.train_mode(net)
            losses: list[float] = []
            progress = progress_bar(len(batches), f"{recipe.progress_label} {epoch + 1}/{spec.epochs}", "batch", initial=first,
                                    enabled=dist.is_main)
            for b, batch in enumerate(loader, start=first):
                for group in optimizer.param_groups:
                    group["lr"] = spec.lr * lr_factor(spec, epoch + b / max(len(batches), 1))
                images = batch["image"].to(dist.device, non_blocking=True, memory_format=layout)
                outputs = training_forward(net, images, spec.autocast, dist.device)
                loss = recipe.loss(spec, outputs, batch, images, teacher, weights, dist.device)
                optimizer_step(optimizer, loss, model, average)
                losses.append(float(loss.detach()))
                progress.set_postfix(loss=f"{np.mean(losses[-20:]):.5f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                progress.update(1)
                done_batches += 1
                reason = _stop_reason(stop["flag"], spec, started, done_batches)
                # Every rank must stop at the same batch, or one would wait forever in the next all-reduce.
                if dist.any(reason is not None):
                    save(epoch, b + 1)
                    reason = reason or "another rank"
                    log.info("stopped by %s at epoch %d batch %d; resume with the same command", reason, epoch, b + 1)
                    return {"stopped": True, "reason": reason, "epoch": epoch, "best": best, "out": str(out)}
                if time.monotonic() - last_save > 60 * spec.checkpoint_minutes:
                    save(epoch, b + 1)
                    last_save = time.monotonic()
            progress.close()
            entry: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
            if first == 0:  # a whole epoch in this process: its time is what a card reports
                entry["seconds"] = round(time.monotonic() - epoch_started, 1)
            if dist.is_main:
                best = _validate_averaged(model, average, spec, recipe, epoch + 1, entry, best, dataset, history, out, dist.device)
            history.append(entry)
            save(epoch + 1, 0)  # the state first: a kill before the line below loses no line (resume writes it)
            last_save = time.monotonic()
            if dist.is_main:
                log.info("%s", epoch_line(entry, spec.epochs))
            dist.barrier()
    finally:
        _restore_handlers(old_handlers)
        dist.close()
    with averaged(average if dist.is_main else None, model):  # what the final checkpoint holds
        extra = recipe.finish(model, spec, history, best, dataset, out) if dist.is_main else {}
    return {"stopped": False, "epoch": spec.epochs, "best": best, "out": str(out), **extra}


def teacher_heatmaps(teacher: FAN, images: torch.Tensor, size: int) -> torch.Tensor:
    """The teacher's heatmaps for the student's crops, on the student's heatmap grid.

    A student at another input size sees the same crop window at another
    resolution. The training data cuts the teacher its own view at its own
    size (``FaceFolder(teacher_size=...)``); crops at any other size are
    resampled to it here (bilinear with pixel centres kept,
    ``align_corners=False``). Its heatmaps are area-resampled to the student's
    grid, which for a 2x ratio puts each student cell exactly at the mean of
    the two teacher cells it covers; onto a finer grid (a fine-head student)
    they are resampled bilinearly, pixel centres kept.
    """
    s = teacher.config.input_size
    if images.shape[-1] != s:
        images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
    heatmaps = teacher(images)
    if heatmaps.shape[-1] > size:
        heatmaps = F.interpolate(heatmaps, size=(size, size), mode="area")
    elif heatmaps.shape[-1] < size:  # a fine-head student of a coarse teacher: area would repeat cells in blocks
        heatmaps = F.interpolate(heatmaps, size=(size, size), mode="bilinear", align_corners=False)
    return heatmaps


@torch.no_grad()
def _box_unlabeled(dataset: ConcatFaces, teacher: FAN, student: FAN, device: torch.device) -> None:
    """Give faces without .pts a box: the teacher's landmarks on the whole image, boxed."""
    from ..files.folders import landmark_boxes
    from ..files.images import load_image
    from ..runtime.crop import check_boxes, crop_matrix, warp_image
    from ..runtime.decode import crop_points_to_image, decode_heatmaps
    from ..runtime.image import to_network_input

    size = teacher.config.input_size
    for part in dataset.parts:
        for i, item in enumerate(part.items):
            if item.pts is not None:
                continue
            image = load_image(item.image)
            h, w = image.shape[:2]
            side = min(h, w) * teacher.weights.crop.reference_scale / (2 * teacher.weights.crop.window)
            box = np.array([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2])
            m = crop_matrix(box, size, teacher.weights.crop)
            x = torch.from_numpy(to_network_input(warp_image(image, m, size)[None])).to(device)
            pts, _ = decode_heatmaps(teacher(x).float().cpu().numpy(), size, teacher.weights.refine)
            found = landmark_boxes(crop_points_to_image(pts, m[None]))[0]
            try:  # landmarks collapsed into a point or scattered far off: keep the centre box the crop used
                part.boxes[i] = check_boxes(found, w, h)[0]
            except BoxError:
                part.boxes[i] = box
