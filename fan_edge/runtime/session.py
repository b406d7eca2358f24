"""``LandmarkSession``: an exported artifact, its contract, and FAN's crop and decode around it.

::

    from fan_edge.runtime.session import LandmarkSession

    session = LandmarkSession("fan2-w64-i128.onnx")          # or .xml / .tflite; backend and device "auto"
    points, scores = session.predict(image_rgb, boxes)        # (N, 68, 2) image pixels, (N, 68)
    session.device                                             # where it runs: "cpu", "cuda", "gpu", ...

The session reads the artifact's contract (the sidecar ``ARTIFACT.json`` and
the format's own metadata, which must agree where both exist), so the input size, crop recipe, output kind and
decoding come from the export and never from guesses. It reuses the
runtime's one implementation of each step: :class:`~fan_edge.runtime.image.ImageSource`,
:func:`~fan_edge.runtime.crop.crop_matrices` and
:func:`~fan_edge.runtime.crop.warp_image`,
:func:`~fan_edge.runtime.image.to_network_input`,
:func:`~fan_edge.runtime.decode.decode_heatmaps` and
:func:`~fan_edge.runtime.decode.crop_points_to_image`. Needs numpy and one
backend; never torch.

Threads: one session may serve any number of threads at once, with results
identical to sequential calls. ``predict`` keeps no state between calls
(crops, decoding and the box checks are pure functions of their inputs), and
each backend makes ``run`` safe its own way: ONNX Runtime's ``run`` is
thread-safe as it is; OpenVINO takes an infer request from a pool and LiteRT
an interpreter from a pool, so no two calls share one; LiteRT's GPU and NPU
delegates keep a single interpreter and calls take turns (see
:mod:`fan_edge.runtime.backends`). Sharing one session is cheaper than one
session per thread: the weights are loaded once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ContractError, DataError
from .backends import Backend, load_backend
from .contract import METADATA_KEY, ModelContract, read_sidecar, sidecar_path
from .crop import check_boxes, crop_matrices, warp_image
from .decode import crop_points_to_image, decode_heatmaps
from .image import ImageSource, to_network_input

# Faces per backend call in predict(): bounds the memory of a call with many boxes (each face at input size S
# holds a 3xSxS float32 crop and its heatmaps), whatever the number of boxes.
MAX_FACES_PER_CALL = 32
# A graph with a fixed batch (an NPU export) under a contract that says "dynamic": up to this is accepted as a
# fixed-size chunk. More is refused at load: its backend would allocate for it on the first run (fuzzing found a
# 2 kB .tflite with a fixed batch of 131073, 1.4 GB).
MAX_FIXED_BATCH = 64


@dataclass
class CropPrediction:
    """What one batch of crops gives: points in crop pixels, scores, and the heatmaps if the artifact returns them."""

    points: np.ndarray  # (N, K, 2) crop pixels, 0-based pixel centres
    scores: np.ndarray  # (N, K)
    heatmaps: np.ndarray | None  # (N, K, H, W) for heatmaps artifacts
    outputs: dict[str, np.ndarray]  # every raw output by name


def read_contract(path: str | Path, backend: Backend | None = None) -> ModelContract:
    """The contract of an artifact: its sidecar ``ARTIFACT.json`` and the one inside the artifact, which must agree.

    Either alone serves. Where both exist, they must agree on every field that changes results
    (:data:`~fan_edge.runtime.contract.RESULT_FIELDS`: sizes, crop, layout, value range, I/O names, decoding);
    a difference is a one-line ContractError naming the fields, never a silent choice of one: a sidecar left from
    another export once moved every point with its own crop shift (docs/runtime.md). An
    embedded contract that does not parse is refused as well. The sidecar is returned (it carries the
    verification record, which only it has).
    """
    sidecar = read_sidecar(path)
    if backend is None:
        backend = load_backend(path)
    text = backend.metadata().get(METADATA_KEY)
    embedded = None
    if text is not None:
        try:
            embedded = ModelContract.from_json(text)
        except ContractError as exc:
            raise ContractError(f"{path}: {exc}") from None
    if sidecar is None and embedded is None:
        raise ContractError(
            f"{path}: no fan-edge contract (no sidecar {Path(path).name}.json and no {METADATA_KEY} metadata); "
            "was it exported by fan-export?"
        )
    if sidecar is None or embedded is None:
        return sidecar or embedded  # type: ignore[return-value]
    differ = sidecar.result_differences(embedded)
    if differ:
        first = differ[0]
        side, inside = sidecar.to_dict().get(first), embedded.to_dict().get(first)
        raise ContractError(
            f"{path}: its sidecar {sidecar_path(path).name} disagrees with the contract inside the artifact on "
            f"{', '.join(differ)} ({first}: sidecar {_short(side)}, artifact {_short(inside)}); it belongs to another "
            "export: export again, or delete the sidecar to use the artifact's own contract"
        )
    return sidecar


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class LandmarkSession:
    """An exported FAN ready to locate landmarks in images.

    ``backend`` is "auto" (by file suffix) or a name from
    :data:`fan_edge.runtime.backends.BACKENDS`; ``device`` is "auto" (the
    best present), "cpu", "gpu", "npu" or a backend's own name ("cuda",
    "tensorrt", "qnn", "coreml", "openvino" for ONNX Runtime, "gpu.1" for
    OpenVINO); an absent one is a one-line BackendError listing the devices
    present; :attr:`device` says where the model runs. ``threads`` caps the
    backend's intra-op threads (CPU).
    """

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        *,
        contract: ModelContract | None = None,
        extra_outputs: tuple[str, ...] = (),
    ) -> None:
        self.path = Path(path)
        self.backend = load_backend(self.path, backend, device, threads, extra_outputs)
        self.contract = contract or read_contract(self.path, self.backend)
        self._check_graph()

    # ---- set-up ------------------------------------------------------------------------------

    def _check_graph(self) -> None:
        c = self.contract
        inputs = self.backend.inputs
        if len(inputs) != 1:
            raise ContractError(f"{self.path}: expected one input, the graph has {len(inputs)}")
        shape = inputs[0].shape
        expected = (3, c.input_size, c.input_size) if c.layout == "NCHW" else (c.input_size, c.input_size, 3)
        if len(shape) != 4 or any(s is not None and s != e for s, e in zip(shape[1:], expected)):
            raise ContractError(f"{self.path}: input shape {shape} does not match the contract ({c.layout}, size {c.input_size})")
        present = {o.name: o for o in self.backend.outputs}
        missing = [n for n in c.output_names if n not in present]
        if missing:
            raise ContractError(
                f"{self.path}: the contract names outputs {', '.join(missing)} that the graph does not have ({', '.join(sorted(present))})"
            )
        # Per output name, its shape after the batch axis: fixed by the contract, so worked out once here and only
        # compared on each run.
        self._output_tails = {c.output_name(role): shape[1:] for role, shape in self._output_shapes().items()}
        for name, tail in self._output_tails.items():
            got = present[name].shape
            if len(got) != 1 + len(tail) or any(g is not None and g != e for g, e in zip(got[1:], tail)):
                raise ContractError(f"{self.path}: output {name} has shape {got}, the contract says {(None,) + tail}")
        self.fixed_batch = None if self.backend.dynamic_batch else (shape[0] or 1)
        limit = c.batch if c.batch is not None else MAX_FIXED_BATCH
        if self.fixed_batch is not None and (self.fixed_batch > limit or (c.batch is not None and self.fixed_batch != c.batch)):
            raise ContractError(
                f"{self.path}: the graph's input has a fixed batch of {self.fixed_batch}, the contract says "
                f"{'a dynamic batch' if c.batch is None else c.batch}"
            )

    def _output_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each output's shape by role as the contract implies it (None: the batch axis)."""
        c = self.contract
        if c.outputs == "heatmaps":
            return {"heatmaps": (None, c.num_landmarks, c.heatmap_size, c.heatmap_size)}
        return {"landmarks": (None, c.num_landmarks, 2), "scores": (None, c.num_landmarks)}

    def _check_outputs(self, outputs: dict[str, np.ndarray], n: int) -> None:
        """Outputs of a run against the contract: a graph with dynamic axes is only checked here."""
        for name, tail in self._output_tails.items():
            got = np.shape(outputs.get(name))
            if got != (n,) + tail:
                raise ContractError(f"{self.path}: output {name} came out {got} for {n} crops, the contract says {(n,) + tail}")

    @property
    def input_size(self) -> int:
        return self.contract.input_size

    @property
    def device(self) -> str:
        """The device the model runs on, as the backend names it ("cpu", "cuda", "gpu.0", ...)."""
        return self.backend.device

    # ---- inference ---------------------------------------------------------------------------

    def run_raw(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run (N, 3, S, S) float32 network inputs (FAN's [0, 1] RGB) and return every raw output.

        One call for the whole batch where the graph has a dynamic batch axis,
        else fixed-size chunks (the last one padded).
        """
        x = np.asarray(batch, dtype=np.float32)
        s = self.contract.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise DataError(f"expected network inputs of shape (N, 3, {s}, {s}), got {x.shape}")
        if self.contract.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        if self.fixed_batch is None or n == self.fixed_batch:
            return self.backend.run(x)
        b = self.fixed_batch
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], np.float32)])
            parts.append(self.backend.run(chunk))
        return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}

    def run_crops(self, batch: np.ndarray) -> CropPrediction:
        """Points (crop pixels) and scores for (N, 3, S, S) network inputs, decoded per the contract."""
        c = self.contract
        n = np.asarray(batch).shape[0] if np.ndim(batch) == 4 else -1
        if n == 0:
            k = c.num_landmarks
            return CropPrediction(np.zeros((0, k, 2)), np.zeros((0, k), np.float32), None, {})
        outputs = self.run_raw(batch)
        self._check_outputs(outputs, n)
        if c.outputs == "heatmaps":
            heatmaps = np.asarray(outputs[c.output_name("heatmaps")], dtype=np.float32)
            points, scores = decode_heatmaps(heatmaps, c.input_size, c.refine)
            return CropPrediction(points, scores, heatmaps, outputs)
        points = np.asarray(outputs[c.output_name("landmarks")], dtype=np.float64)
        scores = np.asarray(outputs[c.output_name("scores")], dtype=np.float32)
        return CropPrediction(points, scores, None, outputs)

    def crops(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs (N, 3, S, S) and crop matrices (N, 2, 3) for face boxes (N, 4) x1, y1, x2, y2."""
        source = _image_source(image)
        b = check_boxes(boxes, source.width, source.height)
        return self._crops(source, b)

    def _crops(self, source: ImageSource, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.contract.input_size
        matrices = crop_matrices(boxes, s, self.contract.crop)
        if len(boxes) == 0:
            return np.zeros((0, 3, s, s), np.float32), matrices
        crops = np.stack([warp_image(source.pixels, m, s) for m in matrices])
        return to_network_input(source.finish(crops)), matrices

    def predict(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of every face box in an RGB image: (N, K, 2) image pixels and (N, K) scores.

        ``image``: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16
        or float (see :mod:`fan_edge.runtime.image`). ``boxes``: (N, 4)
        x1, y1, x2, y2 in image pixels, each with a positive width and height
        and overlapping the image. Faces go to the backend in batches of up to
        :data:`MAX_FACES_PER_CALL`; anything malformed is a one-line DataError.
        """
        source = _image_source(image)
        b = check_boxes(boxes, source.width, source.height)
        k = self.contract.num_landmarks
        if len(b) == 0:
            return np.zeros((0, k, 2)), np.zeros((0, k), np.float32)
        points, scores = [], []
        for start in range(0, len(b), MAX_FACES_PER_CALL):
            x, matrices = self._crops(source, b[start : start + MAX_FACES_PER_CALL])
            result = self.run_crops(x)
            points.append(crop_points_to_image(result.points, matrices))
            scores.append(np.asarray(result.scores, dtype=np.float32))
        return np.concatenate(points), np.concatenate(scores)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "LandmarkSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.contract
        what = f"{c.model or 'model'} {c.precision} {c.outputs}, input {c.input_size}"
        return f"LandmarkSession({str(self.path)!r}, backend={self.backend.name}, device={self.device}, {what})"


def _image_source(image: object) -> ImageSource:
    try:
        return ImageSource.from_array(image)
    except ValueError as exc:
        raise DataError(str(exc)) from None
