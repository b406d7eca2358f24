"""Reading and writing FAN weights: released state dicts, TorchScript archives, fan-edge files.

Formats, told apart by content rather than by name:

- fan-edge's own: ``NAME.safetensors`` (weights, with the architecture and
  the weights' crop and refinement in its metadata) and ``NAME.json`` beside
  it (the same, and the model card). Files written before the crop and
  refinement moved to the weights record (:mod:`fan_edge.models.pretrained`)
  hold them inside the config; they read the same.
- a plain state dict saved with ``torch.save`` (2DFAN-4/3DFAN-4 ``.pth.tar``),
  loaded with ``weights_only=True`` so that no pickled code can run.
- a TorchScript archive (face-alignment 1.4's ``.zip``). Loading one runs the
  code inside it, so it needs ``trust=True``.

Every file is untrusted (see :mod:`fan_edge.models.safe_load`): pickles, in
any protocol from 2 to 5, are read by fan-edge's own allow-list unpickler
(nothing is imported or constructed beyond what a state dict needs, whatever
other libraries registered with torch process-wide), the sizes a file declares
(a zip's directory, each pickled storage, a safetensors header) are checked
against :data:`~fan_edge.limits.MAX_CHECKPOINT_BYTES` before anything is read,
the tensors must be plain tensors under string keys, and the architecture a
file declares or implies must fit the tensors it holds and stay within
:mod:`fan_edge.limits` before any network is built (a small file must not
make fan-edge allocate gigabytes). Resumable training states (``last.ckpt``)
go through :func:`read_training_state`, which adds checks of the entries a
resume needs. Any problem is a one-line
:class:`~fan_edge.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_path, write_text_atomic
from ..errors import CheckpointError, ConfigError
from ..limits import MAX_PARAMETERS
from .config import FANConfig
from .pretrained import CONFIG_METADATA_KEY, UNTRAINED, WEIGHTS_METADATA_KEY, Weights, card_preprocessing, split_config
from .safe_load import RefusedPickle, check_zip_archive, meta_tensors, read_safetensors, read_safetensors_header, torch_load
from .storage import decode, encode, is_scale

# MAX_PARAMETERS (fan_edge.limits, re-exported here): a file implying more (e.g. a tiny file whose tensors are
# zero-stride views with huge shapes) is refused before a network of that size is allocated.
MAX_CARD_BYTES = 1 << 20
# A state-dict key of one stack's module ("m0.", "top_m_1.", "l3."...): group 1 the module, group 2 the stack.
STACK_KEY = re.compile(r"^(m|top_m_|conv_last|bn_end|l|bl|al|fine)(\d+)\.")


@dataclass
class Checkpoint:
    """Weights as read from disk, with the architecture and card when the file carries them.

    ``weights`` is their record (:class:`~fan_edge.models.pretrained.Weights`):
    the crop and refinement the file says it was trained with, else FAN's
    released ones (a 2DFAN-4 state dict says nothing and was trained with
    those), and the card.
    """

    state_dict: dict[str, torch.Tensor]
    config: FANConfig | None = None
    card: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    weights: Weights = UNTRAINED

    def __post_init__(self) -> None:
        if self.weights is UNTRAINED and self.source:
            self.weights = Weights(name=_stem(self.source), file=self.source, meta=self.card)


def _stem(path: str) -> str:
    return re.sub(r"(\.pth)?\.(tar|pth|pt|safetensors|zip|bin)$", "", Path(path).name) or "weights"


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
    if not is_state_dict(obj):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty mapping of string keys to plain tensors.

    Plain: dense, not quantized, real numbers, no tensor subclass; anything
    else would fail (or do something unplanned) only when copied into a model.
    """
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(map(_plain_tensor, obj.values()))


def _plain_tensor(value: Any) -> bool:
    return (
        type(value) in (torch.Tensor, nn.Parameter)
        and value.layout == torch.strided
        and not value.is_quantized
        and not value.is_complex()
        and value.device.type == "cpu"
    )


def _check_file(p: Path) -> None:
    """A file that exists, is not empty and, if a zip, declares bounded contents (before any zip reader lists it)."""
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file")
    with open(p, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    if zipped:
        try:
            check_zip_archive(p)
        except CheckpointError as exc:
            raise CheckpointError(f"{p}: {exc}") from None
        except Exception as exc:  # a damaged directory: Python's zip reader has its own errors
            raise CheckpointError(f"{p}: not a readable checkpoint (a damaged zip: {_one_line(exc)})") from None


def _load_pickle(p: Path) -> Any:
    """A ``torch.save`` file read by the allow-list unpickler with its sizes checked first; one-line errors, payloads
    refused unrun."""
    try:
        torchscript = _is_torchscript(p)
    except Exception:  # a damaged zip: the reader below says what is wrong with it
        torchscript = False
    if torchscript:
        raise CheckpointError(f"{p}: a TorchScript archive, not a pickled state dict")
    try:
        return torch_load(p)
    except RefusedPickle as exc:
        # Something that is not a tensor container: a class, a function, a payload. Nothing of it ran.
        raise CheckpointError(f"{p}: refused to load: the file holds {_refused_global(str(exc))}, not just tensors "
                              "(it was not executed)") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    except Exception as exc:  # every reader has its own error types; the user needs one line
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated, corrupt or another format: {_one_line(exc)})") from None


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read weights (and config, card) from any supported format without building a model."""
    p = Path(path)
    _check_file(p)
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
    except CheckpointError as exc:  # the safetensors checks name the problem; the path goes in front, once
        if str(exc).startswith(f"{p}: "):
            raise
        raise CheckpointError(f"{p}: {exc}") from None
    except Exception as exc:  # every reader has its own error types; the user needs one line
        raise CheckpointError(f"{p}: not a readable checkpoint (truncated, corrupt or another format: {_one_line(exc)})") from None
    return Checkpoint(_unwrap(_load_pickle(p), p), source=str(p))


def read_training_state(
    path: str | Path, required: Mapping[str, type | tuple[type, ...]], state_dicts: tuple[str, ...] = ("model",)
) -> dict[str, Any]:
    """The state a resumable run saved (``last.ckpt``), read as untrusted as any checkpoint.

    A resume indexes into the state right away, so a tampered or foreign file
    would fail with a raw KeyError deep in the trainer; here each entry of
    ``required`` must be present with its type (a dotted name such as
    ``"spec.epochs"`` looks into a nested dict; integers must be non-negative
    counters, and booleans are not integers), and the entries named in
    ``state_dicts`` must be state dicts of plain tensors. Payloads are refused
    unrun, as in :func:`read_checkpoint`.
    """
    p = Path(path)
    _check_file(p)
    state = _load_pickle(p)
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not a training state (it holds a {type(state).__name__}, not a dict)")
    for name, kind in required.items():
        value = _entry(state, name, p)
        wanted = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            expected = " or ".join(k.__name__ for k in wanted)
            raise CheckpointError(f"{p}: training state entry {name} is a {type(value).__name__}, expected {expected}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise CheckpointError(f"{p}: training state entry {name} is negative ({value})")
    for name in state_dicts:
        if not is_state_dict(_entry(state, name, p)):
            raise CheckpointError(f"{p}: training state entry {name} is not a state dict of tensors")
    return state


def _entry(state: dict[str, Any], name: str, path: Path) -> Any:
    value: Any = state
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise CheckpointError(f"{path}: not a training state of this kind of run (no entry {name})")
        value = value[part]
    return value


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, path: str | Path) -> None:
    """``optimizer.load_state_dict(state)`` with a one-line CheckpointError when the saved state does not fit."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its optimizer state does not fit this run ({_one_line(exc)})") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _refused_global(message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", _ANSI.sub("", message))
    return f"the Python object {found.group(1)}" if found else f"Python objects ({message[:120]})"


def _read_safetensors(path: Path) -> Checkpoint:
    """fan-edge's own format: header and config checked against each other and the bounds, then the tensors read."""
    entries, metadata, start = read_safetensors_header(path)
    if not entries:
        raise CheckpointError(f"{path}: holds no tensors")
    config = None
    # The weights' crop and refinement, first found wins: the weights file's own metadata (its record, else the
    # config of an older file), then the card beside it (top-level, else inside an older card's config).
    preprocessing: dict[str, Any] | None = None
    try:
        if WEIGHTS_METADATA_KEY in metadata:
            preprocessing = json.loads(metadata[WEIGHTS_METADATA_KEY])
        if CONFIG_METADATA_KEY in metadata:
            config, legacy = _config_from(json.loads(metadata[CONFIG_METADATA_KEY]))
            preprocessing = preprocessing if preprocessing is not None else legacy
        card: dict[str, Any] = {}
        card_path = path.with_suffix(".json")
        if card_path.is_file() and card_path.stat().st_size < MAX_CARD_BYTES:
            card = json.loads(card_path.read_text())
            if not isinstance(card, dict):
                raise ValueError("model card is not a JSON object")
            if config is None and isinstance(card.get("config"), dict):
                config, _ = _config_from(card["config"])
            if preprocessing is None:
                preprocessing = card_preprocessing(card)
        weights = Weights.from_preprocessing(preprocessing or {}, name=_stem(str(path)), file=str(path), meta=card)
    except (ValueError, ConfigError, RecursionError, OSError) as exc:
        raise CheckpointError(f"{path}: bad fan-edge metadata ({_one_line(exc)})") from None
    if config is not None:
        # Against the header's shapes (meta tensors, no data): a config that the weights do not fill is refused
        # before a byte of them is read.
        try:
            shapes = meta_tensors({k: v for k, v in entries.items() if not is_scale(k)})
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed tensor shapes ({_one_line(exc)})") from None
        check_fits(config, shapes, str(path))
    return Checkpoint(decode(read_safetensors(path, entries, start), str(path)), config, card, str(path), weights)


def _config_from(data: Any) -> tuple[FANConfig, dict[str, Any] | None]:
    """The architecture, and the crop and refine an older file kept inside its config (None if it did not)."""
    if not isinstance(data, dict):
        raise ValueError(f"the FAN config is a {type(data).__name__}, not a JSON object")
    try:
        return split_config(data)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:  # a config's nested fields (channels) of odd types
        raise ValueError(f"bad FAN config ({_one_line(exc)})") from None


def expected_shapes(config: FANConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a FAN of ``config`` with its shape, from a network built on the meta device (no memory)."""
    from .fan import FAN

    with torch.device("meta"):
        model = FAN(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fit_problems(
    expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor], unexpected: bool = True
) -> list[str]:
    """What keeps ``state_dict`` from loading into a model with ``expected`` tensors, first offenders first."""
    # Some released files omit BatchNorm's num_batches_tracked counters: they carry no weights.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    extra = [k for k in state_dict if k not in expected] if unexpected else []
    shapes = [
        f"{k} is {tuple(state_dict[k].shape)} in the checkpoint, {tuple(expected[k])} in the model"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
    if extra:
        problems.append(f"unexpected keys {', '.join(extra[:3])}" + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""))
    if shapes:
        problems.append(f"shape mismatch {', '.join(shapes[:2])}" + (f" (+{len(shapes) - 2} more)" if len(shapes) > 2 else ""))
    return problems


def check_fits(config: FANConfig, state_dict: Mapping[str, torch.Tensor], source: str = "weights") -> None:
    """Refuse a config that the weights do not fill, or that is too large, before a network of it is built.

    The weights may hold more than the config (extra stacks are truncated on
    loading); every tensor the config needs must be there with its shape.
    """
    count = config.num_values  # FANConfig itself refuses more than MAX_PARAMETERS; kept as the last line of defence
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: declares a FAN of {count:,} values, more than fan-edge loads ({MAX_PARAMETERS:,})")
    shapes = expected_shapes(config)
    problems = _fit_problems(shapes, state_dict, unexpected=False)
    if problems:
        raise CheckpointError(
            f"{source}: its config ({config.stacks} stacks, width {config.width}) does not fit its weights: {'; '.join(problems)}"
        )


def infer_config(state_dict: dict[str, torch.Tensor], input_size: int = 256) -> FANConfig:
    """The architecture a state dict was saved from (input size is not in the weights)."""
    try:
        stacks = 1 + max(int(m[2]) for k in state_dict if (m := STACK_KEY.match(k)) and m[1] == "m")
        width = int(state_dict["conv_last0.weight"].shape[0])
        landmarks = int(state_dict["l0.weight"].shape[0])
        depth = max(int(k.split(".")[1][3:]) for k in state_dict if k.startswith("m0.b1_"))
    except (ValueError, KeyError, IndexError):
        raise CheckpointError("weights do not look like a FAN (no m0/conv_last0/l0 keys)") from None
    try:
        config = FANConfig(stacks=stacks, width=width, input_size=input_size, num_landmarks=landmarks, hourglass_depth=depth,
                           head_stride=2 if "fine0.out.weight" in state_dict else 4)
    except ConfigError as exc:
        raise CheckpointError(f"weights are not a supported FAN: {exc}") from None
    check_fits(config, state_dict)
    return config


def _truncate(state_dict: dict[str, torch.Tensor], stacks: int) -> dict[str, torch.Tensor]:
    """Drop the stacks a smaller model does not have, and the last kept stack's links onward."""
    kept = {}
    for key, value in state_dict.items():
        m = STACK_KEY.match(key)
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
    problems = _fit_problems({k: tuple(v.shape) for k, v in expected.items()}, state_dict)
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    full = dict(expected)
    full.update(state_dict)
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameters
        raise CheckpointError(f"checkpoint does not fit the model: {_one_line(exc)}") from None


def save_checkpoint(model: nn.Module, path: str | Path, card: dict[str, Any] | None = None, storage: str = "fp32") -> Path:
    """Write fan-edge's format: ``path`` (.safetensors) and its card ``.json``, each atomically.

    The architecture (``config``) and the crop and refinement of the model's
    weights record (``model.weights``) go into both; the card's other entries
    are ``card`` (the model's own card is not copied: say what is to be kept).
    ``storage`` fp16 halves the file, int8 quarters it (convolution kernels
    as int8 with per-channel scales; :mod:`fan_edge.models.storage`); either
    loads back as float32: how a zoo model of several million parameters
    stays a few MB in the repository.
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    config: FANConfig = model.config  # type: ignore[assignment]
    weights: Weights = getattr(model, "weights", None) or UNTRAINED
    preprocessing = weights.preprocessing()
    state = encode({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, storage)
    metadata = {CONFIG_METADATA_KEY: config.to_json(), WEIGHTS_METADATA_KEY: json.dumps(preprocessing, sort_keys=True),
                "fan_edge_version": __version__}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    full_card = {"fan_edge_version": __version__}
    full_card.update(card or {})
    full_card.update(config=config.to_dict(), **preprocessing)  # what the weights file says, whatever ``card`` held
    write_text_atomic(out.with_suffix(".json"), json.dumps(full_card, indent=2, sort_keys=True) + "\n")
    return out
