"""Issue 18, checkpoint/config/threads class: every size a file, a config or a flag declares is bounded before use.

- Compressed and lying checkpoints (zip bombs, storages declared larger than
  their records or the file, safetensors headers past the bound) are refused
  from what they declare, before anything is inflated or allocated; a real
  bomb costs a subprocess under 600 MB peak.
- Benign ``torch.save`` files in pickle protocols 2-5 load, silently; payloads
  in any protocol are refused unrun, in one line.
- Every FANConfig size (input, width, stacks, depth, landmarks, per-layer
  channels, total values), the training spec's batch/input/workers and an
  artifact contract's input/landmarks/batch are bounded, wherever the numbers
  come from: a constructor, a checkpoint's metadata or card, a registry name,
  a command-line flag.
- Every threads/workers flag and API parameter is bounded at parse time.

Tiny configs throughout; the whole file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from fan_edge import limits
from fan_edge.errors import BackendError, BenchError, CheckpointError, ConfigError, ContractError, DataError, ProfileError
from fan_edge.models import FAN, create_model, read_checkpoint
from fan_edge.models.checkpoints import CONFIG_METADATA_KEY, expected_shapes, read_training_state
from fan_edge.models.config import FANConfig
from fan_edge.models.safe_load import SafeUnpickler, StorageBudget, check_zip_archive, torch_load

TINY = FANConfig(stacks=1, width=32, input_size=64, hourglass_depth=1)
MARKER = "fan_edge_reliability_payload_ran"


def one_line(exc: BaseException) -> str:
    message = str(exc).strip()
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in FAN(TINY).state_dict().items()}


def _zip_with_storage(path: Path, numel: int, record_bytes: int, deflate: bool) -> Path:
    """A torch zip checkpoint {'w': float tensor} whose pickle declares ``numel`` floats and whose ``data/0`` record
    holds ``record_bytes`` zero bytes (deflated: a 2.5 MB file can hold gigabytes)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                with out.open(entry, "w", force_zip64=True) as fh:
                    chunk, left = bytes(1 << 24), record_bytes
                    while left:
                        fh.write(chunk[: min(left, len(chunk))])
                        left -= min(left, len(chunk))
                continue
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04t", b"J" + struct.pack("<i", numel) + b"t")
            out.writestr(info, data)
    return path


# ---- 6. checkpoints that declare more than they may -----------------------------------------------------------


def test_zip_bomb_is_refused_from_its_directory(tmp_path):
    """2 MiB inflating from a few kB, against a 1 MiB bound: refused from the central directory, nothing inflated."""
    path = _zip_with_storage(tmp_path / "bomb.pth.tar", (2 << 20) // 4, 2 << 20, deflate=True)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="inflate to") as excinfo:
        check_zip_archive(path, limit=1 << 20)
    one_line(excinfo.value)


def test_declared_storage_must_match_its_record(tmp_path):
    """The pickle says 2 GiB, the record holds 16 bytes: refused before torch allocates the storage."""
    path = _zip_with_storage(tmp_path / "liar.pth", 1 << 29, 16, deflate=False)
    with pytest.raises(CheckpointError, match="declares 2,147,483,648 bytes, its record holds 16") as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def test_legacy_storage_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    at = data.index(b"K\x04", data.index(b"cpu"))  # the root storage's element count in its persistent id
    path.write_bytes(data[:at] + b"J" + struct.pack("<i", 1 << 20) + data[at + 2 :])
    with pytest.raises(CheckpointError, match="more than the file holds") as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def test_too_many_zip_entries_are_refused_before_listing(tmp_path, monkeypatch):
    import fan_edge.models.safe_load as safe_load

    monkeypatch.setattr(safe_load, "MAX_ARCHIVE_ENTRIES", 10)
    path = tmp_path / "many.pth"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(20):
            zf.writestr(f"archive/data/{i}", b"")
    with pytest.raises(CheckpointError, match="a zip of 20 entries") as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def test_pickle_that_builds_too_many_objects_is_refused(tmp_path):
    """Each byte of a pickle can build a 200-byte object: 600,000 empty sets are refused, not built."""
    path = tmp_path / "sets.pth"
    path.write_bytes(b"\x80\x04(" + b"\x8f" * 600_000 + b"l.")
    with pytest.raises(CheckpointError, match="Python objects") as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def _safetensors(path: Path, header: dict, data_len: int) -> Path:
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + data_len)  # sparse: a "2 GiB" file costs no disk
    return path


@pytest.mark.parametrize(
    "entry, data_len, message",
    [
        ({"dtype": "F32", "shape": [1 << 29], "data_offsets": [0, 1 << 31]}, 1 << 31, "more than 536,870,912 bytes"),
        ({"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 16]}, 16, "do not hold"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, 8, "do not hold"),
        ({"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}, 16, "has dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}, 16, "malformed shape"),
    ],
    ids=["past-the-bound", "shape-larger-than-span", "span-past-the-file", "unknown-dtype", "negative-dim"],
)
def test_safetensors_header_is_checked_before_reading(tmp_path, entry, data_len, message):
    path = _safetensors(tmp_path / "w.safetensors", {"w": entry}, data_len)
    with pytest.raises(CheckpointError, match=message) as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def test_safetensors_config_is_checked_before_the_tensors_are_read(tmp_path, monkeypatch, tiny_state):
    """A config that its weights do not fill is refused from the header's shapes: no tensor byte is read."""
    from safetensors.torch import save_file

    import fan_edge.models.checkpoints as checkpoints

    path = tmp_path / "liar.safetensors"
    config = TINY.replace(num_landmarks=5)
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path), metadata={CONFIG_METADATA_KEY: config.to_json()})

    def no_read(*args, **kwargs):
        raise AssertionError("tensor data was read before the config was checked")

    monkeypatch.setattr(checkpoints, "read_safetensors", no_read)
    with pytest.raises(CheckpointError, match="does not fit its weights") as excinfo:
        read_checkpoint(path)
    one_line(excinfo.value)


def test_safetensors_reader_round_trips(tmp_path, tiny_state):
    from safetensors.torch import save_file

    state = dict(tiny_state)
    state["extra.bf16"] = torch.randn(3, 2).to(torch.bfloat16)
    state["extra.empty"] = torch.zeros(0, 5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = read_checkpoint(path).state_dict
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


def test_bombs_stay_under_a_gigabyte_in_a_fresh_process(tmp_path):
    """The real thing, measured: a zip whose storage inflates to 600 MiB (over the 512 MiB bound) through
    read_checkpoint and read_training_state, and a sparse 2 GiB safetensors file; peak RSS stays far below 1 GB."""
    bomb = _zip_with_storage(tmp_path / "bomb.pth.tar", (600 << 20) // 4, 600 << 20, deflate=True)
    sparse = _safetensors(tmp_path / "sparse.safetensors",
                          {"w": {"dtype": "F32", "shape": [1 << 29], "data_offsets": [0, 1 << 31]}}, 1 << 31)
    script = textwrap.dedent(f"""
        import resource, sys
        from fan_edge.errors import CheckpointError
        from fan_edge.models.checkpoints import read_checkpoint, read_training_state
        for call in (lambda: read_checkpoint({str(bomb)!r}), lambda: read_training_state({str(bomb)!r}, {{"epoch": int}}),
                     lambda: read_checkpoint({str(sparse)!r})):
            try:
                call()
                sys.exit("loaded")
            except CheckpointError as exc:
                print(exc)
        print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024)  # not ru_maxrss: it keeps the forking parent's peak across exec
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4 and all("bytes" in line for line in lines[:3]), lines
    peak_mb = int(lines[-1])
    assert peak_mb < 600, f"peak RSS {peak_mb} MB while refusing bombs"


# ---- 12. benign pickles in every protocol; payloads in every protocol ---------------------------------------


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_benign_checkpoints_load_in_every_protocol(tmp_path, tiny_state, protocol, zipped, capfd):
    path = tmp_path / f"p{protocol}.pth.tar"
    torch.save(tiny_state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    capfd.readouterr()
    loaded = read_checkpoint(path).state_dict
    assert set(loaded) == set(tiny_state) and all(torch.equal(loaded[k], v) for k, v in tiny_state.items())
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"loading printed {err!r}"
    model = create_model(path)
    assert model.config.width == TINY.width


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_training_state_in_a_new_protocol_resumes(tmp_path, tiny_state, protocol):
    model = FAN(TINY)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 3, 64, 64))[-1].sum().backward()
    optimizer.step()
    state = {"model": tiny_state, "optimizer": optimizer.state_dict(), "epoch": 3, "history": [{"loss": 0.5}],
             "spec": {"epochs": 10, "tags": {"a", "b"}, "raw": b"\x00\x01"}, "best": {}}
    path = tmp_path / "last.ckpt"
    torch.save(state, path, pickle_protocol=protocol)
    loaded = read_training_state(path, {"model": dict, "optimizer": dict, "epoch": int, "spec.epochs": int})
    assert loaded["spec"]["tags"] == {"a", "b"} and loaded["spec"]["raw"] == b"\x00\x01"
    assert loaded["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]


class _System:
    """Unpickling this runs ``os.system('touch MARKER')`` under an unrestricted unpickler."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _Obj:
    """An ordinary object: protocol 2+ pickles it with NEWOBJ (a class constructed) and BUILD."""

    def __init__(self):
        self.x = 1


def _stack_global_payload() -> bytes:
    """Protocol 4, hand-written: STACK_GLOBAL resolves 'os'/'system' from memoized strings, then REDUCE."""
    return (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x8c\x02os\x94" + b"\x8c\x06system\x94" + b"h\x00h\x01\x93"
            + b"\x8c" + bytes([len(f"touch {MARKER}")]) + f"touch {MARKER}".encode() + b"\x85R.")


@pytest.mark.parametrize(
    "payload, protocol",
    [("reduce", p) for p in (2, 3, 4, 5)] + [("object", p) for p in (2, 3, 4, 5)] + [("stack-global", 4), ("ext", 2)],
)
def test_payloads_are_refused_unrun_in_every_protocol(tmp_path, monkeypatch, protocol, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    if payload == "stack-global":
        path.write_bytes(_stack_global_payload())
    elif payload == "ext":
        path.write_bytes(b"\x80\x02\x82\x01)R.")  # EXT1 code 1: a registered extension (a class by number)
    else:
        obj = {"w": torch.zeros(2), "x": _System() if payload == "reduce" else _Obj()}
        torch.save(obj, path, pickle_protocol=protocol)
    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint(path)
    assert "refused to load" in one_line(excinfo.value)
    with pytest.raises(CheckpointError):
        read_training_state(path, {"epoch": int})
    assert not (tmp_path / MARKER).exists(), "the payload ran"


def test_stack_global_of_allowed_names_resolves():
    """STACK_GLOBAL with names pushed and memoized (as protocol 4 writes them), then again from the memo: the allowed
    object is found both times."""
    from collections import OrderedDict

    data = b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93)R0h\x00h\x01\x93)R."
    loaded = SafeUnpickler(io.BytesIO(data)).load()
    assert type(loaded) is OrderedDict and not loaded


def test_cli_refusal_is_one_stderr_line(tmp_path, monkeypatch, capsys):
    from fan_edge.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"x": _System()}, path, pickle_protocol=4)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refused to load" in err, err
    assert not (tmp_path / MARKER).exists()


def test_storage_budget_counts_each_storage_once():
    budget = StorageBudget(limit=100, records={"data/0": 64})
    storage_type = torch.serialization.StorageType("FloatStorage")
    budget.claim(("storage", storage_type, "0", "cpu", 16))
    budget.claim(("storage", storage_type, "0", "cpu", 16))  # a second view of the same storage
    assert budget.total == 64
    with pytest.raises(CheckpointError):
        StorageBudget(limit=10).claim(("storage", storage_type, "1", "cpu", 16))


def test_torch_load_reads_a_plain_state_dict(tmp_path, tiny_state):
    path = tmp_path / "w.pth"
    torch.save(tiny_state, path)
    assert set(torch_load(path)) == set(tiny_state)


# ---- 7. configs that imply a huge network or input -----------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input_size": 1_048_576}, "input_size must be between 1 and 1024"),
        ({"input_size": 16_384}, "input_size must be between 1 and 1024"),
        ({"input_size": 2048}, "input_size must be between 1 and 1024"),
        ({"width": 2048}, "width must be between 32 and 1024"),
        ({"width": 10**40}, "width must be between 32 and 1024, got a 133-bit integer"),
        ({"stacks": 9}, "stacks must be between 1 and 8"),
        ({"hourglass_depth": 7}, "hourglass_depth must be between 1 and 6"),
        ({"num_landmarks": 1001}, "num_landmarks must be between 1 and 1000"),
        ({"channels": {"conv1": 1 << 20}}, "channels: 'conv1' must be a positive integer up to 1024"),
        ({"stacks": 8, "width": 1024, "input_size": 256, "hourglass_depth": 4}, "declares a FAN of 751,786,884 values"),
        ({"width": True}, "width must be an integer"),
    ],
)
def test_config_bounds_are_stated(change, message):
    with pytest.raises(ConfigError, match=message) as excinfo:
        TINY.replace(**change)
    one_line(excinfo.value)


@pytest.mark.parametrize(
    "config",
    [TINY, FANConfig(), FANConfig(stacks=2, width=64, input_size=128, num_landmarks=98),
     FANConfig(stacks=2, width=64, input_size=128, channels={"conv1": 5, "conv_last0": 9, "conv_last1": 7})],
    ids=["tiny", "2dfan4", "wflw", "pruned"],
)
def test_num_values_counts_the_network(config):
    assert config.num_values == sum(math.prod(s) for s in expected_shapes(config).values())


@pytest.mark.parametrize(
    "field, value",
    [("input_size", 1_048_576), ("input_size", 16_384), ("width", 4096), ("stacks", 100), ("num_landmarks", 10**6),
     ("hourglass_depth", 30)],
)
@pytest.mark.parametrize("where", ["metadata", "card"])
def test_configs_from_checkpoints_are_bounded(tmp_path, tiny_state, field, value, where):
    from safetensors.torch import save_file

    config = TINY.to_dict() | {field: value}
    path = tmp_path / "w.safetensors"
    metadata = {CONFIG_METADATA_KEY: json.dumps(config)} if where == "metadata" else {}
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path), metadata=metadata)
    if where == "card":
        path.with_suffix(".json").write_text(json.dumps({"config": config}))
    with pytest.raises(CheckpointError, match=f"{field} must be between") as excinfo:
        create_model(path)
    one_line(excinfo.value)


def test_registry_names_are_bounded():
    with pytest.raises(ConfigError, match="input_size must be between 1 and 1024"):
        create_model("fan1-w32-i65536", weights=False)
    with pytest.raises(ConfigError, match="declares a FAN of"):
        create_model("fan8-w1024", weights=False)


@pytest.mark.parametrize(
    "field, value, message",
    [("input_size", 1025, "input_size must be in 1..1024"), ("num_landmarks", 1001, "num_landmarks must be in 1..1000"),
     ("batch", 4097, "batch must be in 1..4096")],
)
def test_contract_sizes_share_the_config_bounds(field, value, message):
    from fan_edge.runtime.contract import ModelContract

    data = {"input_size": 64, "heatmap_size": 16} | {field: value}
    with pytest.raises(ContractError, match=message):
        ModelContract.from_dict(data)


@pytest.mark.parametrize(
    "change, message",
    [({"batch_size": 5000}, "batch_size must be between 1 and 4096"), ({"batch_size": 0}, "batch_size must be between"),
     ({"input_size": 65536}, "input_size must be between 1 and 1024"), ({"workers": 65}, "workers must be between 0 and 64"),
     ({"batch_size": 4096, "input_size": 256}, "use a batch of at most 1024")],
)
def test_train_spec_is_bounded(change, message):
    from fan_edge.train import TrainSpec

    with pytest.raises(ConfigError, match=message) as excinfo:
        TrainSpec(**change)
    one_line(excinfo.value)


def test_evaluation_batch_is_bounded(tmp_path):
    from fan_edge.evaluation import evaluate_model

    with pytest.raises(ConfigError, match="batch_size must be between 1 and 4096"):
        evaluate_model(FAN(TINY), tmp_path, batch_size=10**6)


# ---- 9 (and 7's flags): bounded at parse time, one line ------------------------------------------------------


def _cli(entry: str):
    import fan_edge.cli as cli

    if entry == "ondevice.bench":
        from fan_edge.ondevice.bench import build_parser

        return lambda argv: build_parser().parse_args(argv)
    if entry == "torch_bench":
        from fan_edge.bench import torch_bench

        return torch_bench.main
    return getattr(cli, entry)


@pytest.mark.parametrize(
    "entry, argv, flag",
    [
        ("main", ["predict", "x.jpg", "--threads", "100000"], "--threads"),
        ("main", ["soak", "x.onnx", "--threads", "100000"], "--threads"),
        ("main", ["soak", "x.onnx", "--intra-op-threads", "0"], "--intra-op-threads"),
        ("main", ["label", "d", "--teacher", "t", "--out", "o", "--workers", "65"], "--workers"),
        ("main", ["label", "d", "--teacher", "t", "--out", "o", "--threads", "257"], "--threads"),
        ("main", ["eval", "--data", "d", "--batch-size", "5000"], "--batch-size"),
        ("bench_main", ["--threads", "300"], "--threads"),
        ("profile_main", ["ssh", "a.onnx", "--host", "h", "--threads", "1000"], "--threads"),
        ("profile_main", ["adb", "a.tflite", "--benchmark-binary", "b", "--threads", "0"], "--threads"),
        ("train_main", ["--data", "d", "--input-size", "65536"], "--input-size"),
        ("train_main", ["--data", "d", "--batch-size", "0"], "--batch-size"),
        ("train_main", ["--data", "d", "--workers", "100"], "--workers"),
        ("distill_main", ["--data", "d", "--teacher", "t", "--workers", "-1"], "--workers"),
        ("export_main", ["--target", "onnx", "--input-size", "4096"], "--input-size"),
        ("ondevice.bench", ["x.onnx", "--threads", "5000"], "--threads"),
        ("torch_bench", ["default", "--threads", "5000"], "--threads"),
    ],
)
def test_flags_are_bounded_at_parse_time(entry, argv, flag, capsys):
    with pytest.raises(SystemExit) as excinfo:
        _cli(entry)(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "must be between" in err, err
    if entry not in ("ondevice.bench", "torch_bench"):  # those keep argparse's usage line before the error
        assert len(err.splitlines()) == 1, err


def test_thread_parameters_are_bounded_in_the_api(tmp_path):
    from fan_edge.bench.latency import torch_latency
    from fan_edge.bench.profile.ssh import SshOptions, profile_ssh
    from fan_edge.bench.runner import BenchOptions, run_bench
    from fan_edge.label import LabelSpec, label_folder
    from fan_edge.runtime.backends import load_backend
    from fan_edge.ondevice.soak import soak_session

    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"\x00")
    with pytest.raises(BackendError, match="threads must be between 1 and 256"):
        load_backend(artifact, threads=100_000)
    with pytest.raises(DataError, match="threads must be between 1 and 256"):
        soak_session(object(), [None], threads=100_000)
    with pytest.raises(ConfigError, match="--workers must be between 1 and 64"):
        label_folder(LabelSpec(source=tmp_path, out=tmp_path / "out", teachers=("dlib",), workers=1000))
    with pytest.raises(ConfigError, match="--threads must be between 1 and 256"):
        label_folder(LabelSpec(source=tmp_path, out=tmp_path / "out", teachers=("dlib",), threads=1000))
    with pytest.raises(BenchError, match="threads must be between 1 and 256"):
        run_bench(BenchOptions(models=["fan1-w32-i64"], threads=5000))
    with pytest.raises(BenchError, match="threads must be between 1 and 256"):
        torch_latency(FAN(TINY), 64, threads=5000)
    with pytest.raises(ProfileError, match="threads must be between 1 and 256"):
        profile_ssh(artifact, SshOptions(host="h", threads=5000))


def test_limits_describe_huge_values():
    assert limits.describe(10**5000) == "a 16610-bit integer"
    assert limits.describe("x" * 1000).endswith("...")


def test_running_out_of_memory_is_one_line(monkeypatch, capsys):
    """Within the bounds a combination can still exhaust a small machine: torch's allocator error is one line too."""
    import fan_edge.cli as cli
    from fan_edge.cli import models as models_command

    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 13194139533312 bytes.\nError code 12")

    monkeypatch.setattr(models_command, "cmd_models", allocate)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err, err

    def other(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(models_command, "cmd_models", other)
    with pytest.raises(RuntimeError, match="a bug"):  # anything else stays a traceback: it is a bug to report
        cli.main(["models"])
