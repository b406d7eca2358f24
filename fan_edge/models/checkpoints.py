"""Reading and writing FAN weights: released state dicts, TorchScript archives, fan-edge files.

Formats, told apart by content rather than by name:

- fan-edge's own: ``NAME.safetensors`` (weights, with the config in its
  metadata) and ``NAME.json`` beside it (config and model card).
- a plain state dict saved with ``torch.save`` (2DFAN-4/3DFAN-4 ``.pth.tar``),
  loaded with ``weights_only=True`` so that no pickled code can run.
- a TorchScript archive (face-alignment 1.4's ``.zip``). Loading one runs the
  code inside it, so it needs ``trust=True``.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path, write_text_atomic
from ..errors import CheckpointError, ConfigError
from .config import FANConfig

CONFIG_METADATA_KEY = "fan_edge_config"
_STACK_KEY = re.compile(r"^(m|top_m_|conv_last|bn_end|l|bl|al)(\d+)\.")


@dataclass
class Checkpoint:
    """Weights as read from disk, with the config and card when the file carries them."""

    state_dict: dict[str, torch.Tensor]
    config: FANConfig | None = None
    card: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside common training wrappers and strip DataParallel prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read weights (and config, card) from any supported format without building a model."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file")
    try:
        if _is_safetensors(p):
            return _read_safetensors(p)
        if _is_torchscript(p):
            if not trust:
                raise CheckpointError(
                    f"{p}: TorchScript archive; loading it runs code stored inside, pass trust=True (--trust) if you trust its source"
                )
            module = torch.jit.load(str(p), map_location="cpu")
            return Checkpoint(_unwrap(dict(module.state_dict()), p), source=str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        # weights_only refused something that is not a tensor container: a class, a function, a payload.
        what = _refused_global(str(exc))
        raise CheckpointError(
            f"{p}: refused to load: the file holds {what}, not just tensors (it was not executed)"
        ) from None
    except Exception as exc:  # every reader has its own error types; the user needs one line
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated, corrupt or another format: {_one_line(exc)})") from None
    return Checkpoint(_unwrap(obj, p), source=str(p))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _refused_global(message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", _ANSI.sub("", message))
    return f"the Python object {found.group(1)}" if found else "Python objects"


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = None
    try:
        if CONFIG_METADATA_KEY in metadata:
            config = FANConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        card: dict[str, Any] = {}
        card_path = path.with_suffix(".json")
        if card_path.is_file() and card_path.stat().st_size < (1 << 20):
            card = json.loads(card_path.read_text())
            if not isinstance(card, dict):
                raise ValueError("model card is not a JSON object")
            if config is None and isinstance(card.get("config"), dict):
                config = FANConfig.from_dict(card["config"])
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: bad fan-edge metadata ({exc})") from None
    return Checkpoint(state, config, card, str(path))


def infer_config(state_dict: dict[str, torch.Tensor], input_size: int = 256) -> FANConfig:
    """The architecture a state dict was saved from (input size is not in the weights)."""
    try:
        stacks = 1 + max(int(m[2]) for k in state_dict if (m := _STACK_KEY.match(k)) and m[1] == "m")
        width = int(state_dict["conv_last0.weight"].shape[0])
        landmarks = int(state_dict["l0.weight"].shape[0])
        depth = max(int(k.split(".")[1][3:]) for k in state_dict if k.startswith("m0.b1_"))
    except (ValueError, KeyError, IndexError):
        raise CheckpointError("weights do not look like a FAN (no m0/conv_last0/l0 keys)") from None
    try:
        return FANConfig(stacks=stacks, width=width, input_size=input_size, num_landmarks=landmarks, hourglass_depth=depth)
    except ConfigError as exc:
        raise CheckpointError(f"weights are not a supported FAN: {exc}") from None


def _truncate(state_dict: dict[str, torch.Tensor], stacks: int) -> dict[str, torch.Tensor]:
    """Drop the stacks a smaller model does not have, and the last kept stack's links onward."""
    kept = {}
    for key, value in state_dict.items():
        m = _STACK_KEY.match(key)
        if m:
            i = int(m[2])
            if i >= stacks or (m[1] in ("bl", "al") and i >= stacks - 1):
                continue
        kept[key] = value
    return kept


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load into ``model`` strictly, truncating extra stacks; one-line error on any mismatch."""
    stacks = getattr(getattr(model, "config", None), "stacks", None)
    if stacks is not None:
        state_dict = _truncate(state_dict, stacks)
    expected = model.state_dict()
    # Some released files omit BatchNorm's num_batches_tracked counters: they carry no weights.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} is {tuple(state_dict[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected keys {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else ""))
    if shapes:
        problems.append(f"shape mismatch {', '.join(shapes[:2])}" + (f" (+{len(shapes) - 2} more)" if len(shapes) > 2 else ""))
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    full = dict(expected)
    full.update(state_dict)
    model.load_state_dict(full, strict=True)


def save_checkpoint(model: nn.Module, path: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write fan-edge's format: ``path`` (.safetensors) and its card ``.json``, each atomically."""
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    config: FANConfig = model.config  # type: ignore[assignment]
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: config.to_json(), "fan_edge_version": __version__}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    full_card = {"config": config.to_dict(), "fan_edge_version": __version__}
    full_card.update(card or {})
    write_text_atomic(out.with_suffix(".json"), json.dumps(full_card, indent=2, sort_keys=True) + "\n")
    return out
