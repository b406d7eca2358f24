"""The atheris side of the fuzz targets in targets.py: argument handling, instrumentation, the libFuzzer loop.

libFuzzer's flags pass through (``-max_total_time=300``, ``-runs=N``,
``-merge=1``...); positional arguments are corpus folders, made absolute
because the fuzzer runs in a scratch directory (a pickle payload that ran
would leave its marker there, and the target checks for it). Crash inputs go
to ``fuzz/crashes/`` unless ``-artifact_prefix`` says otherwise. One process,
one thread: the machine is shared.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent

# Every fan_edge module a target reaches, imported under instrumentation (modules imported lazily later would not be).
MODULES = (
    "fan_edge.errors", "fan_edge.models", "fan_edge.models.checkpoints", "fan_edge.models.config", "fan_edge.models.fan",
    "fan_edge.models.blocks", "fan_edge.models.channels", "fan_edge.runtime.contract", "fan_edge.runtime.crop",
    "fan_edge.runtime.decode", "fan_edge.runtime.image", "fan_edge.runtime.session", "fan_edge.runtime.backends",
    "fan_edge.runtime.backends.pool",
)
# Pure-Python parts of the libraries a target drives, instrumented function by function (importing them under
# instrument_imports would instrument all of torch) so that coverage guides the fuzzer through them too: torch's
# weights-only unpickler for checkpoints. The native readers of the other formats cannot be.
LIBRARY_MODULES = {"checkpoint": ("torch._weights_only_unpickler",)}
BACKEND_MODULES = {
    "artifact-onnx": "fan_edge.runtime.backends.onnxruntime_backend",
    "artifact-tflite": "fan_edge.runtime.backends.litert_backend",
    "artifact-openvino-xml": "fan_edge.runtime.backends.openvino_backend",
    "artifact-openvino-bin": "fan_edge.runtime.backends.openvino_backend",
}


def _libfuzzer_args(argv: list[str]) -> list[str]:
    # argv[0] is how libFuzzer re-runs this fuzzer for -merge=1 and -jobs (through the shell, after our chdir):
    # the interpreter and the script by absolute path, and --target, which libFuzzer itself must not see.
    args = [argv[0]]
    for arg in argv[1:]:
        args.append(arg if arg.startswith("-") else str(Path(arg).resolve()))
    if not any(a.startswith("-artifact_prefix=") for a in args):
        crashes = FUZZ_DIR / "crashes"
        crashes.mkdir(exist_ok=True)
        args.append(f"-artifact_prefix={crashes}/")
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=60")
    return args


def _instrument_module(atheris, module) -> None:
    """Instrument the functions and methods defined in ``module`` (already imported) in place."""
    import inspect

    for obj in vars(module).values():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            atheris.instrument_func(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for member in vars(obj).values():
                if inspect.isfunction(member):
                    atheris.instrument_func(member)


def main(target: str, argv: list[str]) -> None:
    """Fuzz ``target`` (a key of targets.TARGETS) with libFuzzer arguments ``argv``."""
    import importlib

    import atheris

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")  # torch's pickle-protocol notices, once per input, would drown libFuzzer's status lines
    args = _libfuzzer_args(argv)
    sys.path.insert(0, str(FUZZ_DIR))
    with atheris.instrument_imports(include=["fan_edge", "targets"]):
        for name in MODULES + ((BACKEND_MODULES[target],) if target in BACKEND_MODULES else ()):
            importlib.import_module(name)
        import targets
    for name in LIBRARY_MODULES.get(target, ()):
        _instrument_module(atheris, importlib.import_module(name))
    import torch

    torch.set_num_threads(1)
    if target not in targets.TARGETS:
        raise SystemExit(f"unknown target {target!r}; one of {', '.join(targets.TARGETS)}")
    os.chdir(tempfile.mkdtemp(prefix="fan-edge-fuzz-cwd-"))

    def one_input(data: bytes) -> None:
        targets.run_one(target, data)

    atheris.Setup(args, one_input)
    atheris.Fuzz()
