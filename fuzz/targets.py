"""The fuzz targets: one function per kind of untrusted file, shared by the atheris harnesses and the corpus replay test.

Each target takes the raw bytes of one file, loads them the way fan-edge loads
such a file, and returns normally or raises a :class:`~fan_edge.errors.FanEdgeError`
(the one-line, typed refusal). Anything else is a bug: a raw library
exception, an assertion about what a loaded file must satisfy, or a pickle
payload that ran (it would create :data:`MARKER` in the working directory).

Targets (the corpus folder of each is ``fuzz/corpus/<name>``):

- ``checkpoint``: :func:`read_checkpoint`, then the architecture it implies
  (its config or :func:`infer_config`) and :func:`load_weights` into that
  FAN; the same bytes as a resumable run's ``last.ckpt``
  (:func:`read_training_state`).
- ``artifact-onnx``, ``artifact-tflite``: the bytes as ``model.onnx`` /
  ``model.tflite`` through :class:`LandmarkSession` (contract from the
  format's own metadata) and one ``predict``.
- ``artifact-openvino-xml``, ``artifact-openvino-bin``: the bytes as the IR's
  ``.xml`` (beside the seed's ``.bin``) or ``.bin`` (beside the seed's ``.xml``).
- ``contract``: the bytes as a sidecar ``model.onnx.json`` and as metadata
  text; a contract that parses must round-trip through its JSON.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fan_edge.errors import FanEdgeError
from fan_edge.runtime.contract import ModelContract, read_sidecar, sidecar_path
from fan_edge.runtime.crop import CropSpec

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"
MARKER = "fan_edge_payload_ran"  # what the corpus's pickle payloads would create in the working directory
SEED_INPUT_SIZE = 16
SEED_LANDMARKS = 4
# One pixel's worth of slack over the image around the box: the point of predict here is to exercise the run path.
_IMAGE = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
_BOXES = np.array([[4.0, 3.0, 24.0, 21.0]])


class PayloadRan(AssertionError):
    """A pickle's payload executed while a file was being loaded."""


def seed_contract(target: str) -> ModelContract:
    """The contract of the artifact seeds: 16x16 input, four 4x4 heatmaps, no mirror pairs."""
    return ModelContract(
        input_size=SEED_INPUT_SIZE, heatmap_size=4, num_landmarks=SEED_LANDMARKS, mirror_pairs=(), crop=CropSpec(),
        layout="NHWC" if target == "tflite" else "NCHW", model="fuzz-seed", target=target,
    )


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fan-edge-fuzz-"))


def _cleanup(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def _check_payload() -> None:
    if Path(MARKER).exists():
        os.unlink(MARKER)
        raise PayloadRan("a pickle payload ran while loading a checkpoint")


# ---- checkpoints ----------------------------------------------------------------------------------------


def checkpoint(data: bytes) -> None:
    """Read ``data`` as a checkpoint, build the FAN it implies and load it; then as a training state."""
    from fan_edge.models import FAN, infer_config, load_weights, read_checkpoint
    from fan_edge.models.checkpoints import read_training_state

    folder = _workdir()
    path = folder / "model.pth"
    path.write_bytes(data)
    try:
        try:
            ckpt = read_checkpoint(path)
            config = ckpt.config or infer_config(ckpt.state_dict, input_size=64)
            load_weights(FAN(config), ckpt.state_dict)
        except FanEdgeError:
            pass
        _check_payload()
        read_training_state(path, {"model": dict, "epoch": int})
    finally:
        _check_payload()
        _cleanup(folder)


# ---- artifacts and contracts -----------------------------------------------------------------------------


def _session(path: Path) -> None:
    from fan_edge.runtime.session import LandmarkSession

    with LandmarkSession(path, threads=1) as session:
        points, scores = session.predict(_IMAGE, _BOXES)
        k = session.contract.num_landmarks
        assert points.shape == (1, k, 2) and scores.shape == (1, k), f"predict gave {points.shape}, {scores.shape} for {k} landmarks"


def _artifact(suffix: str, companion: tuple[str, Path] | None = None) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        folder = _workdir()
        try:
            (folder / f"model{suffix}").write_bytes(data)
            if companion is not None:
                name, source = companion
                (folder / name).write_bytes(source.read_bytes())
            _session(folder / ("model.xml" if suffix == ".bin" else f"model{suffix}"))
        finally:
            _cleanup(folder)

    target.__name__ = f"artifact{suffix.replace('.', '_')}"
    return target


def contract(data: bytes) -> None:
    """``data`` as a sidecar file and as metadata text; a contract that parses round-trips."""
    folder = _workdir()
    try:
        sidecar_path(folder / "model.onnx").write_bytes(data)
        from_file = read_sidecar(folder / "model.onnx")
        parsed = ModelContract.from_json(data)
        assert from_file == parsed, "the sidecar and the metadata text parse differently"
        again = ModelContract.from_json(parsed.to_json())
        assert again == parsed, "a contract does not round-trip through its JSON"
    finally:
        _cleanup(folder)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "checkpoint": checkpoint,
    "artifact-onnx": _artifact(".onnx"),
    "artifact-tflite": _artifact(".tflite"),
    "artifact-openvino-xml": _artifact(".xml", ("model.bin", CORPUS / "artifact-openvino-bin" / "seed-tiny.bin")),
    "artifact-openvino-bin": _artifact(".bin", ("model.xml", CORPUS / "artifact-openvino-xml" / "seed-tiny.xml")),
    "contract": contract,
}


def run_one(target: str, data: bytes) -> FanEdgeError | None:
    """Run ``target`` on ``data``: None when fan-edge loaded it, the FanEdgeError when it refused it; raises otherwise
    (a refusal whose message is not one line counts as a crash too: the CLI prints it as the whole answer)."""
    try:
        TARGETS[target](data)
    except FanEdgeError as exc:
        message = str(exc).strip()
        if not message or "\n" in message:
            raise AssertionError(f"a {type(exc).__name__} that is not one line: {message[:300]!r}") from exc
        return exc
    return None
