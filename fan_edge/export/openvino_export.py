"""OpenVINO IR target: ``model.xml`` + ``model.bin``.

Starts from the same fp32 ONNX graph as the ONNX target
(:func:`fan_edge.export.onnx_export.fp32_backbone`), converted with
``openvino.convert_model``:

- fp32: weights kept fp32 (``save_model(..., compress_to_fp16=False)``; the
  default would halve them);
- fp16: weights compressed to fp16 (OpenVINO's own compression, decompressed
  on load; the CPU computes in f32 or bf16 per the inference precision hint);
- int8: NNCF post-training quantization (``nncf.quantize``, MIXED preset:
  asymmetric activations) of the OpenVINO model on an ``nncf.Dataset`` of
  calibration crops, one face per sample, activation ranges by
  ``MEAN_MINMAX`` (per-face extremes averaged) and the convolutions that
  :mod:`fan_edge.export.int8` keeps float in the ignored scope. A
  quantization-aware-trained checkpoint (``fan-quantize --qat``) takes the
  same route with its fine-tuned weights, as it does for ONNX and TFLite:
  on AFW that beat converting NNCF's trained quantizers to FakeQuantize ops
  on the QAT checkpoints of docs/quantization.md.

``outputs="landmarks"``: the decoding head is converted on its own and wired
after the compressed or quantized network (its parameter's consumers are
re-pointed at the network's heatmaps), so it holds no FakeQuantize and no fp16
constant. The contract goes into ``rt_info`` under ``fan_edge/contract``.
The ``.bin`` is committed before the ``.xml`` that reads it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import ExportError
from ..runtime.contract import RT_INFO_PATH
from .int8 import Int8Recipe, is_float_conv_weight
from .job import ExportJob
from .metadata import HEATMAPS_NAME
from .onnx_export import fp32_backbone, fp32_head
from .quiet import quiet_exporters


def _convert(proto, workdir: Path, name: str):
    import onnx
    import openvino as ov

    path = workdir / f"{name}.onnx"
    onnx.save(proto, str(path))
    return ov.convert_model(str(path))


def _compress_fp16(model, workdir: Path):
    """Weights to fp16 the way ``save_model`` does it, read back so that more can be wired after."""
    import openvino as ov

    path = workdir / "fp16.xml"
    ov.save_model(model, str(path), compress_to_fp16=True)
    return ov.Core().read_model(str(path))


def quantize_int8(model, calibration, recipe: Int8Recipe | None = None):
    """NNCF post-training int8 of an ov.Model (see the module docstring) by the export's ``recipe`` (None: its
    defaults): its layers kept float, per-channel or per-tensor weights, its range method."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if calibration is None:
        raise ExportError("int8 needs calibration faces: pass --calib DIR (images with .pts)")
    recipe = recipe or Int8Recipe()
    ranges = {"mean_minmax": RangeEstimatorParametersSet.MEAN_MINMAX}[recipe.method]
    patterns = recipe.float_layers("openvino")
    excluded = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Convolution" and _float_conv(op, patterns)]
    with quiet_exporters():
        nncf.set_log_level(logging.ERROR)
        return nncf.quantize(
            model,
            calibration.nncf_dataset(),
            subset_size=len(calibration),
            preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: measured better than PERFORMANCE here
            ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None,
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=ranges,
                weights_quantization_params=None if recipe.per_channel else QuantizationParameters(per_channel=False),
            ),
        )


def _float_conv(op, patterns: tuple[str, ...]) -> bool:
    """Whether a Convolution's weights are those of a layer that ``patterns`` keep float."""
    source = op.input_value(1).get_node()
    while source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    names = {source.get_friendly_name()} | {n for out in source.outputs() for n in out.get_names()}
    return any(is_float_conv_weight(n, patterns) for n in names)


def attach_head(body, head):
    """Wire ``head``'s parameter consumers to ``body``'s heatmaps: one model, the head's outputs."""
    import openvino as ov

    heatmaps = body.output(HEATMAPS_NAME).get_node().input_value(0)  # the producer, not the Result node
    (param,) = head.get_parameters()
    for target in list(param.output(0).get_target_inputs()):
        target.replace_source_output(heatmaps)
    return ov.Model(head.get_results(), body.get_parameters(), body.get_friendly_name())


def build_openvino(job: ExportJob, workdir: Path):
    """The final ov.Model of ``job`` (precision applied, head attached, contract in rt_info)."""
    model = _convert(fp32_backbone(job), workdir, "backbone")
    if job.precision == "fp16":
        model = _compress_fp16(model, workdir)
    elif job.precision == "int8":
        model = quantize_int8(model, job.calibration, job.int8)
    if job.outputs == "landmarks":
        model = attach_head(model, _convert(fp32_head(job), workdir, "head"))
    model.set_rt_info(job.contract.to_json(), list(RT_INFO_PATH))
    return model


def export_openvino(job: ExportJob) -> list[Path]:
    """Write ``job.output`` (.xml) and its .bin into the staging area; return the final paths, .bin first."""
    import openvino as ov

    if job.output.suffix != ".xml":
        raise ExportError(f"an OpenVINO IR is an .xml file (with its .bin), got {job.output.name}")
    with tempfile.TemporaryDirectory(prefix="fan-export-ov-", dir=job.staging.folder) as tmp:  # swept with the staging
        model = build_openvino(job, Path(tmp))
        ov.save_model(model, str(job.staging.path(job.output)), compress_to_fp16=False)
    return [job.output.with_suffix(".bin"), job.output]
