"""TFLite (LiteRT) target: one ``.tflite`` flatbuffer, no TensorFlow anywhere.

Pipeline (each step a function over flatbuffer bytes):

1. :func:`fp32_backbone`: litert-torch converts the FAN with a **static batch
   of 1** (contract ``batch=1``). A dynamic batch axis left the example's
   batch baked into hundreds of intermediate tensors, which LiteRT on the CPU
   tolerates and every NPU compiler (Qualcomm's, Arm's Vela) rejects; an app
   runs one face at a time anyway, and the session runs a batch face by face.
   The signature ``serving_default`` takes ``input`` **NHWC**
   (N, S, S, 3), what a camera frame or bitmap already is (litert-torch
   computes channels-last inside; an NCHW input would only add a transpose),
   and returns ``heatmaps`` (N, K, S/4, S/4) as every target does. The
   contract records ``layout="NHWC"``; :class:`~fan_edge.runtime.session.LandmarkSession`
   transposes its crops. Every BatchNorm is first rewritten as the 1x1
   depthwise convolution it is (:mod:`fan_edge.export.batchnorm`): one
   TFLite op instead of four.
2. precision, with ai-edge-quantizer on the converted flatbuffer:

   - fp16: convolution weights stored float16 and dequantized at load
     (``float_casting``; float32 compute and I/O);
   - int8: full-integer static quantization (every op int8, weights
     symmetric per channel, activations asymmetric per tensor; ranges from
     ai-edge-quantizer's moving average of per-face min/max over
     :class:`fan_edge.calibration.FaceCrops`, one face per sample: the recipe
     of :mod:`fan_edge.export.int8`, whose float layers, if any, get
     ``no_quantize``). Input and
     heatmaps are int8 (the input's scale is 1/255 with zero point -128:
     ``pixel - 128``); the runtime backend quantizes and dequantizes with the
     tensors' own parameters.

   Quantizing the converted graph, where each BatchNorm is already its own
   op (FAN's BN is pre-activation and folds into no convolution; step 1
   writes it as a 1x1 depthwise convolution), never meets litert-torch's PT2E
   conv-BN fusion, which folds a BN into a
   convolution whose output also feeds FAN's block concat and makes the int8
   model output garbage (docs/export.md, "TFLite and Core ML").
3. ``outputs="landmarks"``: :func:`fp32_head` (the decoding of
   :mod:`fan_edge.export.landmarks`, converted alone) is appended to the
   converted or quantized network by :func:`attach_head`, which merges the two
   flatbuffers (tensors, buffers, operator codes; head names prefixed
   ``fan_edge_head/``). The head is never halved nor quantized: an int8
   network ends in a DEQUANTIZE and the head computes in float32.
4. The network's output tensor is named ``heatmaps`` inside the graph (the
   parity report reads it there in a landmarks model), and the contract goes
   into the model's metadata (``Model.metadata`` entry ``fan_edge.contract``,
   JSON text in a buffer: readable with any flatbuffer reader of the TFLite
   schema, e.g. ``ai_edge_litert.tools.flatbuffer_utils``), beside the
   standard ``TFLITE_METADATA`` that Android Studio and TFLite Support read,
   with the contract also as an associated file zipped onto the model
   (:mod:`fan_edge.export.tflite_metadata`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, first_line
from ..runtime.contract import METADATA_KEY
from .int8 import Int8Recipe, matches, tflite_scope
from .job import ExportJob
from .descriptions import CONTRACT_FILE
from .metadata import HEATMAPS_NAME, INPUT_NAME
from .quiet import silenced_native_output

SIGNATURE = "serving_default"
STATIC_BATCH = 1  # every tensor of every exported graph (see fp32_backbone)
HEAD_PREFIX = "fan_edge_head/"
MAX_BATCH = 4096

# ai-edge-quantizer recipes (the JSON form of its RecipeManager).
ACTIVATIONS_INT8 = {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE", "dtype": "INT"}
WEIGHTS_INT8 = {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"}
FP16_RECIPE = [
    {
        "regex": ".*",
        "operation": "CONV_2D",
        "algorithm_key": "float_casting",
        "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT", "explicit_dequantize": True},
    }
]

_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 7: "int16", 9: "int8"}  # tflite TensorType


def int8_recipe(float_output: bool = False, keep_float: tuple[str, ...] = (), per_channel: bool = True) -> list[dict[str, Any]]:
    """Static int8 of every supported op; ``float_output`` keeps the graph's outputs float32, ``keep_float`` (PyTorch
    module names, see :func:`fan_edge.export.int8.tflite_scope`) the named layers' ops; ``per_channel`` False: weights
    per tensor."""
    weights = WEIGHTS_INT8 if per_channel else {**WEIGHTS_INT8, "granularity": "TENSORWISE"}
    recipe: list[dict[str, Any]] = [
        {
            "regex": ".*",
            "operation": "*",
            "algorithm_key": "min_max_uniform_quantize",
            "op_config": {
                "activation_tensor_config": ACTIVATIONS_INT8,
                "weight_tensor_config": weights,
                "compute_precision": "INTEGER",
                "explicit_dequantize": False,
            },
        }
    ]
    for name in keep_float:
        recipe.append({"regex": tflite_scope(name), "operation": "*", "algorithm_key": "no_quantize"})
    if float_output:
        recipe.append({"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"})
    return recipe


# ---- conversion ------------------------------------------------------------------------------------


def _wrappers():
    """The torch modules that give the converted signatures their names and layout (imported lazily: torch)."""
    import torch
    from torch import nn

    class NetworkIO(nn.Module):
        """NHWC ``input`` -> the FAN's outputs by role (``heatmaps``, or ``landmarks`` and ``scores``)."""

        def __init__(self, module: nn.Module, roles: tuple[str, ...]) -> None:
            super().__init__()
            self.module = module
            self.roles = roles

        def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002 - the signature's input name
            out = self.module(input.permute(0, 3, 1, 2))
            out = out if isinstance(out, tuple) else (out,)
            return dict(zip(self.roles, out))

    class HeadIO(nn.Module):
        """NCHW ``heatmaps`` -> ``landmarks``, ``scores``."""

        def __init__(self, head: nn.Module, roles: tuple[str, ...]) -> None:
            super().__init__()
            self.head = head
            self.roles = roles

        def forward(self, heatmaps: torch.Tensor) -> dict[str, torch.Tensor]:
            return dict(zip(self.roles, self.head(heatmaps)))

    return NetworkIO, HeadIO


def torch_to_tflite(module: Any, example: Any, input_name: str, dynamic_batch: bool = False) -> bytes:
    """Convert ``module(**{input_name: example})`` (with a dynamic batch axis unless told not to); the flatbuffer bytes."""
    import torch

    with silenced_native_output():  # its import logs (absl, torchao's optional CUDA kernels, pytree notices)
        import litert_torch

    dynamic = {input_name: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic_batch else None
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with silenced_native_output(), torch.no_grad():
            model = litert_torch.convert(module.eval(), sample_kwargs={input_name: example}, dynamic_shapes=dynamic)
            return bytes(model.model_content())
    except Exception as exc:
        raise ExportError(f"litert-torch could not convert the model: {first_line(exc, with_type=True)}") from exc


def fp32_backbone(job: ExportJob) -> bytes:
    """The FAN (NHWC input, heatmaps out) as fp32 TFLite; built once per export call and shared by the jobs."""
    import torch

    from .batchnorm import batchnorms_as_depthwise

    key = "tflite.fp32_backbone"
    if key not in job.shared:
        network_io, _ = _wrappers()
        s = job.model.config.input_size
        example = torch.rand(1, s, s, 3, generator=torch.Generator().manual_seed(0))
        network = batchnorms_as_depthwise(job.model)
        job.shared[key] = torch_to_tflite(network_io(network, (HEATMAPS_NAME,)), example, INPUT_NAME, dynamic_batch=False)
    return job.shared[key]


def fp32_head(job: ExportJob) -> bytes:
    """The decoding head (NCHW heatmaps in, landmarks and scores out) as fp32 TFLite."""
    import torch

    from .landmarks import LandmarkHead

    cfg = job.model.config
    key = f"tflite.fp32_head.{job.contract.refine}"
    if key not in job.shared:
        _, head_io = _wrappers()
        head = LandmarkHead(cfg.input_size, cfg.heatmap_size, job.contract.refine).eval()
        # Batch 1, static, as the network (see fp32_backbone).
        example = torch.rand(1, cfg.num_landmarks, cfg.heatmap_size, cfg.heatmap_size, generator=torch.Generator().manual_seed(0))
        job.shared[key] = torch_to_tflite(head_io(head, tuple(job.contract.output_names)), example, HEATMAPS_NAME, dynamic_batch=False)
    return job.shared[key]


# ---- precision -------------------------------------------------------------------------------------


def _quantizer(model: bytes, recipe: list[dict[str, Any]]):
    with silenced_native_output():
        from ai_edge_quantizer import quantizer

    return quantizer.Quantizer(bytearray(model), recipe)


def to_fp16(model: bytes) -> bytes:
    """Convolution weights to float16 (dequantized at load; compute and I/O stay float32)."""
    q = _quantizer(model, FP16_RECIPE)
    with silenced_native_output():
        return bytes(q.quantize(enable_progress_report=False).quantized_model)


def to_int8(model: bytes, calibration, recipe: Int8Recipe | None = None, float_output: bool = False) -> bytes:
    """Static int8 (:func:`int8_recipe`) by the export's ``recipe`` (None: its defaults), calibrated on
    ``calibration`` (a FaceCrops, one face per sample; ai-edge-quantizer's moving average of per-face extremes is the
    recipe's ``mean_minmax``); the layers the recipe keeps float (default: :data:`fan_edge.export.int8.FLOAT_LAYERS`)
    stay float."""
    if calibration is None:
        raise ExportError("int8 needs calibration faces: pass --calib DIR (images with .pts)")
    recipe = recipe or Int8Recipe()
    keep = _float_modules(model, recipe.float_layers("tflite"))
    q = _quantizer(model, int8_recipe(float_output, keep, per_channel=recipe.per_channel))
    data = calibration.litert_calibration(INPUT_NAME, "NHWC", SIGNATURE)
    with silenced_native_output():
        ranges = floor_degenerate_ranges(q.calibrate(data, num_threads=max(1, min(4, os.cpu_count() or 1))))
        quantized = bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)
    return widen_degenerate_add_scales(quantized)


def _float_modules(model: bytes, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The PyTorch module names of the converted model's convolutions that ``patterns`` match."""
    if not patterns:
        return ()
    subgraph, _ = _single_subgraph(read_model(model), "network")
    found = set()
    for tensor in subgraph.tensors:
        for step in _text(tensor.name).split(";;"):
            path = re.findall(r"/[^/;]*?_([A-Za-z0-9_]+)(?=/|;|$)", step.split("FAN_module", 1)[-1]) if "FAN_module" in step else []
            name = ".".join(path)
            if name and matches(name, patterns):
                found.add(name)
    return tuple(sorted(found))


# A tensor that never varied on the calibration faces (a ReLU that never fired) gets a scale near zero; the convolution
# reading it then has an input x weight / output scale ratio below 2**-32 (or, where it writes it, above 256), which
# XNNPACK refuses ("failed to prepare"). Below this span (activations span units, heatmaps 0..1) a tensor is
# constant for every practical purpose, so its range is widened to it.
MIN_RANGE_SPAN = 1e-3


def floor_degenerate_ranges(ranges: dict[str, dict[str, Any]], min_span: float = MIN_RANGE_SPAN) -> dict[str, dict[str, Any]]:
    """ai-edge-quantizer's calibration result ({tensor: {"min", "max"}}) with every range at least ``min_span`` wide."""
    floored = {}
    for name, qsv in ranges.items():
        if isinstance(qsv, dict) and "min" in qsv and "max" in qsv:
            low = np.asarray(qsv["min"], dtype=np.float32)
            qsv = {**qsv, "max": np.maximum(np.asarray(qsv["max"], dtype=np.float32), low + np.float32(min_span))}
        floored[name] = qsv
    return floored


# TFLite's int8 ADD/SUB rescale both inputs to 2 x max(input scale) with a 20-bit left shift and need
# 2 x max(input scale) / (2**20 x output scale) < 1, or the interpreter aborts the process in Prepare
# (QuantizeMultiplierSmallerThanOneExp). A tensor that was (nearly) constant on the calibration faces, e.g. a
# ReLU-fused ADD that never fired, gets a near-zero scale and breaks that bound.
_ADD_LEFT_SHIFT = 20


def widen_degenerate_add_scales(data: bytes) -> bytes:
    """Raise the output scale of int8 ADD/SUB ops whose calibrated range was degenerate (see above)."""
    from ai_edge_litert import schema_py_generated as schema

    model = read_model(data)
    codes = (schema.BuiltinOperator.ADD, schema.BuiltinOperator.SUB)
    changed = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) not in codes:
                continue
            tensors = [subgraph.tensors[i] for i in [*op.inputs[:2], op.outputs[0]] if i >= 0]
            if len(tensors) != 3 or any(t.type != schema.TensorType.INT8 or t.quantization is None or t.quantization.scale is None for t in tensors):
                continue
            *inputs, out = tensors
            twice_max = 2.0 * max(float(np.max(t.quantization.scale)) for t in inputs)
            if float(np.max(out.quantization.scale)) * (1 << _ADD_LEFT_SHIFT) <= twice_max:
                out.quantization.scale = [twice_max / (1 << (_ADD_LEFT_SHIFT - 1))]  # a factor of 2 inside the bound
                changed += 1
    return write_model(model) if changed else data


# ---- flatbuffer surgery ------------------------------------------------------------------------------


def read_model(data: bytes):
    """The flatbuffer as the TFLite schema's object API (``ModelT``)."""
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def write_model(model) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value or "")


def _single_subgraph(model, what: str):
    if len(model.subgraphs) != 1 or len(model.signatureDefs or []) != 1:
        raise ExportError(f"the converted {what} has {len(model.subgraphs)} subgraphs and {len(model.signatureDefs or [])} signatures; expected one of each")
    return model.subgraphs[0], model.signatureDefs[0]


def name_heatmaps(data: bytes) -> bytes:
    """Name the network's output tensor ``heatmaps`` (the signature already calls it so)."""
    model = read_model(data)
    subgraph, _ = _single_subgraph(model, "network")
    (out,) = subgraph.outputs
    subgraph.tensors[out].name = HEATMAPS_NAME
    return write_model(model)


def attach_head(body_data: bytes, head_data: bytes) -> bytes:
    """``body`` (heatmaps out) followed by ``head`` (heatmaps in): one subgraph, the head's outputs.

    Operator codes are shared where equal, buffers and tensors appended (head
    tensor names prefixed), the head's input tensor replaced by the body's
    output, and the signature's outputs become the head's.
    """
    from ai_edge_litert import schema_py_generated as schema

    body, head = read_model(body_data), read_model(head_data)
    bsub, bsig = _single_subgraph(body, "network")
    hsub, hsig = _single_subgraph(head, "decoding head")
    (b_out,) = bsub.outputs
    (h_in,) = hsub.inputs
    if bsub.tensors[b_out].type != schema.TensorType.FLOAT32:
        raise ExportError("the decoding head must follow float32 heatmaps (quantize the network with float outputs)")

    def code_key(oc) -> tuple:
        return (oc.builtinCode, oc.deprecatedBuiltinCode, _text(oc.customCode), oc.version)

    op_map = {}
    for i, oc in enumerate(head.operatorCodes):
        keys = [code_key(o) for o in body.operatorCodes]
        if code_key(oc) in keys:
            op_map[i] = keys.index(code_key(oc))
        else:
            body.operatorCodes.append(oc)
            op_map[i] = len(body.operatorCodes) - 1
    buf_map = {0: 0}  # buffer 0 is the empty sentinel in both
    for i, buf in enumerate(head.buffers):
        if i and (buf.data is not None and len(buf.data)):
            body.buffers.append(buf)
            buf_map[i] = len(body.buffers) - 1
    t_map = {h_in: b_out}
    for i, tensor in enumerate(hsub.tensors):
        if i == h_in:
            continue
        tensor.buffer = buf_map.get(tensor.buffer, 0)
        tensor.name = HEAD_PREFIX + _text(tensor.name)
        bsub.tensors.append(tensor)
        t_map[i] = len(bsub.tensors) - 1

    def remap(indices):
        return None if indices is None else [t_map[j] if j >= 0 else j for j in indices]

    for op in hsub.operators:
        op.opcodeIndex = op_map[op.opcodeIndex]
        op.inputs, op.outputs, op.intermediates = remap(op.inputs), remap(op.outputs), remap(op.intermediates)
        bsub.operators.append(op)
    bsub.outputs = [t_map[j] for j in hsub.outputs]
    for entry in hsig.outputs:
        entry.tensorIndex = t_map[entry.tensorIndex]
    bsig.outputs = hsig.outputs
    bsub.tensors[b_out].name = HEATMAPS_NAME
    return write_model(body)


def batch_mismatches(data: bytes, batch: int = STATIC_BATCH) -> list[str]:
    """The activations of rank 4 (tensors computed from the graph's input, not weights nor their dequantized
    copies) whose batch axis, in shape or shape signature, is not ``batch``."""
    model = read_model(data)
    bad = []
    for subgraph in model.subgraphs:
        live = set(subgraph.inputs or [])
        for op in subgraph.operators:  # topological order
            if any(i in live for i in (op.inputs if op.inputs is not None else [])):
                live.update(int(o) for o in (op.outputs if op.outputs is not None else []))
        for index in sorted(live):
            tensor = subgraph.tensors[index]
            for shape in (tensor.shape, tensor.shapeSignature):
                if shape is not None and len(shape) == 4 and int(shape[0]) != batch:
                    bad.append(f"{_text(tensor.name)} {list(map(int, shape))}")
                    break
    return bad


def check_static_batch(data: bytes, batch: int = STATIC_BATCH) -> None:
    """Refuse a graph with any 4-D activation whose batch is not ``batch`` (NPU compilers reject them)."""
    bad = batch_mismatches(data, batch)
    if bad:
        raise ExportError(f"{len(bad)} tensors of the TFLite graph do not have batch {batch}, e.g. {bad[0]}")


def io_quantization(data: bytes) -> dict[str, Any]:
    """``{signature name: {dtype, scale, zero_point}}`` of the integer inputs and outputs (empty for float I/O)."""
    model = read_model(data)
    subgraph, sig = _single_subgraph(model, "model")
    info = {}
    for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
        tensor = subgraph.tensors[entry.tensorIndex]
        if tensor.type in (0, 1):  # float32, float16
            continue
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            raise ExportError(f"tensor {_text(entry.name)} is integer without one scale and zero point")
        info[_text(entry.name)] = {
            "dtype": _TYPE_NAMES.get(tensor.type, str(tensor.type)),
            "scale": float(q.scale[0]),
            "zero_point": int(q.zeroPoint[0]),
        }
    return info


def embed_contract(data: bytes, contract) -> bytes:
    """Put the contract in ``Model.metadata`` under :data:`METADATA_KEY` (replacing any earlier one), with the
    standard ``TFLITE_METADATA`` written from the same contract (:mod:`fan_edge.export.tflite_metadata`)."""
    from ai_edge_litert import schema_py_generated as schema

    from .. import __version__
    from .tflite_metadata import attach_metadata, model_metadata

    model = read_model(data)
    attach_metadata(model, model_metadata(model, contract))
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(contract.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    model.description = f"fan-edge {__version__}: FAN {contract.model} {contract.precision} ({contract.outputs}); contract in metadata {METADATA_KEY!r}"
    return write_model(model)


def _check_loads(data: bytes, contract) -> None:
    """The interpreter accepts the model and its signature is what the contract names."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=data, num_threads=1)
        runner = interpreter.get_signature_runner(SIGNATURE)
    except Exception as exc:  # the interpreter raises ValueError / RuntimeError with native text
        raise ExportError(f"the exported TFLite model does not load: {first_line(exc)}") from exc
    inputs, outputs = list(runner.get_input_details()), set(runner.get_output_details())
    if inputs != [contract.input_name] or outputs != set(contract.output_names):
        raise ExportError(f"the exported TFLite signature has inputs {inputs} and outputs {sorted(outputs)}, not the contract's")


def build_tflite(job: ExportJob) -> bytes:
    """The final flatbuffer of ``job`` (precision applied, head attached, contract refined and embedded, loaded)."""
    landmarks = job.outputs == "landmarks"
    model = fp32_backbone(job)
    if job.precision == "fp16":
        model = to_fp16(model)
    elif job.precision == "int8":
        # A landmarks model keeps the network's output float: the head follows it in float32.
        model = to_int8(model, job.calibration, job.int8, float_output=landmarks)
    model = name_heatmaps(model)
    if landmarks:
        model = attach_head(model, fp32_head(job))
    extra = dict(job.contract.extra)
    quantized = io_quantization(model)
    if quantized:
        extra["quantized_io"] = quantized
    job.contract = job.contract.replace(layout="NHWC", batch=STATIC_BATCH, extra=extra)
    check_static_batch(model, STATIC_BATCH)
    from .tflite_metadata import append_associated_files

    model = embed_contract(model, job.contract)
    model = append_associated_files(model, {CONTRACT_FILE: job.contract.to_json(indent=2).encode("utf-8")})
    _check_loads(model, job.contract)
    return model


def export_tflite(job: ExportJob) -> list[Path]:
    """Write ``job.output`` (.tflite) into the staging area; return the final path."""
    if job.output.suffix != ".tflite":
        raise ExportError(f"a TFLite model is a .tflite file, got {job.output.name}")
    data = build_tflite(job)
    job.staging.path(job.output).write_bytes(data)
    return [job.output]
