"""Latency of a ``.tflite`` artifact on an Android device, measured by LiteRT's ``benchmark_model`` over adb.

::

    from fan_edge.bench.profile.adb import AdbOptions, profile_adb

    row = profile_adb("fan2-w64-i128-fp32.tflite", "android_aarch64_benchmark_model", AdbOptions(threads=4))

The steps are the ones the tool's README gives (tensorflow/lite/tools/benchmark/README.md,
"On Android"): ``adb push`` the binary and the model to ``/data/local/tmp``,
``adb shell chmod +x`` the binary, ``adb shell benchmark_model --graph=...``,
then the pushed files are removed. The timing is the tool's own (random input,
``--num_runs`` timed invocations after ``--warmup_runs``, batch 1): the network
alone, on the device, with the chosen delegate. Command lines are built by pure
functions (:func:`push_command`, :func:`benchmark_command`...) so that they can
be checked without a device.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ProfileError
from ...limits import MAX_THREADS, check_int
from ...ondevice.bench import artifact_size_mb
from ...rows import Status
from ...runtime.contract import read_sidecar
from ._run import find_tool, last_line, run_tool
from .benchmark_model import failure_reason, parse_benchmark_output

DEFAULT_REMOTE_DIR = "/data/local/tmp"
ADB_HINT = "install Android platform-tools (https://developer.android.com/tools/releases/platform-tools) or pass --adb PATH"
# What the device's shell says when it cannot start a binary (bionic sh / toybox).
_CANNOT_EXECUTE = ("can't execute", "not executable", "permission denied", "inaccessible or not found",
                   "exec format error", "no such file or directory", "cannot execute", "not found")


@dataclass(frozen=True)
class AdbOptions:
    """How to run benchmark_model; None leaves the tool's own default (which the row then reports as null)."""

    serial: str | None = None
    threads: int | None = None
    xnnpack: bool | None = None  # None: the tool's default (recent builds apply XNNPACK to float CPU graphs)
    gpu: bool = False
    nnapi: bool = False
    runs: int = 100
    warmup: int = 10
    peak_memory: bool = True  # --report_peak_memory_footprint (a 50 ms sampling thread; negligible next to a FAN)
    op_profiling: bool = False  # per-operator table in the log; adds overhead to every run
    extra_args: tuple[str, ...] = ()
    taskset: str | None = None  # CPU affinity mask for the device's taskset, e.g. "f0" (the big cores of many phones)
    remote_dir: str = DEFAULT_REMOTE_DIR
    adb: str = "adb"
    timeout_s: float = 600.0
    keep: bool = False  # leave the pushed files on the device
    log: Path | None = field(default=None)  # where to save benchmark_model's full output


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    state: str


def adb_base(adb: str, serial: str | None) -> list[str]:
    return [adb] + (["-s", serial] if serial else [])


def parse_devices(text: str) -> list[AdbDevice]:
    """``adb devices`` output: a header line, then ``SERIAL<TAB>STATE`` lines (state: device, unauthorized, offline...)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue  # the header, and "* daemon started successfully" chatter
        parts = line.split()
        if len(parts) >= 2:
            devices.append(AdbDevice(parts[0], parts[1]))
    return devices


def pick_device(devices: list[AdbDevice], serial: str | None) -> str:
    """The serial to use: ``serial`` if attached and ready, else the only ready device; a ProfileError otherwise."""
    if serial is not None:
        match = [d for d in devices if d.serial == serial]
        if not match:
            listed = ", ".join(d.serial for d in devices) or "none"
            raise ProfileError(f"device {serial} is not attached (adb devices lists: {listed})")
        if match[0].state != "device":
            raise ProfileError(f"device {serial} is {match[0].state}" + (
                " (accept the USB debugging prompt on the device)" if match[0].state == "unauthorized" else ""))
        return serial
    ready = [d for d in devices if d.state == "device"]
    if not ready:
        others = ", ".join(f"{d.serial} ({d.state})" for d in devices)
        raise ProfileError("no Android device ready (adb devices lists " + (others or "none") + ")" + (
            "; accept the USB debugging prompt on the device" if any(d.state == "unauthorized" for d in devices) else ""))
    if len(ready) > 1:
        raise ProfileError(f"{len(ready)} devices attached ({', '.join(d.serial for d in ready)}); choose one with --serial")
    return ready[0].serial


def remote_path(remote_dir: str, local: str | Path) -> str:
    return f"{remote_dir.rstrip('/')}/{Path(local).name}"


def push_command(adb: str, serial: str, local: str | Path, remote: str) -> list[str]:
    return adb_base(adb, serial) + ["push", str(local), remote]


def shell_command(adb: str, serial: str, *args: str) -> list[str]:
    """``adb -s SERIAL shell ARGS``; adb joins the arguments into one line for the device's sh, so each is quoted."""
    return adb_base(adb, serial) + ["shell", " ".join(shlex.quote(a) for a in args)]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def benchmark_args(binary: str, graph: str, options: AdbOptions) -> list[str]:
    """benchmark_model's command line (flag names from tensorflow/lite/tools/benchmark/README.md).

    ``--min_secs=0`` and ``--warmup_min_secs=0`` make the run counts exactly
    ``runs`` and ``warmup`` (the tool otherwise keeps going for at least 1 s and 0.5 s).
    """
    args = [binary, f"--graph={graph}", f"--num_runs={options.runs}", f"--warmup_runs={options.warmup}",
            "--min_secs=0", "--warmup_min_secs=0"]
    if options.threads is not None:
        args.append(f"--num_threads={options.threads}")
    if options.xnnpack is not None:
        args.append(f"--use_xnnpack={_flag(options.xnnpack)}")
    if options.gpu:
        args.append("--use_gpu=true")
    if options.nnapi:
        args.append("--use_nnapi=true")
    if options.peak_memory:
        args.append("--report_peak_memory_footprint=true")
    if options.op_profiling:
        args.append("--enable_op_profiling=true")
    return args + list(options.extra_args)


def benchmark_command(adb: str, serial: str, binary: str, graph: str, options: AdbOptions) -> list[str]:
    pin = ["taskset", options.taskset] if options.taskset else []
    return shell_command(adb, serial, *pin, *benchmark_args(binary, graph, options))


def delegate_name(options: AdbOptions) -> str:
    """What ran the graph, as far as the flags decide it (the tool falls back to the CPU for unsupported ops)."""
    if options.gpu:
        return "gpu"
    if options.nnapi:
        return "nnapi"
    if options.xnnpack is False:
        return "cpu (builtin kernels)"
    return "cpu (xnnpack)" if options.xnnpack else "cpu (default)"


class _Adb:
    """One device, every call time-limited and checked."""

    def __init__(self, adb: str, serial: str, timeout_s: float) -> None:
        self.adb, self.serial, self.timeout_s = adb, serial, timeout_s

    def check(self, command: list[str], step: str, timeout: float | None = None) -> str:
        result = run_tool(command, f"adb {step}", timeout or self.timeout_s)
        if result.returncode != 0:
            reason = last_line(result.stderr + result.stdout) or f"exit {result.returncode}"
            raise ProfileError(f"adb {step} failed on {self.serial}: {reason}")
        return result.stdout

    def push(self, local: Path, remote: str) -> None:
        self.check(push_command(self.adb, self.serial, local, remote), f"push {local.name}")

    def shell(self, *args: str, step: str, timeout: float | None = 60.0) -> str:
        return self.check(shell_command(self.adb, self.serial, *args), step, timeout)

    def getprop(self, name: str) -> str | None:
        """A system property, or None when the device does not answer (it is only a label)."""
        try:
            result = run_tool(shell_command(self.adb, self.serial, "getprop", name), "adb getprop", 30.0)
        except ProfileError:
            return None
        value = result.stdout.strip()
        return value if result.returncode == 0 and value else None


def list_devices(adb: str, timeout_s: float = 60.0) -> list[AdbDevice]:
    result = run_tool([adb, "devices"], "adb devices", timeout_s)
    if result.returncode != 0:
        raise ProfileError(f"adb devices failed: {last_line(result.stderr + result.stdout) or f'exit {result.returncode}'}")
    return parse_devices(result.stdout)


def _describe(artifact: Path) -> dict[str, Any]:
    """model / precision from the artifact's sidecar contract (the .tflite itself is read only on the device)."""
    contract = read_sidecar(artifact)
    if contract is None:
        return {"model": artifact.stem, "precision": None, "input_size": None}
    return {"model": contract.model or artifact.stem, "precision": contract.precision, "input_size": contract.input_size}


def profile_adb(artifact: str | Path, benchmark_binary: str | Path, options: AdbOptions = AdbOptions()) -> dict[str, Any]:
    """One fan-bench row for ``artifact`` timed on an Android device by ``benchmark_binary`` (a local file to push).

    Raises :class:`~fan_edge.errors.ProfileError` when adb is missing, no
    device (or several, without ``serial``) is attached, a push fails, the
    binary cannot run there, or the tool prints no timings.
    """
    artifact, binary = Path(artifact), Path(benchmark_binary)
    if artifact.suffix.lower() != ".tflite" or not artifact.is_file():
        raise ProfileError(f"{artifact}: not a .tflite file (benchmark_model runs LiteRT / TFLite models)")
    if not binary.is_file():
        raise ProfileError(f"{binary}: no such file (download benchmark_model for the device's ABI, e.g. android_aarch64)")
    if options.runs < 1 or options.warmup < 0:
        raise ProfileError("runs must be positive and warmup zero or more")
    if options.threads is not None:
        check_int("threads", options.threads, 1, MAX_THREADS, ProfileError)
    described = _describe(artifact)  # a broken sidecar fails before the device is touched
    adb_path = find_tool(options.adb, ADB_HINT)
    serial = pick_device(list_devices(adb_path), options.serial)
    device = _Adb(adb_path, serial, options.timeout_s)

    remote_bin, remote_graph = remote_path(options.remote_dir, "benchmark_model"), remote_path(options.remote_dir, artifact)
    pushed: list[str] = []
    try:
        device.push(binary, remote_bin)
        pushed.append(remote_bin)
        device.shell("chmod", "755", remote_bin, step="shell chmod")
        device.push(artifact, remote_graph)
        pushed.append(remote_graph)
        result = run_tool(benchmark_command(adb_path, serial, remote_bin, remote_graph, options),
                          "adb shell benchmark_model", options.timeout_s)
        output = result.stdout + ("\n" + result.stderr if result.stderr else "")
        if options.log is not None:
            from ...atomic import write_text_atomic

            write_text_atomic(options.log, output)
        lowered = output.lower()
        if result.returncode in (126, 127) or (result.returncode != 0 and remote_bin in output
                                               and any(s in lowered for s in _CANNOT_EXECUTE)):
            abi = device.getprop("ro.product.cpu.abi") or "unknown"
            raise ProfileError(f"{binary.name} cannot run on {serial} (device ABI {abi}): {failure_reason(output)}")
        if result.returncode != 0:
            raise ProfileError(f"benchmark_model failed on {serial} (exit {result.returncode}): {failure_reason(output)}")
        timings = parse_benchmark_output(output)
        product = device.getprop("ro.product.model")
        abi = device.getprop("ro.product.cpu.abi")
    finally:
        if pushed and not options.keep:
            try:
                device.shell("rm", "-f", *pushed, step="shell rm", timeout=60.0)
            except ProfileError:
                pass  # cleanup is best effort: the measurement (or the error being raised) matters more

    row: dict[str, Any] = {
        **described,
        "target": "litert",
        "device": "gpu" if options.gpu else "nnapi" if options.nnapi else "cpu",
        "status": Status.PASSED,
        "size_mb": round(artifact_size_mb(artifact), 3),
        "nme_io": None,
        "nme_box": None,
        "auc7": None,
        "fr7": None,
        "speedup": None,
    }
    fields = timings.row_fields()
    row.update(fields)
    row.update({
        "runs": fields["runs"] if fields["runs"] is not None else options.runs,
        "warmup": fields["warmup"] if fields["warmup"] is not None else options.warmup,
        "threads": options.threads,
        "delegate": delegate_name(options),
        "taskset": options.taskset,
        "batch": 1,
        "path": str(artifact),
        "host": f"{product} ({serial})" if product else serial,
        "machine": abi,
        "timed_by": "benchmark_model",
    })
    return row
