"""ONNX target: one self-contained, simplified, fully checked file (opset 18).

Pipeline (each step a function, so that other targets can start from the
same graphs):

1. :func:`fp32_backbone`: ``torch.onnx.export(dynamo=True, external_data=False)``
   of the FAN with a dynamic batch axis, simplified by onnxslim; input
   ``input`` (N, 3, S, S), output ``heatmaps`` (N, K, S/4, S/4).
2. precision: fp16 by onnxconverter-common with float32 inputs and outputs
   kept; int8 by ONNX Runtime's static quantization (QDQ, per-channel, QUInt8
   activations and QInt8 weights: the fast combination on x86 with VNNI) of
   the convolutions, calibrated on :class:`fan_edge.calibration.FaceCrops`
   with FAN's recipe of :mod:`fan_edge.export.int8` (ranges: per-face
   extremes averaged; the layers it keeps float excluded). A
   quantization-aware-trained checkpoint takes the same route with its
   fine-tuned weights (measured as accurate as, and faster than, NNCF's own
   QDQ graph, which quantizes every add).
3. ``outputs="landmarks"``: :func:`fp32_head` (the decoding of
   :mod:`fan_edge.export.landmarks`, exported alone) is merged after the
   converted or quantized network, so it is never quantized nor halved: it
   sits after the last DequantizeLinear and computes in float32.
4. the contract goes into ``metadata_props`` (key ``fan_edge.contract``), then
   ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..runtime.contract import METADATA_KEY, ModelContract
from .int8 import float_layers, is_float_conv_weight
from .job import ExportJob
from .metadata import HEATMAPS_NAME, INPUT_NAME

OPSET = 18  # >= 17 as the issue asks; 18 is what torch's dynamo exporter targets natively
HEAD_PREFIX = "fan_edge_head/"


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torch_to_onnx(module: Any, example: Any, input_name: str, output_names: list[str]):
    """Export ``module(example)`` with a dynamic batch axis; the ModelProto, simplified and checked."""
    import onnx
    import onnxslim
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=output_names,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
        proto = program.model_proto
        proto = onnxslim.slim(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _cached(job: ExportJob, key: str, build) -> Any:
    import onnx

    if key not in job.shared:
        job.shared[key] = build().SerializeToString()
    return onnx.load_from_string(job.shared[key])


def fp32_backbone(job: ExportJob):
    """The FAN (heatmaps out) as fp32 ONNX; built once per export call and shared by the targets."""
    import torch

    model = job.model.eval()
    s = model.config.input_size
    example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    return _cached(job, "onnx.fp32_backbone", lambda: torch_to_onnx(model, example, INPUT_NAME, [HEATMAPS_NAME]))


def fp32_head(job: ExportJob):
    """The decoding head (heatmaps in, landmarks and scores out) as fp32 ONNX."""
    import torch

    from .landmarks import LandmarkHead

    cfg = job.model.config
    head = LandmarkHead(cfg.input_size, cfg.heatmap_size, cfg.refine).eval()
    example = torch.rand(2, cfg.num_landmarks, cfg.heatmap_size, cfg.heatmap_size, generator=torch.Generator().manual_seed(0))
    names = list(job.contract.output_names)
    return _cached(job, f"onnx.fp32_head.{cfg.refine}", lambda: torch_to_onnx(head, example, HEATMAPS_NAME, names))


def to_fp16(proto):
    """Weights and activations to float16, inputs and outputs kept float32."""
    from onnxconverter_common import float16

    del proto.graph.value_info[:]  # stale float32 annotations (from onnxslim) would contradict the converted types
    with _quiet():
        return float16.convert_float_to_float16(proto, keep_io_types=True)


def to_int8(proto, calibration, workdir: Path, keep_float: tuple[str, ...] | None = None):
    """Static QDQ quantization of the convolutions: per-channel QInt8 weights, QUInt8 activations whose ranges are the
    mean of per-face minima and maxima (MinMax with ``CalibMovingAverage`` over one face per sample); the convolutions
    whose module names match ``keep_float`` (default: :data:`fan_edge.export.int8.FLOAT_LAYERS`) stay float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:
        raise ExportError("int8 needs calibration faces: pass --calib DIR (images with .pts)")
    fp32_path, pre_path, out_path = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(proto, str(fp32_path))
    with _quiet():
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
        pre = onnx.load(str(pre_path))
        patterns = float_layers("onnx", keep_float)
        excluded = [n.name for n in pre.graph.node if n.op_type == "Conv" and len(n.input) > 1 and is_float_conv_weight(n.input[1], patterns)]
        quantize_static(
            str(pre_path),
            str(out_path),
            calibration.onnxruntime_reader(INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=excluded,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMovingAverage": True},  # the mean over samples (faces) of each one's min and max
        )
    return onnx.load(str(out_path))


def _prefix_internal(model, prefix: str):
    """Prefix node, initializer and internal tensor names (graph inputs and outputs keep theirs)."""
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    rename = lambda name: name if name in keep else prefix + name  # noqa: E731
    for node in g.node:
        node.name = prefix + node.name
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for init in g.initializer:
        init.name = rename(init.name)
    for vi in g.value_info:
        vi.name = rename(vi.name)
    return model


def attach_head(body, head):
    """``body`` (heatmaps out) followed by ``head`` (heatmaps in): one graph, landmarks and scores out."""
    import onnx
    from onnx import compose

    head = _prefix_internal(head, HEAD_PREFIX)
    head.ir_version = body.ir_version
    body_opsets = {o.domain: o.version for o in body.opset_import}
    for o in head.opset_import:
        if body_opsets.get(o.domain, o.version) != o.version:
            raise ExportError(f"cannot merge graphs of opsets {body_opsets.get(o.domain)} and {o.version}")
    merged = compose.merge_models(
        body,
        head,
        io_map=[(HEATMAPS_NAME, HEATMAPS_NAME)],
        outputs=[o.name for o in head.graph.output],
        producer_name=body.producer_name,
        producer_version=body.producer_version,
    )
    onnx.checker.check_model(merged)
    return merged


def embed_contract(proto, contract: ModelContract):
    """Put the contract in ``metadata_props`` (replacing any earlier one) and name the producer."""
    from .. import __version__

    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = contract.to_json()
    proto.producer_name = "fan-edge"
    proto.producer_version = __version__
    proto.doc_string = f"FAN {contract.model} {contract.precision} ({contract.outputs}); contract in metadata_props[{METADATA_KEY!r}]"
    return proto


def build_onnx(job: ExportJob):
    """The final ModelProto of ``job`` (precision applied, head attached, contract embedded, checked)."""
    import onnx

    proto = fp32_backbone(job)
    if job.precision == "fp16":
        proto = to_fp16(proto)
    elif job.precision == "int8":
        with tempfile.TemporaryDirectory(prefix="fan-export-int8-", dir=job.staging.folder) as tmp:  # swept with the staging
            proto = to_int8(proto, job.calibration, Path(tmp), job.int8_float)
    if job.outputs == "landmarks":
        proto = attach_head(proto, fp32_head(job))
    proto = embed_contract(proto, job.contract)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX graph does not pass onnx.checker: {str(exc).splitlines()[0][:300]}") from None
    return proto


def export_onnx(job: ExportJob) -> list[Path]:
    """Write ``job.output`` (.onnx) into the staging area; return the final paths in commit order."""
    import onnx

    proto = build_onnx(job)
    staged = job.staging.path(job.output)
    onnx.save(proto, os.fspath(staged))
    return [job.output]
