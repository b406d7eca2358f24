"""Bundling a trained checkpoint into a zoo folder, with figures measured here and now.

A zoo card's figures are never copied from training logs: :func:`bundle`
re-reads the weights, evaluates them on the given folder with the project's
own evaluation, times them, and writes weights and card (with the weights'
record: crop and refinement) into the folder.

Where: the folder the caller names. Only a development checkout (the
repository itself, or an editable install of it) has a package weights folder
worth writing into, since that is what gets committed and released
(:func:`development_weights_folder`); an installed package's folder is
replaced by the next install, so there ``fan-edge bundle`` needs ``--out``.

A card travels with the package, so it holds no machine's paths: every
absolute path in it (the training card's data folders, its recipe's command
lines) is written relative to the working directory when under it (``runs/...``),
else relative to the data root when under it, else as its last folder name
(:func:`portable_card`). Relative paths stay as written.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from collections.abc import Callable
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .registry import ARCHITECTURE_NAME, WEIGHTS_PACKAGE


# An absolute path inside a string: at its start or after a space, '=', a quote, '(' or ',' (a command line's
# "--data /home/x/faces", "--out=/tmp/run"), POSIX or Windows; it runs to the next space, quote, comma or ';'.
_ABSOLUTE = re.compile(r"""(?:^|(?<=[\s='"(,]))(?:/|[A-Za-z]:[\\/])[^\s'",;]+""")


def development_weights_folder() -> Path | None:
    """The package's weights folder when fan_edge runs from a development checkout, else None.

    A checkout: the folder above the ``fan_edge`` package holds the project's
    ``pyproject.toml`` (the repository, or an editable install of it). An
    installed package (site-packages) has none beside it.
    """
    import fan_edge

    root = Path(fan_edge.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        if not pyproject.is_file() or not re.search(r'(?m)^name\s*=\s*"fan-edge"', pyproject.read_text()):
            return None
    except OSError:
        return None
    return Path(str(resources.files(WEIGHTS_PACKAGE)))


def portable_path(text: str, roots: list[Path]) -> str:
    """``text`` (an absolute path) relative to the deepest of ``roots`` that holds it, else its last name."""
    pure: PurePath = PureWindowsPath(text) if re.match(r"[A-Za-z]:[\\/]", text) else PurePosixPath(text)
    best = None
    for root in roots:
        try:
            rel = pure.relative_to(PurePosixPath(root.as_posix()) if isinstance(pure, PurePosixPath) else PureWindowsPath(root))
        except ValueError:
            continue
        if best is None or len(rel.parts) < len(best.parts):
            best = rel
    if best is not None and best.parts:
        return best.as_posix()
    return pure.name or "."


def portable_card(card: Any, data_root: str | Path | None = None, cwd: str | Path | None = None) -> Any:
    """``card`` with every absolute path in its strings (values, list items, command lines) made portable.

    Relative to ``cwd`` (default: the working directory) when under it,
    relative to ``data_root`` when under it (the deeper root wins), else the
    path's last name. Keys and non-path text are kept.
    """
    roots = [Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))]
    if data_root is not None:
        roots.append(Path(os.path.abspath(data_root)))

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), roots), value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value

    return fix(card)


def absolute_paths(card: Any) -> list[str]:
    """Every absolute path in ``card``'s strings (what :func:`portable_card` rewrites); [] for a portable card."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.extend(m.group(0) for m in _ABSOLUTE.finditer(value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(card)
    return found


def bundle(
    checkpoint: str | Path,
    name: str,
    data: str | Path,
    default: bool = False,
    description: str = "",
    folder: str | Path | None = None,
    notes: str = "",
    recipe: str = "",
    data_root: str | Path | None = None,
    storage: str = "fp32",
    *,
    measure: Callable[[str | Path, str | Path], dict[str, Any]],
) -> Path:
    """Write ``checkpoint`` into ``folder`` as zoo model ``name`` with a freshly measured card; its path.

    ``folder`` None: the package's weights folder, in a development checkout
    only (:func:`development_weights_folder`); elsewhere a ConfigError asks for
    one. ``default`` clears the flag of every other card in ``folder``.
    ``data_root`` (default: the folder above ``data``): where absolute data
    paths in the card are made relative to (see :func:`portable_card`).
    ``measure(checkpoint, data)``: the card's parameters, MACs and figures
    (``fan-edge bundle`` passes :func:`fan_edge.bench.card.measure_card`): the
    measuring lives with the benchmarks, so the models never import them.
    ``storage`` fp16 writes the weights in half precision; the figures are then
    measured on the rounded weights, the ones users load.
    """
    if ARCHITECTURE_NAME.fullmatch(name) or name == "default":
        raise ConfigError(f"zoo name {name!r} would shadow a registry variant; pick another (e.g. add a suffix)")
    if folder is None:
        folder = development_weights_folder()
        if folder is None:
            raise ConfigError("this fan_edge is an installed package, not a development checkout: say where the weights "
                              "and card go (--out DIR); its own weights folder is replaced by the next install")
    from . import create_model, read_checkpoint, save_checkpoint

    source = read_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="fan-edge-bundle-") as scratch:
        stored = checkpoint
        if storage != "fp32":  # measure what will be stored
            stored = save_checkpoint(create_model(checkpoint), Path(scratch) / "stored.safetensors", source.card, storage)
        measured = measure(stored, data)
        return _write(stored, name, folder, data, data_root, source.card, measured, default, description, notes, recipe,
                      storage)


def _write(stored: str | Path, name: str, folder: str | Path, data: str | Path, data_root: str | Path | None,
           source_card: dict[str, Any], measured: dict[str, Any], default: bool, description: str, notes: str,
           recipe: str, storage: str) -> Path:
    from . import create_model, save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The record (crop, refinement) and the architecture are written from the weights by save_checkpoint.
    card = {k: v for k, v in source_card.items() if k not in ("figures", "parameters", "macs", "config", "crop", "refine")}
    card.update(measured)
    card["storage"] = storage
    card.update(name=name, description=description or card.get("description", ""), default=default)
    if notes:
        card["notes"] = notes
    if recipe:  # a multi-stage run: the whole chain, so that the card's command starts from scratch
        card["recipe"] = recipe
    card = portable_card(card, data_root if data_root is not None else Path(os.path.abspath(data)).parent)
    if default:
        for other in folder.glob("*.json"):
            try:
                data_ = json.loads(other.read_text())
            except (OSError, ValueError):  # an unreadable card is unavailable anyway (the registry says why)
                continue
            if isinstance(data_, dict) and data_.get("default") and other.stem != name:
                data_["default"] = False
                write_text_atomic(other, json.dumps(data_, indent=2, sort_keys=True) + "\n")
    return save_checkpoint(create_model(stored), folder / f"{name}.safetensors", card, storage)
