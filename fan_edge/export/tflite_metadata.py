"""Standard TFLite metadata (``TFLITE_METADATA``) for fan-edge's ``.tflite`` artifacts.

Android Studio's ML model binding, the TFLite Support library and MediaPipe
read a ``ModelMetadata`` flatbuffer from the model's ``TFLITE_METADATA``
metadata buffer, and its associated files from a zip appended to the model.
fan-edge writes both, with the schema's own generated bindings
(:mod:`fan_edge.export.third_party.tflite_metadata`): the input as an RGB
image with the normalisation that gives the contract's value range, each
output with what its numbers mean, and the contract JSON as an associated
file. The runtime keeps reading its contract from ``Model.metadata``
``fan_edge.contract``; the two are written from one contract in one step.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import flatbuffers
import numpy as np

from ..errors import ExportError
from ..runtime.contract import OUTPUT_ROLES, ModelContract
from .descriptions import CONTRACT_FILE, describe
from .third_party.tflite_metadata import schema as md

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# Every field written here exists since schema 1.0.0 (metadata_schema.fbs's "Added in" notes).
MIN_PARSER_VERSION = "1.0.0"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")


def _signature_names(model: Any, indices: list[int], kind: str) -> list[str]:
    """The signature name of each subgraph input or output tensor, in subgraph order."""
    signatures = model.signatureDefs or []
    if len(signatures) != 1:
        raise ExportError(f"the TFLite model has {len(signatures)} signatures; fan-edge artifacts have one")
    by_index = {m.tensorIndex: _text(m.name) for m in (getattr(signatures[0], kind) or [])}
    return [by_index.get(int(i), "") for i in indices]


def _image_input(contract: ModelContract, text: str) -> Any:
    lo, hi = contract.value_range
    tensor = md.TensorMetadataT()
    tensor.name = "image"
    tensor.description = text
    content = md.ContentT()
    props = md.ImagePropertiesT()
    props.colorSpace = md.ColorSpaceType.RGB if contract.channel_order == "RGB" else md.ColorSpaceType.UNKNOWN
    size = md.ImageSizeT()
    size.width = size.height = contract.input_size
    props.defaultSize = size
    content.contentProperties = props
    content.contentPropertiesType = md.ContentProperties.ImageProperties
    tensor.content = content
    # (pixel - mean) / std maps 0..255 onto [lo, hi].
    norm = md.NormalizationOptionsT()
    norm.mean = [float(-lo * 255.0 / (hi - lo)) + 0.0]  # + 0.0: no negative zero
    norm.std = [float(255.0 / (hi - lo))]
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    tensor.processUnits = [unit]
    stats = md.StatsT()
    stats.min, stats.max = [float(lo)], [float(hi)]
    tensor.stats = stats
    return tensor


def _feature_output(role: str, text: str) -> Any:
    tensor = md.TensorMetadataT()
    tensor.name = role
    tensor.description = text
    content = md.ContentT()
    content.contentProperties = md.FeaturePropertiesT()
    content.contentPropertiesType = md.ContentProperties.FeatureProperties
    tensor.content = content
    if role == "heatmaps":
        stats = md.StatsT()
        stats.min, stats.max = [0.0], [1.0]
        tensor.stats = stats
    return tensor


def model_metadata(model: Any, contract: ModelContract) -> bytes:
    """The ``ModelMetadata`` flatbuffer for a model (``ModelT``, one subgraph) with this contract."""
    info = describe(contract)
    graph = model.subgraphs[0]
    inputs = _signature_names(model, list(graph.inputs), "inputs")
    outputs = _signature_names(model, list(graph.outputs), "outputs")
    if inputs != [contract.input_name]:
        raise ExportError(f"the TFLite model's inputs are {inputs}, not the contract's {contract.input_name!r}")
    roles = dict(zip(contract.output_names, OUTPUT_ROLES[contract.outputs]))
    if sorted(outputs) != sorted(roles):
        raise ExportError(f"the TFLite model's outputs are {outputs}, not the contract's {sorted(roles)}")
    sub = md.SubGraphMetadataT()
    sub.name = "serving_default"
    sub.description = info.description
    sub.inputTensorMetadata = [_image_input(contract, info.input)]
    sub.outputTensorMetadata = [_feature_output(roles[name], info.outputs[roles[name]]) for name in outputs]
    contract_file = md.AssociatedFileT()
    contract_file.name = CONTRACT_FILE
    contract_file.description = ("fan-edge preprocessing contract (JSON): crop from a face box, channel order, value "
                                 "range, layout, heatmap decoding, landmark order and mirror pairs")
    contract_file.type = md.AssociatedFileType.DESCRIPTIONS
    meta = md.ModelMetadataT()
    meta.name = info.name
    meta.description = info.description
    meta.version = info.version
    meta.author = info.author
    meta.license = info.license
    meta.subgraphMetadata = [sub]
    meta.associatedFiles = [contract_file]
    meta.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def attach_metadata(model: Any, metadata: bytes) -> None:
    """Put ``metadata`` in ``model`` (``ModelT``) as its ``TFLITE_METADATA`` buffer, replacing an earlier one."""
    from ai_edge_litert import schema_py_generated as schema

    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)


def append_associated_files(data: bytes, files: dict[str, bytes]) -> bytes:
    """The model followed by a zip of ``files``, as TFLite Support packs associated files (the flatbuffer is unchanged)."""
    out = io.BytesIO(data)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def read_model_metadata(data: bytes) -> Any:
    """The ``ModelMetadataT`` inside a ``.tflite`` (None when it has none): what a test or a tool reads back."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    for entry in model.metadata or []:
        if _text(entry.name) == METADATA_NAME:
            raw = bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8))
            if not md.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
                raise ExportError(f"{METADATA_NAME} is not a ModelMetadata flatbuffer (identifier {raw[4:8]!r})")
            return md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(raw, 0))
    return None


def associated_files(data: bytes) -> dict[str, bytes]:
    """The files zipped onto a ``.tflite``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}
