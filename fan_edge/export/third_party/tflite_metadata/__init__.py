"""TFLite's metadata schema (``metadata_schema.fbs``, version 1.5.0) and its flatc-generated Python bindings.

Copied unchanged from the ``tflite-support`` 0.4.4 wheel (Apache License 2.0,
``LICENSE`` here). That package cannot be a dependency: it pins
``protobuf < 4``, which the ONNX and OpenVINO toolchains exclude, and its
native parts need libusb. The bindings need only the ``flatbuffers``
package, so fan-edge writes the standard ``TFLITE_METADATA`` that Android
Studio's ML model binding and the TFLite Support library read, with the
schema's own generated code.
"""

from . import metadata_schema_py_generated as schema

__all__ = ["schema"]
