"""fan-profile: benchmark_model output parsing, adb command lines and flow (fake adb), and the ssh path for real.

The ssh tests start an SSH server on 127.0.0.1 (asyncssh: generated host and
client keys, commands run by a local shell, SFTP and scp for the copies) and
run ``fan-profile ssh`` against it with the system OpenSSH client, the remote
interpreter being this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest

from fan_edge.bench.profile.adb import (
    AdbDevice,
    AdbOptions,
    benchmark_args,
    benchmark_command,
    parse_devices,
    pick_device,
    push_command,
    shell_command,
)
from fan_edge.bench.profile.benchmark_model import MIB_TO_MB, parse_benchmark_output
from fan_edge.bench.profile.ssh import SshOptions, bench_command, parse_row, scp_command, scp_destination, ssh_command
from fan_edge.bench.report import to_csv
from fan_edge.cli import profile_main
from fan_edge.errors import ProfileError
from fan_edge.runtime.contract import ModelContract

# ---- benchmark_model output, verbatim ------------------------------------------------------------------------------

# Raspberry Pi 4B, TFLite benchmark_model without percentiles: the example run printed in Larq Compute Engine's
# benchmarking guide (a QuickNet model), copied as published.
RPI4_CLASSIC = """\
STARTING!
Duplicate flags: num_threads
Min num runs: [50]
Min runs duration (seconds): [1]
Max runs duration (seconds): [150]
Inter-run delay (seconds): [-1]
Num threads: [1]
...
...
Loaded model quicknet.tflite
The input model file size (MB): 3.34914
Initialized session in 3.501ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=12 first=156677 curr=33205 min=32578 max=156677 avg=43268.1 std=34197

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=33228 curr=33130 min=32687 max=33239 avg=33071.8 std=129

Inference timings in us: Init: 3501, First inference: 156677, Warmup (avg): 43268.1, Inference (avg): 33071.8
"""

# Android logcat of a recent build (StatWithPercentiles: p5/median/p95 appended), copied from a published
# benchmark report; the logcat prefix is part of every line.
ANDROID_LOGCAT_PERCENTILES = """\
07-14 13:14:52.097 22838 22838 I tflite  : Num threads: [4]
07-14 13:14:52.097 22838 22838 I tflite  : Graph: [/data/local/tmp/best_int8.tflite]
07-14 13:14:52.098 22838 22838 I tflite  : Loaded model /data/local/tmp/best_int8.tflite
07-14 13:14:52.113 22838 22838 I tflite  : Created TensorFlow Lite XNNPACK delegate for CPU.
07-14 13:14:52.190 22838 22838 I tflite  : The input model file size (MB): 3.06409
07-14 13:14:52.190 22838 22838 I tflite  : Initialized session in 92.318ms.
07-14 13:14:52.859 22838 22838 I tflite  : count=3 first=235158 curr=200386 min=199462 max=235158 avg=211669 std=16613 p5=199462 median=200386 p95=235158
07-14 13:14:56.520 22838 22838 I tflite  : count=25 first=187533 curr=140990 min=140071 max=195121 avg=145528 std=13583 p5=140545 median=141253 p95=187533
07-14 13:14:56.521 22838 22838 I tflite  : Inference timings in us: Init: 92318, First inference: 235158, Warmup (avg): 211669, Inference (avg): 145528
07-14 13:14:56.521 22838 22838 I tflite  : Memory footprint delta from the start of the tool (MB): init=54.2852 overall=73.4102
"""

# --report_peak_memory_footprint=true (ChromeOS ML benchmark notes quoting the tool's INFO lines, CPU run).
PEAK_MEMORY_CPU = """\
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 58 out of 58 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.
INFO: Initialized session in 3.337ms.
INFO: count=9 first=81913 curr=55502 min=55502 max=81913 avg=58984.7 std=8115
INFO: count=1061 first=56576 curr=56299 min=54669 max=60236 avg=56265.8 std=982
INFO: Inference timings in us: Init: 3337, First inference: 81913, Warmup (avg): 58984.7, Inference (avg): 56265.8
INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383
"""

# --enable_op_profiling=true: the end of the example in tensorflow/lite/tools/benchmark/README.md ("Profiling model
# operators"), an older build whose summary line was "Average inference timings". The "Timings (microseconds)" line
# is the op profiler's per-run total, not the run statistics.
README_OP_PROFILING = """\
Number of nodes executed: 31
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t       15\t     1.406\t    89.270%\t    89.270%\t     0.000\t        0
\t       DEPTHWISE_CONV_2D\t       13\t     0.169\t    10.730%\t   100.000%\t     0.000\t        0
\t                 SOFTMAX\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0
\t                 RESHAPE\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0
\t         AVERAGE_POOL_2D\t        1\t     0.000\t     0.000%\t   100.000%\t     0.000\t        0

Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929
Memory (bytes): count=0
31 nodes observed


Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9
"""

# LiteRT's CompiledModel benchmark_model (litert/tools/benchmark_litert_model.h): its results block, formatted by the
# LITERT_LOG format strings there, after the run statistics of the base tool.
LITERT_COMPILED_MODEL = """\
INFO: count=10 first=21034 curr=12011 min=11980 max=21034 avg=12990.4 std=2671 p5=11980 median=12050 p95=21034
INFO: count=50 first=12040 curr=11990 min=11850 max=13420 avg=12101.7 std=301 p5=11870 median=12030 p95=12810
INFO:
========== BENCHMARK RESULTS ==========
INFO: Model initialization: 35.21 ms
INFO: Warmup (first):       21.03 ms
INFO: Warmup (avg):         12.99 ms (10 runs)
INFO: Inference (avg):      12.10 ms (50 runs)
INFO: Inference (min):      11.85 ms
INFO: Inference (max):      13.42 ms
INFO: Inference (std):      0.30
INFO: Throughput:           4.06 MB/s
INFO:
Memory Usage:
INFO: Init footprint:       10.25 MB
INFO: Overall footprint:    14.50 MB
INFO: Peak memory:          60.00 MB
INFO: ======================================
"""


def test_classic_output_gives_the_mean_and_says_so():
    t = parse_benchmark_output(RPI4_CLASSIC)
    assert t.runs == 50 and t.warmup_runs == 12
    assert t.mean_ms == pytest.approx(33.0718) and t.median_ms is None
    assert (t.min_ms, t.max_ms, t.std_ms) == pytest.approx((32.687, 33.239, 0.129))
    assert (t.init_ms, t.first_inference_ms, t.warmup_mean_ms) == pytest.approx((3.501, 156.677, 43.2681))
    row = t.row_fields()
    assert row["latency_stat"] == "mean" and row["latency_ms_p50"] == pytest.approx(33.072)
    assert row["latency_ms_p90"] is None and row["fps"] == pytest.approx(1000 / 33.0718, abs=0.01)
    assert row["peak_rss_mb"] is None


def test_percentile_builds_give_the_median_and_p95():
    t = parse_benchmark_output(ANDROID_LOGCAT_PERCENTILES)
    assert t.runs == 25 and t.warmup_runs == 3
    assert (t.median_ms, t.p5_ms, t.p95_ms, t.mean_ms) == pytest.approx((141.253, 140.545, 187.533, 145.528))
    assert t.memory_init_mb == pytest.approx(54.2852 * MIB_TO_MB) and t.memory_overall_mb == pytest.approx(73.4102 * MIB_TO_MB)
    row = t.row_fields()
    assert row["latency_stat"] == "median" and row["latency_ms_p50"] == pytest.approx(141.253)
    assert row["latency_ms_p95"] == pytest.approx(187.533) and row["latency_ms_p90"] is None


def test_peak_memory_line_is_the_peak_rss_in_decimal_megabytes():
    t = parse_benchmark_output(PEAK_MEMORY_CPU)
    assert t.runs == 1061 and t.mean_ms == pytest.approx(56.2658)
    assert t.peak_memory_mb == pytest.approx(93.2383 * 1.048576)
    assert t.row_fields()["peak_rss_mb"] == pytest.approx(97.8, abs=0.05)


def test_op_profiling_totals_are_not_taken_for_the_run_statistics():
    t = parse_benchmark_output(README_OP_PROFILING)
    assert t.mean_ms == pytest.approx(79.7609)  # the summary's Inference, not the profiler's avg=79732
    assert (t.init_ms, t.warmup_mean_ms) == pytest.approx((38.467, 83.235))
    assert t.runs is None and t.row_fields()["latency_stat"] == "mean"


def test_litert_compiled_model_block():
    t = parse_benchmark_output(LITERT_COMPILED_MODEL)
    assert t.runs == 50 and t.median_ms == pytest.approx(12.03) and t.mean_ms == pytest.approx(12.1017)
    assert t.init_ms == pytest.approx(35.21) and t.first_inference_ms == pytest.approx(21.03)
    assert t.peak_memory_mb == pytest.approx(60.0 * MIB_TO_MB) and t.memory_overall_mb == pytest.approx(14.5 * MIB_TO_MB)
    only_block = LITERT_COMPILED_MODEL.split("INFO:\n========== BENCHMARK RESULTS", 1)[1]  # without the count= lines
    t2 = parse_benchmark_output(only_block)
    assert t2.runs == 50 and t2.mean_ms == pytest.approx(12.10) and t2.median_ms is None and t2.std_ms == pytest.approx(0.30)


def test_all_same_runs():
    t = parse_benchmark_output("INFO: count=1 curr=40000\n\nINFO: count=5 curr=1200(all same)\n")
    assert t.runs == 5 and t.mean_ms == pytest.approx(1.2) and t.min_ms == pytest.approx(1.2) and t.std_ms == 0.0


def test_output_without_timings_is_an_error_naming_the_tool_reason():
    failed = "INFO: Created TensorFlow Lite delegate for GPU.\nERROR: Failed to apply GPU delegate.\nBenchmarking failed.\n"
    with pytest.raises(ProfileError, match="no inference timings.*Benchmarking failed"):
        parse_benchmark_output(failed)
    with pytest.raises(ProfileError, match="no output"):
        parse_benchmark_output("")


# ---- adb command lines ------------------------------------------------------------------------------------------


def test_benchmark_command_line():
    options = AdbOptions(threads=4, xnnpack=False, gpu=True, runs=30, warmup=3, op_profiling=True,
                         extra_args=("--use_caching=true",))
    args = benchmark_args("/data/local/tmp/benchmark_model", "/data/local/tmp/m.tflite", options)
    assert args == ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/m.tflite", "--num_runs=30", "--warmup_runs=3",
                    "--min_secs=0", "--warmup_min_secs=0", "--num_threads=4", "--use_xnnpack=false", "--use_gpu=true",
                    "--report_peak_memory_footprint=true", "--enable_op_profiling=true", "--use_caching=true"]
    default = benchmark_args("b", "g", AdbOptions())
    assert not any(a.startswith(("--num_threads", "--use_xnnpack", "--use_gpu", "--use_nnapi", "--enable_op")) for a in default)
    assert "--use_nnapi=true" in benchmark_args("b", "g", AdbOptions(nnapi=True, xnnpack=True))
    binary = "/data/local/tmp/benchmark_model"
    cmd = benchmark_command("adb", "R58M", binary, "/data/local/tmp/my model.tflite", AdbOptions(runs=5))
    assert cmd[:4] == ["adb", "-s", "R58M", "shell"] and len(cmd) == 5
    assert shlex.split(cmd[4])[1] == "--graph=/data/local/tmp/my model.tflite"  # one word for the device's sh
    pinned = benchmark_command("adb", "R58M", binary, "/data/local/tmp/m.tflite", AdbOptions(taskset="f0"))
    assert shlex.split(pinned[4])[:3] == ["taskset", "f0", "/data/local/tmp/benchmark_model"]


def test_push_and_shell_commands():
    assert push_command("adb", "emulator-5554", Path("x/m.tflite"), "/data/local/tmp/m.tflite") == [
        "adb", "-s", "emulator-5554", "push", "x/m.tflite", "/data/local/tmp/m.tflite"]
    assert shell_command("/opt/adb", "S1", "chmod", "755", "/data/local/tmp/benchmark_model") == [
        "/opt/adb", "-s", "S1", "shell", "chmod 755 /data/local/tmp/benchmark_model"]


def test_device_selection():
    listing = ("* daemon started successfully\nList of devices attached\n"
               "R58M123\tdevice\nemulator-5554\tdevice\nZY22\tunauthorized\n\n")
    devices = parse_devices(listing)
    assert devices == [AdbDevice("R58M123", "device"), AdbDevice("emulator-5554", "device"), AdbDevice("ZY22", "unauthorized")]
    with pytest.raises(ProfileError, match="2 devices attached.*--serial"):
        pick_device(devices, None)
    assert pick_device(devices, "emulator-5554") == "emulator-5554"
    with pytest.raises(ProfileError, match="ZY22 is unauthorized.*USB debugging"):
        pick_device(devices, "ZY22")
    with pytest.raises(ProfileError, match="not attached"):
        pick_device(devices, "nope")
    with pytest.raises(ProfileError, match="no Android device ready .*none"):
        pick_device(parse_devices("List of devices attached\n\n"), None)
    assert pick_device(parse_devices("List of devices attached\nABC\tdevice\n"), None) == "ABC"


# ---- the adb flow against a fake adb ------------------------------------------------------------------------------

FAKE_ADB = """\
#!{python}
# A stand-in for adb: records its arguments, answers like a device from the environment.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args == ["devices"]:
    print("List of devices attached")
    for serial in filter(None, os.environ.get("FAKE_ADB_DEVICES", "").split(",")):
        print(serial + "\\tdevice")
    sys.exit(0)
if args[0] == "-s":
    args = args[2:]
if args[0] == "push":
    assert os.path.isfile(args[1]), args[1]
    print(args[1] + ": 1 file pushed, 0 skipped.")
    sys.exit(0)
command = args[1] if args[0] == "shell" else ""
if command.startswith("getprop ro.product.model"):
    print("Pixel 7")
elif command.startswith("getprop ro.product.cpu.abi"):
    print("arm64-v8a")
elif "--graph=" in command:
    sys.stdout.write(open(os.environ["FAKE_ADB_OUTPUT"]).read())
    sys.exit(int(os.environ.get("FAKE_ADB_STATUS", "0")))
"""


@pytest.fixture()
def fake_adb(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    log, output = tmp_path / "adb.log", tmp_path / "output.txt"
    output.write_text(PEAK_MEMORY_CPU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(output))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "R58M123")
    model = tmp_path / "tiny-fp16.tflite"
    model.write_bytes(b"TFL3" + bytes(2000))
    contract = ModelContract(input_size=128, heatmap_size=32, model="fan1-w32-i128", precision="fp16", target="tflite",
                             layout="NHWC")
    (tmp_path / "tiny-fp16.tflite.json").write_text(contract.to_json())
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF" + bytes(100))

    class Fake:
        def calls(self) -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    fake = Fake()
    fake.model, fake.binary, fake.output = model, binary, output
    return fake


def test_adb_flow_prints_a_row(fake_adb, capsys):
    code = profile_main(["adb", str(fake_adb.model), "--benchmark-binary", str(fake_adb.binary), "--threads", "4",
                         "--no-xnnpack", "--runs", "20", "--warmup", "2", "--json"])
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert list(row)[:14] == ["model", "target", "precision", "device", "status", "size_mb", "nme_io", "nme_box", "auc7", "fr7",
                              "latency_ms_p50", "latency_ms_p90", "fps", "speedup"]
    assert row["model"] == "fan1-w32-i128" and row["precision"] == "fp16" and row["target"] == "litert"
    assert row["status"] == "passed" and row["device"] == "cpu" and row["delegate"] == "cpu (builtin kernels)"
    assert row["latency_ms_p50"] == pytest.approx(56.266) and row["latency_stat"] == "mean"
    assert row["peak_rss_mb"] == pytest.approx(97.8, abs=0.05) and row["runs"] == 1061 and row["threads"] == 4
    assert row["host"] == "Pixel 7 (R58M123)" and row["machine"] == "arm64-v8a"
    assert row["size_mb"] == pytest.approx(0.002, abs=1e-3)

    calls = fake_adb.calls()
    assert calls[0] == ["devices"]
    assert ["-s", "R58M123", "push", str(fake_adb.binary), "/data/local/tmp/benchmark_model"] in calls
    assert ["-s", "R58M123", "shell", "chmod 755 /data/local/tmp/benchmark_model"] in calls
    assert ["-s", "R58M123", "push", str(fake_adb.model), "/data/local/tmp/tiny-fp16.tflite"] in calls
    run = next(c for c in calls if "--graph=" in c[-1])
    assert shlex.split(run[-1]) == ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/tiny-fp16.tflite",
                                    "--num_runs=20",
                                    "--warmup_runs=2", "--min_secs=0", "--warmup_min_secs=0", "--num_threads=4",
                                    "--use_xnnpack=false", "--report_peak_memory_footprint=true"]
    assert calls[-1] == ["-s", "R58M123", "shell", "rm -f /data/local/tmp/benchmark_model /data/local/tmp/tiny-fp16.tflite"]

    assert profile_main(["adb", str(fake_adb.model), "--benchmark-binary", str(fake_adb.binary)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "fan1-w32-i128" in table[2] and "litert" in table[2] and "56.27" in table[2] and "98" in table[2]
    assert table[3].startswith("p50 column: mean of the timed runs") and table[4].startswith("on Pixel 7 (R58M123) [arm64-v8a]")


def test_adb_flow_csv_and_log(fake_adb, tmp_path, capsys, monkeypatch):
    fake_adb.output.write_text(ANDROID_LOGCAT_PERCENTILES)
    log = tmp_path / "bm.log"
    code = profile_main(["adb", str(fake_adb.model), "--benchmark-binary", str(fake_adb.binary), "--gpu", "--keep",
                         "--log", str(log), "--benchmark-arg=--gpu_backend=cl", "--taskset", "f0", "--csv"])
    assert code == 0
    header, values = capsys.readouterr().out.strip().splitlines()
    row = dict(zip(header.split(","), values.split(","), strict=True))
    assert row["device"] == "gpu" and row["delegate"] == "gpu" and float(row["latency_ms_p50"]) == pytest.approx(141.253)
    assert row["latency_ms_p90"] == "" and row["latency_stat"] == "median"
    assert log.read_text() == ANDROID_LOGCAT_PERCENTILES
    assert not any(c[-1].startswith("rm ") for c in fake_adb.calls())  # --keep
    run = shlex.split(next(c for c in fake_adb.calls() if "--graph=" in c[-1])[-1])
    assert run[:3] == ["taskset", "f0", "/data/local/tmp/benchmark_model"] and run[-1] == "--gpu_backend=cl" and "--use_gpu=true" in run


def test_adb_errors_are_one_line(fake_adb, monkeypatch, capsys):
    argv = ["adb", str(fake_adb.model), "--benchmark-binary", str(fake_adb.binary)]

    def error_of(extra=()):
        assert profile_main(argv + list(extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fan-profile: error: ")
        return err

    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    assert "no Android device ready" in error_of()
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1,B2")
    assert "2 devices attached (A1, B2); choose one with --serial" in error_of()
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1")
    fake_adb.output.write_text("/system/bin/sh: /data/local/tmp/benchmark_model: can't execute: Permission denied\n")
    monkeypatch.setenv("FAKE_ADB_STATUS", "126")
    assert "benchmark_model cannot run on A1 (device ABI arm64-v8a)" in error_of()
    monkeypatch.setenv("FAKE_ADB_STATUS", "0")
    fake_adb.output.write_text("INFO: Loaded model\nERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'\n")
    assert "no inference timings in benchmark_model's output (ERROR: Didn't find op" in error_of()
    assert profile_main(["adb", str(fake_adb.binary), "--benchmark-binary", str(fake_adb.binary)]) == 2
    assert "not a .tflite file" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(fake_adb.model.parent / "nothing-here"))
    assert "adb not found on PATH" in error_of()


# ---- the ssh path, for real ------------------------------------------------------------------------------------------


def _sftp_factory():
    """asyncssh's SFTP server ends a session without an exit status, which OpenSSH's scp counts as a failure; sshd sends 0."""
    import asyncssh

    class Sftp(asyncssh.SFTPServer):
        def exit(self) -> None:
            self.channel.exit(0)

    return Sftp


class SshServer:
    """An SSH server on 127.0.0.1 in a background thread: key authentication, a shell per command, SFTP and scp."""

    def __init__(self, folder: Path) -> None:
        import asyncssh

        self.folder = folder
        self.home = folder / "home"
        self.home.mkdir()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.identity = folder / "id_ed25519"
        client_key.write_private_key(str(self.identity))
        self.identity.chmod(0o600)
        self.commands: list[str] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def pump(reader, writer) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

        async def run_command(process) -> None:
            """What sshd does with an exec request: the user's shell runs it, in the home folder."""
            self.commands.append(process.command or "")
            local = await asyncio.create_subprocess_shell(
                process.command or "true", cwd=self.home, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            await asyncio.gather(pump(local.stdout, process.stdout), pump(local.stderr, process.stderr))
            process.exit(await local.wait())

        async def listen() -> None:
            self.server = await asyncssh.listen(
                "127.0.0.1", 0, server_host_keys=[host_key], encoding=None,
                authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
                process_factory=run_command, sftp_factory=_sftp_factory(), allow_scp=True)

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(listen())
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        self.port = self.server.sockets[0].getsockname()[1]
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key.export_public_key().decode()}")

    def options(self) -> list[str]:
        """fan-profile ssh flags that reach this server with this client key only."""
        return ["--host", "127.0.0.1", "--port", str(self.port), "--identity", str(self.identity),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes", "--ssh-config", "/dev/null"]

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    pytest.importorskip("asyncssh")
    if shutil.which("ssh") is None or shutil.which("scp") is None:
        pytest.skip("the OpenSSH client (ssh, scp) is not installed")
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model as ONNX fp32 with its sidecar (no parity check: only the timing path is under test)."""
    pytest.importorskip("onnxruntime")
    from fan_edge.export import export_model

    out = tmp_path_factory.mktemp("profile") / "tiny fp32.onnx"  # a space, to check the quoting on the way
    (result,) = export_model(str(tiny_checkpoint), "onnx", "fp32", output=out, verify=False)
    return Path(result.path)


def _remote_dirs() -> set[str]:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return {p.name for p in tmp.glob("fan-profile.*")}


def test_ssh_profile_against_a_real_server(ssh_server, onnx_artifact, capsys):
    before = _remote_dirs()
    code = profile_main(["ssh", str(onnx_artifact), *ssh_server.options(), "--python", shlex.quote(sys.executable),
                         "--threads", "1", "--runs", "5", "--warmup", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert list(row)[:14] == ["model", "target", "precision", "device", "status", "size_mb", "nme_io", "nme_box", "auc7", "fr7",
                              "latency_ms_p50", "latency_ms_p90", "fps", "speedup"]
    assert row["status"] == "passed" and row["target"] == "onnxruntime" and row["precision"] == "fp32"
    assert 0 < row["latency_ms_p50"] <= row["latency_ms_p90"]
    assert row["fps"] == pytest.approx(1000 / row["latency_ms_p50"], rel=0.01)
    assert row["runs"] == 5 and row["warmup"] == 1 and row["threads"] == 1 and row["peak_rss_mb"] > 0
    assert row["size_mb"] == pytest.approx(onnx_artifact.stat().st_size / 1e6, abs=1e-3)
    assert row["remote"] == f"127.0.0.1:{ssh_server.port}" and row["path"] == str(onnx_artifact)
    bench = next(c for c in ssh_server.commands if "fan_edge.ondevice.bench" in c)
    remote_artifact = shlex.split(bench)[3]
    assert remote_artifact.endswith("/tiny fp32.onnx") and "/fan-profile." in remote_artifact
    assert _remote_dirs() == before  # the remote folder was removed


def test_ssh_profile_prints_a_table_and_csv(ssh_server, onnx_artifact, capsys):
    common = ["ssh", str(onnx_artifact), *ssh_server.options(), "--python", shlex.quote(sys.executable),
              "--runs", "3", "--warmup", "0"]
    assert profile_main(common + ["--csv"]) == 0
    header, values = capsys.readouterr().out.strip().splitlines()
    fan_bench_header = to_csv([]).strip()  # fan-bench's CSV columns come first, in its order
    assert header.startswith(fan_bench_header + ",") and ",passed," in values
    assert profile_main(common) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["Model", "Target", "Precision", "Device"] and "p50 ms" in table[0] and "Peak MB" in table[0]
    assert "onnxruntime" in table[2] and "passed" in table[2]
    assert table[3].endswith("timed by fan_edge.ondevice.bench") and "3 runs after 0 warm-up" in table[3]


def test_ssh_remote_failures(ssh_server, onnx_artifact, tmp_path, capsys):
    base = ["ssh", str(onnx_artifact), *ssh_server.options(), "--runs", "2", "--warmup", "0"]

    def error_of(argv):
        assert profile_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fan-profile: error: ")
        return err

    # -S: no site-packages, so fan_edge cannot be imported (the command runs in the server's home, not the repo)
    assert "cannot import fan_edge; install it there: pip install 'fan-edge[onnxruntime]'" in error_of(
        base + ["--python", f"{shlex.quote(sys.executable)} -S"])
    assert "not found on 127.0.0.1" in error_of(base + ["--python", "/nonexistent/python3"])
    # a device the remote runtime does not have: its row comes back, exit 3
    assert profile_main(base + ["--python", shlex.quote(sys.executable), "--device", "npu", "--json"]) == 3
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["status"] == "device absent" and row["latency_ms_p50"] is None and "npu" in row["error"]


def test_ssh_connection_failures(ssh_server, onnx_artifact, tmp_path, capsys):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = ["ssh", str(onnx_artifact), "--host", "127.0.0.1", "--port", str(ssh_server.port),
            "--identity", str(ssh_server.identity), "-o", f"UserKnownHostsFile={empty}", "-o", "IdentitiesOnly=yes",
            "--ssh-config", "/dev/null", "--connect-timeout", "5"]
    assert profile_main(argv) == 2  # BatchMode: an unknown host key fails at once, no prompt
    assert "ssh to 127.0.0.1 failed: Host key verification failed." in capsys.readouterr().err

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    argv[argv.index("--port") + 1] = str(closed)
    assert profile_main(argv) == 2
    assert "Connection refused" in capsys.readouterr().err


def test_ssh_command_lines():
    options = SshOptions(host="pi@edge", port=2222, user="root", identity="~/.ssh/k", ssh_config="cfg", ssh_options=("A=b",),
                         python="~/venv/bin/python", threads=2, runs=7, warmup=1, connect_timeout_s=4)
    assert ssh_command(options, "true") == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=4", "-F", "cfg", "-p", "2222",
                                            "-i", "~/.ssh/k", "-o", "User=root", "-o", "A=b", "--", "pi@edge", "true"]
    scp = scp_command(options, [Path("m.xml"), Path("m.bin")], "/tmp/fan-profile.ab")
    assert scp[:2] == ["scp", "-q"] and scp[scp.index("-P") + 1] == "2222"
    assert scp[-3:] == ["m.xml", "m.bin", "pi@edge:/tmp/fan-profile.ab/"]
    assert bench_command(options, "/tmp/fan-profile.ab/my m.onnx") == (
        "~/venv/bin/python -m fan_edge.ondevice.bench '/tmp/fan-profile.ab/my m.onnx' --json --backend auto --device auto "
        "--runs 7 --warmup 1 --threads 2")
    assert scp_destination("::1", "/t") == "[::1]:/t/" and scp_destination("u@fe80::1", "/t") == "u@[fe80::1]:/t/"
    assert parse_row('warning: something\n{"status": "passed"}\n') == {"status": "passed"}
    assert parse_row("Traceback ...\nValueError: x\n") is None
