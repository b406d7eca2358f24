"""Fuzz artifact and contract loading (LandmarkSession on .onnx / .tflite / OpenVINO IR, sidecar JSON) with atheris.

    python fuzz/fuzz_artifact.py --target=onnx fuzz/corpus/artifact-onnx -max_total_time=60

``--target`` is one of onnx, tflite, openvino-xml, openvino-bin, contract (the
corpus folder is ``fuzz/corpus/artifact-<target>``, or ``fuzz/corpus/contract``).
Anything but a FanEdgeError (or success) is a crash. See fuzz/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import main  # noqa: E402

TARGETS = {"onnx": "artifact-onnx", "tflite": "artifact-tflite", "openvino-xml": "artifact-openvino-xml",
           "openvino-bin": "artifact-openvino-bin", "contract": "contract"}

if __name__ == "__main__":
    chosen = [a for a in sys.argv[1:] if a.startswith("--target=")]
    if len(chosen) != 1 or chosen[0].split("=", 1)[1] not in TARGETS:
        raise SystemExit(f"usage: {sys.argv[0]} --target={{{','.join(TARGETS)}}} CORPUS_DIR [libFuzzer flags]")
    command = f"{sys.executable} {Path(__file__).resolve()} {chosen[0]}"  # how libFuzzer re-runs it for -merge=1
    main(TARGETS[chosen[0].split("=", 1)[1]], [command, *(a for a in sys.argv[1:] if a not in chosen)])
