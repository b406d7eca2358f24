"""Core ML target: an ML program package (``.mlpackage``, a folder) made by coremltools.

- The FAN is traced (``torch.jit.trace``) and converted with
  ``ct.convert(..., convert_to="mlprogram")``; input ``input`` (N, 3, S, S)
  float32 with a flexible batch axis (1 to :data:`MAX_BATCH`; an ML program
  needs a bound), output ``heatmaps`` (N, K, S/4, S/4) float32. NCHW, like
  the ONNX target.
- fp32: ``compute_precision=FLOAT32``; fp16: ``FLOAT16`` (weights and
  activations; inputs and outputs stay float32); int8: fp16 compute with the
  convolution weights quantized to int8 (``coremltools.optimize.coreml.linear_quantize_weights``,
  symmetric, per output channel): Core ML's W8A16, the form that runs on the
  Neural Engine.
- ``outputs="landmarks"``: the decoding head of :mod:`fan_edge.export.landmarks`
  is converted on its own in float32 and chained after the network in a Core
  ML pipeline (``ct.utils.make_pipeline``), so it is never halved nor
  quantized (a float16 head would round crop coordinates by up to 0.03 px).
- The contract goes into the model's user-defined metadata
  (``user_defined_metadata["fan_edge.contract"]``).

Prediction needs macOS (Core ML itself): on other systems the export is
checked by loading its spec back (inputs, outputs, shapes, metadata), and the
status is "not verified" with the reason "prediction needs macOS". The package is built
whole in the staging folder and moved into place as one folder
(:mod:`fan_edge.export.staging`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError, first_line
from ..runtime.contract import METADATA_KEY, OUTPUT_ROLES, ModelContract
from .descriptions import describe
from .int8 import Int8Recipe
from .job import ExportJob
from .metadata import HEATMAPS_NAME, INPUT_NAME
from .quiet import silenced_native_output

MAX_BATCH = 64  # the flexible batch axis's upper bound (an ML program needs one)
DEPLOYMENT_TARGET = "iOS16"  # ML programs with int8 weights (constexpr_affine_dequantize) need iOS 16 / macOS 13


def _ct():
    with silenced_native_output():  # its import warns about untested torch and scikit-learn versions
        import coremltools as ct

    return ct


def _convert(module: Any, example: Any, input_name: str, output_names: list[str], fp16: bool):
    """Trace ``module(example)`` and convert it to an ML program with a flexible batch axis."""
    import numpy as np
    import torch

    ct = _ct()
    shape = ct.Shape((ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=1), *example.shape[1:]))
    try:
        with silenced_native_output(), torch.no_grad():
            traced = torch.jit.trace(module.eval(), example)
            return ct.convert(
                traced,
                inputs=[ct.TensorType(name=input_name, shape=shape, dtype=np.float32)],
                outputs=[ct.TensorType(name=n, dtype=np.float32) for n in output_names],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
                minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            )
    except Exception as exc:
        raise ExportError(f"coremltools could not convert the model: {first_line(exc, with_type=True)}") from exc


def quantize_weights_int8(model, recipe: Int8Recipe | None = None):
    """Convolution weights to int8 (symmetric, per output channel, or per tensor where the export's ``recipe`` says
    so); activations keep the model's precision (the rest of the recipe is for calibrated targets)."""
    import coremltools.optimize.coreml as cto

    granularity = "per_channel" if (recipe or Int8Recipe()).per_channel else "per_tensor"
    config = cto.OptimizationConfig(
        op_type_configs={"conv": cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity=granularity)}
    )
    with silenced_native_output():
        return cto.linear_quantize_weights(model, config=config)


def build_coreml(job: ExportJob):
    """The final ``MLModel`` of ``job`` (precision applied, head chained, contract in its metadata)."""
    import torch

    from .landmarks import LandmarkHead

    cfg = job.model.config
    s = cfg.input_size
    example = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    model = _convert(job.model, example, INPUT_NAME, [HEATMAPS_NAME], fp16=job.precision in ("fp16", "int8"))
    if job.precision == "int8":
        model = quantize_weights_int8(model, job.int8)
    if job.outputs == "landmarks":
        head = LandmarkHead(cfg.input_size, cfg.heatmap_size, job.contract.refine)
        hm = torch.rand(1, cfg.num_landmarks, cfg.heatmap_size, cfg.heatmap_size, generator=torch.Generator().manual_seed(0))
        head_model = _convert(head, hm, HEATMAPS_NAME, list(job.contract.output_names), fp16=False)
        with silenced_native_output():
            model = _ct().utils.make_pipeline(model, head_model)
    extra = dict(job.contract.extra)
    extra["max_batch"] = MAX_BATCH
    job.contract = job.contract.replace(extra=extra)
    c = job.contract
    model.user_defined_metadata[METADATA_KEY] = c.to_json()
    info = describe(c)
    model.author = info.author
    model.license = info.license
    model.version = info.version
    model.short_description = f"{info.description} Contract JSON in metadata {METADATA_KEY!r}."
    model.input_description[c.input_name] = info.input
    for name, role in zip(c.output_names, OUTPUT_ROLES[c.outputs]):
        model.output_description[name] = info.outputs[role]
    return model


def check_spec(path: str | Path, contract: ModelContract) -> None:
    """Load the package's spec back (no Core ML runtime needed) and check it against ``contract``."""
    ct = _ct()
    try:
        with silenced_native_output():
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:
        raise ExportError(f"{path}: coremltools cannot read the package back ({first_line(exc)})") from exc
    desc = spec.description
    inputs, outputs = [i.name for i in desc.input], [o.name for o in desc.output]
    if inputs != [contract.input_name] or outputs != list(contract.output_names):
        raise ExportError(f"{path}: inputs {inputs} and outputs {outputs} do not match the contract")
    array = desc.input[0].type.multiArrayType
    ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
    s = contract.input_size
    if ranges != [(1, MAX_BATCH), (3, 3), (s, s), (s, s)]:
        raise ExportError(f"{path}: input shape ranges {ranges} are not (1..{MAX_BATCH}, 3, {s}, {s})")
    if not desc.metadata.license or not desc.input[0].shortDescription or not all(o.shortDescription for o in desc.output):
        raise ExportError(f"{path}: the spec lacks its licence or a description of an input or output")
    embedded = dict(desc.metadata.userDefined).get(METADATA_KEY)
    if embedded is None or ModelContract.from_json(embedded) != contract:
        raise ExportError(f"{path}: the contract in the package's metadata is missing or differs")


def export_coreml(job: ExportJob) -> list[Path]:
    """Write ``job.output`` (.mlpackage, a folder) into the staging area, check its spec; return the final path."""
    if job.output.suffix != ".mlpackage":
        raise ExportError(f"a Core ML ML program is an .mlpackage folder, got {job.output.name}")
    model = build_coreml(job)
    staged = job.staging.path(job.output)
    with silenced_native_output():
        model.save(str(staged))
    check_spec(staged, job.contract)
    return [job.output]


def read_contract(path: str | Path) -> ModelContract:
    """The contract inside an ``.mlpackage`` (its user-defined metadata), read with coremltools."""
    ct = _ct()
    with silenced_native_output():
        model = ct.models.MLModel(str(path), skip_model_load=True)
    text = model.user_defined_metadata.get(METADATA_KEY)
    if text is None:
        raise ExportError(f"{path}: no {METADATA_KEY} in the package's metadata")
    return ModelContract.from_json(text)


__all__ = ["MAX_BATCH", "build_coreml", "check_spec", "export_coreml", "quantize_weights_int8", "read_contract"]
