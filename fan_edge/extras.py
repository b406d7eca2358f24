"""Which pip extra installs which module: a toolkit command in a runtime-only install says what to add, in one line.

The base install is the runtime (numpy and Pillow); everything torch-side
comes with the extras named here (``pyproject.toml``).
"""

from __future__ import annotations

# Top-level import name -> the extra that brings it.
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "train",
    "safetensors": "train",
    "albumentations": "train",
    "cv2": "train",
    "tqdm": "train",
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxslim": "onnx",
    "onnxconverter_common": "onnx",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "nncf": "openvino-export",
    "ai_edge_litert": "litert",
    "litert_torch": "tflite",
    "ai_edge_quantizer": "tflite",
    "coremltools": "coreml",
    "matplotlib": "bench",
    "torch_pruning": "compress",
    "dlib": "detect",
    "face_recognition_models": "label",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for an import that failed because an extra is not installed, or None if it is not one."""
    name = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return f"this needs the {extra} extra ({name} is not installed): pip install 'fan-edge[{extra}]'"
