"""``fan-prune``: prune a FAN, save it, then fine-tune it against the unpruned model with the project's trainer.

The run directory holds ``pruned.safetensors`` (the pruned network before
fine-tuning, with its card) and then everything ``fan-train`` writes
(``train.log``, ``last.ckpt``, ``best.safetensors``, ``final.safetensors``);
the fine-tuned cards also carry the pruning record. Running the same command
again resumes: the pruned model is reused when its recorded settings match,
and the trainer continues from ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...atomic import write_text_atomic
from ...errors import CheckpointError, ConfigError
from ...models import create_model, read_checkpoint, save_checkpoint
from ...train import TrainSpec, train
from .structured import PruneReport, prune_model

PRUNED = "pruned.safetensors"


@dataclass
class PruneSpec:
    """What to cut; ``model`` is also the teacher unless ``teacher`` names another."""

    model: str = "default"
    ratio: float | None = None
    stacks: int | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    importance: str = "l2"
    round_to: int | None = None
    teacher: str | None = None


def _settings(spec: PruneSpec) -> dict[str, Any]:
    return {
        "model": spec.model, "ratio": spec.ratio, "stacks": spec.stacks, "ratios": dict(sorted(spec.ratios.items())),
        "importance": spec.importance, "round_to": spec.round_to,
    }


def _reuse(path: Path, spec: PruneSpec) -> bool:
    """True when ``path`` holds a model pruned with ``spec``'s settings; ConfigError when it was pruned otherwise."""
    if not path.is_file():
        return False
    try:
        recorded = read_checkpoint(path).card.get("pruning", {}).get("request")
    except CheckpointError:
        recorded = None
    if recorded != _settings(spec):
        raise ConfigError(
            f"{path} was pruned with other settings ({json.dumps(recorded, sort_keys=True)}); "
            "pass --fresh to prune again, or choose another --out"
        )
    return True


def prune_checkpoint(spec: PruneSpec, out: Path, command: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Prune ``spec.model`` and write ``out/pruned.safetensors`` with a card (MACs, channel counts, command)."""
    source = create_model(spec.model)
    pruned, report = prune_model(
        source, spec.ratio, stacks=spec.stacks, ratios=spec.ratios or None, importance=spec.importance, round_to=spec.round_to
    )
    record = pruning_record(spec, report, command)
    card = {
        "description": f"{spec.model} pruned: {_summary(report)} (before fine-tuning)",
        "source": spec.model,
        "pruning": record,
        "macs": report.macs_after,
        "parameters": report.params_after,
    }
    path = save_checkpoint(pruned, out / PRUNED, card)
    return path, record


def pruning_record(spec: PruneSpec, report: PruneReport, command: str | None) -> dict[str, Any]:
    return {"request": _settings(spec), **({"command": command} if command else {}), **report.to_dict()}


def _summary(report: PruneReport) -> str:
    return (
        f"{report.macs_before / 1e6:.1f} -> {report.macs_after / 1e6:.1f} MMACs "
        f"({100 * report.macs_reduction:.1f}% fewer), channels {report.groups_after}"
    )


def _stamp_cards(out: Path, record: dict[str, Any], command: str | None) -> None:
    """Add the pruning record to the trainer's cards: the fine-tuned model is the pruned model's descendant."""
    for name in ("best.json", "final.json"):
        path = out / name
        if not path.is_file():
            continue
        card = json.loads(path.read_text())
        card["pruning"] = record
        card["fine_tune_recipe"] = card.get("recipe")
        if command:
            card["recipe"] = command
        write_text_atomic(path, json.dumps(card, indent=2, sort_keys=True) + "\n")


def run_prune(
    spec: PruneSpec, fine_tune: TrainSpec, *, fresh: bool = False, command: str | None = None, log=print
) -> dict[str, Any]:
    """Prune (or reuse the pruned model in ``fine_tune.out``), then distil from the unpruned model for ``fine_tune.epochs``.

    ``fine_tune.model`` and ``.teacher`` are set here: the student is the
    pruned checkpoint, the teacher ``spec.teacher`` or the unpruned model.
    ``fine_tune.epochs == 0`` prunes only.
    """
    out = Path(fine_tune.out)
    if fine_tune.epochs < 0:
        raise ConfigError(f"--epochs must be 0 (prune only) or more, got {fine_tune.epochs}")
    if fine_tune.epochs > 0 and not fine_tune.data:
        raise ConfigError("fine-tuning needs training faces: give --data DIR (or --epochs 0 to prune only)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / PRUNED
    parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not fresh and _reuse(path, spec):
        record = read_checkpoint(path).card["pruning"]
        log(f"reusing {path} (pruned with the same settings)")
    elif parallel:  # every rank would prune and write the same file at once
        raise ConfigError(f"under torchrun, prune first: run this command once with --epochs 0 (writes {path}), then torchrun it")
    else:
        path, record = prune_checkpoint(spec, out, command)
    log(
        f"pruned {spec.model}: {record['macs_before'] / 1e6:.1f} -> {record['macs_after'] / 1e6:.1f} MMACs "
        f"({100 * record['macs_reduction']:.1f}% fewer), parameters {record['parameters_before']:,} -> "
        f"{record['parameters_after']:,}, channels {record['channels_after']} -> {path}"
    )
    summary: dict[str, Any] = {"pruned": str(path), "pruning": record, "out": str(out)}
    if fine_tune.epochs == 0:
        return summary
    fine_tune.model = str(path)
    fine_tune.teacher = spec.teacher or spec.model
    result = train(fine_tune, resume=not fresh)
    summary.update(result)
    if os.environ.get("RANK", "0") == "0":  # the trainer's writer
        _stamp_cards(out, record, command)
    return summary


def command_line(argv: list[str]) -> str:
    """The fan-prune command as typed, for the cards."""
    return " ".join(shlex.quote(a) for a in ["fan-prune", *argv])
