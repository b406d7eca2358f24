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

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..runtime.contract import METADATA_KEY, OUTPUT_ROLES, ModelContract
from .descriptions import describe, numeric_version
from .int8 import Int8Recipe, float_layers, is_float_conv_weight
from .job import ExportJob
from .metadata import HEATMAPS_NAME, INPUT_NAME
from .quiet import quiet_exporters

OPSET = 18  # >= 17 as the issue asks; 18 is what torch's dynamo exporter targets natively
HEAD_PREFIX = "fan_edge_head/"


def torch_to_onnx(module: Any, example: Any, input_name: str, output_names: list[str], dynamic_batch: bool = True):
    """Export ``module(example)`` with a dynamic batch axis (or ``example``'s batch, static, everywhere); the
    ModelProto, simplified and checked."""
    import onnx
    import onnxslim
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with quiet_exporters(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=output_names,
                dynamic_shapes=({0: batch},) if dynamic_batch else None,
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


def fp32_backbone(job: ExportJob, batchnorm_as_depthwise: bool = False):
    """The FAN (heatmaps out) as fp32 ONNX, with a dynamic batch axis or ``job.batch`` fixed in every tensor (what an
    NPU compiler needs); built once per export call and form, and shared by the targets.

    ``batchnorm_as_depthwise``: each BatchNorm written as the 1x1 depthwise convolution it is
    (:mod:`fan_edge.export.batchnorm`), the form int8 wants: a quantizer gives its scale per-channel int8
    weights like any convolution's (quantized BatchNormalization nodes lost most of int8's accuracy on
    Qualcomm's NPU, docs/npu.md), and the whole block then runs in int8."""
    import torch

    from .batchnorm import batchnorms_as_depthwise

    model = job.model.eval()
    network = batchnorms_as_depthwise(model) if batchnorm_as_depthwise else model
    s = model.config.input_size
    example = torch.rand(job.batch or 2, 3, s, s, generator=torch.Generator().manual_seed(0))
    build = lambda: torch_to_onnx(network, example, INPUT_NAME, [HEATMAPS_NAME], dynamic_batch=job.batch is None)  # noqa: E731
    return _cached(job, f"onnx.fp32_backbone.{job.batch}.{batchnorm_as_depthwise}", build)


def fp32_head(job: ExportJob):
    """The decoding head (heatmaps in, landmarks and scores out) as fp32 ONNX."""
    import torch

    from .landmarks import LandmarkHead

    cfg = job.model.config
    head = LandmarkHead(cfg.input_size, cfg.heatmap_size, job.contract.refine).eval()
    example = torch.rand(job.batch or 2, cfg.num_landmarks, cfg.heatmap_size, cfg.heatmap_size, generator=torch.Generator().manual_seed(0))
    names = list(job.contract.output_names)
    build = lambda: torch_to_onnx(head, example, HEATMAPS_NAME, names, dynamic_batch=job.batch is None)  # noqa: E731
    return _cached(job, f"onnx.fp32_head.{job.contract.refine}.{job.batch}", build)


def to_fp16(proto):
    """Weights and activations to float16, inputs and outputs kept float32."""
    from onnxconverter_common import float16

    del proto.graph.value_info[:]  # stale float32 annotations (from onnxslim) would contradict the converted types
    with quiet_exporters():
        return float16.convert_float_to_float16(proto, keep_io_types=True)


@dataclass(frozen=True)
class OnnxInt8Recipe:
    """FAN's ONNX Runtime static int8, as one object (turned into ONNX Runtime's own ``StaticQuantConfig``).

    - QDQ of the whole graph (``whole_graph``: convolutions, additions,
      concatenations, pooling, upsampling; ONNX Runtime's QNN recipe
      ``get_qnn_qdq_config``, which ONNX Runtime's CPU kernels run as well),
      with every BatchNorm first written as a 1x1 depthwise convolution
      (``batchnorm_as_depthwise``, as the TFLite target does). Quantizing the
      convolutions alone left every BatchNorm and its ReLU in float between
      Quantize/Dequantize pairs, no faster than fp32 on the CPU; on
      Qualcomm's NPU, quantized BatchNorms lost most of int8's accuracy
      (docs/npu.md has both measurements).
    - weights int8 per output channel, activations uint8 per tensor: U8S8 is
      ONNX Runtime's fast x86 combination (S8S8 and U8U8 are slower;
      docs/npu.md).
    - ``reduce_range``: weights in 7 bits (-64..64). Without VNNI, x86
      kernels add two uint8 x int8 products in a saturating 16-bit lane;
      7-bit weights keep every such sum in range on every CPU
      (:mod:`fan_edge.export.int8_overflow` checks the result), at a cost
      within the int8 tolerance (docs/npu.md has the measurement).
    - ranges: the mean of per-face minima and maxima (MinMax with
      ``CalibMovingAverage``, one face per sample: :mod:`fan_edge.export.int8`).
    - ``activation_type`` ``QUInt16`` (with 8-bit weights, no overflow to
      guard against: W8A16) for a model whose 8-bit activations fail, such
      as the 256 px zoo model (docs/npu.md, "The zoo on both NPUs").
    - ``keep_float``: module-name patterns whose convolutions stay float
      (None: :data:`fan_edge.export.int8.FLOAT_LAYERS`).
    - ``check_overflow``: refuse a graph whose uint8 x int8 sums could
      saturate without VNNI (False with full-range weights: an artifact for
      VNNI CPUs and NPUs only).

    :func:`onnx_int8_recipe` makes it from the export's
    :class:`~fan_edge.export.int8.Int8Recipe`.
    """

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    reduce_range: bool = True
    per_channel: bool = True
    op_types: tuple[str, ...] = ("Conv",)
    moving_average: bool = True
    keep_float: tuple[str, ...] | None = None
    whole_graph: bool = True
    batchnorm_as_depthwise: bool = True
    check_overflow: bool = True

    def static_quant_config(self, proto, calibration):
        """ONNX Runtime's ``StaticQuantConfig`` for ``proto`` (the pre-processed float graph) and its faces."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, StaticQuantConfig

        patterns = float_layers("onnx", self.keep_float)
        excluded = [n.name for n in proto.graph.node if n.op_type in self.op_types and len(n.input) > 1
                    and is_float_conv_weight(n.input[1], patterns)]
        if self.whole_graph:
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            config = get_qnn_qdq_config(  # every op type; op_types names those whose float layers may be kept
                proto, calibration.onnxruntime_reader(INPUT_NAME), CalibrationMethod.MinMax,
                activation_type=QuantType[self.activation_type], weight_type=QuantType[self.weight_type],
                per_channel=self.per_channel, weight_symmetric=True, nodes_to_exclude=excluded,
            )
            config.reduce_range = self.reduce_range
            config.extra_options["CalibMovingAverage"] = self.moving_average
            return config
        return StaticQuantConfig(
            calibration.onnxruntime_reader(INPUT_NAME),
            calibrate_method=CalibrationMethod.MinMax,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType[self.activation_type],
            weight_type=QuantType[self.weight_type],
            op_types_to_quantize=list(self.op_types),
            nodes_to_exclude=excluded,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            extra_options={"CalibMovingAverage": self.moving_average},  # the mean over samples (faces) of each one's min and max
        )


def onnx_int8_recipe(recipe: Int8Recipe | None = None) -> OnnxInt8Recipe:
    """ONNX Runtime's form of the export's int8 ``recipe`` (None: its defaults): 16-bit activations are QUInt16
    (no 16-bit sums to guard then), a VNNI-safe 8-bit recipe has 7-bit weights and its graph checked."""
    recipe = recipe or Int8Recipe()
    w8a16 = recipe.activation_bits == 16
    return OnnxInt8Recipe(
        activation_type="QUInt16" if w8a16 else "QUInt8",
        reduce_range=recipe.vnni_safe and not w8a16,
        per_channel=recipe.per_channel,
        moving_average=recipe.method == "mean_minmax",
        keep_float=recipe.keep_float,
        check_overflow=recipe.vnni_safe,
    )


def to_int8(proto, calibration, workdir: Path, recipe: OnnxInt8Recipe | None = None):
    """Static QDQ quantization by ``recipe`` (default :class:`OnnxInt8Recipe`), refused if the result could
    saturate 16-bit sums on a CPU without VNNI (unless the recipe is for VNNI CPUs only)."""
    import onnx
    from onnxruntime.quantization import quantize
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .int8_overflow import check_u8s8_overflow

    if calibration is None:
        raise ExportError("int8 needs calibration faces: pass --calib DIR (images with .pts)")
    recipe = recipe or OnnxInt8Recipe()
    fp32_path, pre_path, out_path = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(proto, str(fp32_path))
    with quiet_exporters():
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
        config = recipe.static_quant_config(onnx.load(str(pre_path)), calibration)
        quantize(str(pre_path), str(out_path), config)
    quantized = onnx.load(str(out_path))
    if recipe.check_overflow:
        check_u8s8_overflow(quantized)
    return quantized


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
    info = describe(contract)
    proto.doc_string = (f"{info.name} {info.version}. {info.description} Contract JSON in metadata_props[{METADATA_KEY!r}]. "
                        f"Author: {info.author}. Licence: {info.license}")
    proto.model_version = numeric_version()
    proto.graph.doc_string = info.description
    roles = dict(zip(contract.output_names, OUTPUT_ROLES[contract.outputs]))
    for value in proto.graph.input:
        if value.name == contract.input_name:
            value.doc_string = info.input
    for value in proto.graph.output:
        if value.name in roles:
            value.doc_string = info.outputs[roles[value.name]]
    return proto


def build_onnx(job: ExportJob):
    """The final ModelProto of ``job`` (precision applied, head attached, contract embedded, checked)."""
    import onnx

    recipe = onnx_int8_recipe(job.int8) if job.precision == "int8" else None
    proto = fp32_backbone(job, batchnorm_as_depthwise=recipe is not None and recipe.batchnorm_as_depthwise)
    if job.precision == "fp16":
        proto = to_fp16(proto)
    elif job.precision == "int8":
        with tempfile.TemporaryDirectory(prefix="fan-export-int8-", dir=job.staging.folder) as tmp:  # swept with the staging
            proto = to_int8(proto, job.calibration, Path(tmp), recipe)
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
