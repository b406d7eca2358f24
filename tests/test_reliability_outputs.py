"""Output paths under attack (issue 18): what fan-edge writes, replaces, deletes and refuses.

Each test is a class of break an outside attacker found, not only their example:

- a folder named like an artifact (``X.onnx/``, ``X.mlpackage/``) was deleted by ``fan-export`` (exit 0);
  fan-export now replaces a folder only when fan-edge provably wrote it, and refuses every other in one line;
- two ``fan-export`` runs to one output interleaved (artifact of one, sidecar of the other); now one writer
  holds the output's lock from start to commit, and a run verifies its own staged files before committing them;
- a sidecar that disagreed with the contract inside the artifact won silently (points moved by 136 px); now
  the session refuses the pair in one line;
- the temporary sweep deleted users' files and folders named like ``.NAME.<pid>.<8 chars>.tmp``; now it
  removes only what an owner record proves fan-edge made;
- unwritable outputs (a parent that is a file, a folder where a file goes, a read-only folder, a read-only
  cache) gave tracebacks, some after the long work; now each is one line, exit 2, before any work, with
  nothing half-written.

Small on purpose: a 1-stack, width-32, 64-px FAN with one hourglass level (an export in a few seconds), the
TorchScript ONNX exporter where only the runtime is under test, and every refusal before any slow step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import fan_edge_package
from fan_edge import cli
from fan_edge.atomic import (
    STAGING_FOLDER, atomic_path, check_writable, make_temporary, output_lock, remove_stale_temporaries,
    write_text_atomic,
)
from fan_edge.errors import ContractError, ExportError, OutputError
from fan_edge.export.staging import Staging, fan_edge_package as is_fan_edge_package
from fan_edge.runtime.contract import METADATA_KEY, ModelContract, sidecar_path

pytest.importorskip("onnxruntime")

BOXES = "20,20,120,120"


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    """The quickest FAN to export (1 stack, width 32, 64 px, one hourglass level), random weights, as a checkpoint."""
    import torch

    from conftest import randomise_batchnorm
    from fan_edge.models import FANConfig, create_model, save_checkpoint

    torch.manual_seed(0)
    model = randomise_batchnorm(create_model(FANConfig(stacks=1, width=32, input_size=64, hourglass_depth=1), weights=False))
    return save_checkpoint(model, tmp_path_factory.mktemp("micro") / "micro.safetensors", card={"description": "test"})


@pytest.fixture(scope="module")
def contract_onnx(tmp_path_factory, micro) -> Path:
    """The micro FAN as ONNX with its contract inside (metadata_props) and in an agreeing sidecar, in about a second
    (TorchScript's exporter: only the runtime's reading of the pair is under test here)."""
    import warnings

    import onnx
    import torch

    from fan_edge.export.metadata import HEATMAPS_NAME, INPUT_NAME, build_contract
    from fan_edge.models import create_model

    model = create_model(str(micro)).eval()
    path = tmp_path_factory.mktemp("contract") / "micro.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=[HEATMAPS_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, HEATMAPS_NAME: {0: "batch"}})
    contract = build_contract(model, model_name="micro", card={}, target="onnx", precision="fp32", outputs="heatmaps")
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, contract.to_json()
    onnx.save(proto, str(path))
    sidecar_path(path).write_text(contract.to_json(indent=2) + "\n")
    return path


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A folder this process cannot write (chmod for a user; for root, whom permissions do not stop, the immutable
    attribute), holding one file."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo: Callable[[], object] = lambda: folder.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], capture_output=True)  # noqa: E731
    else:
        pytest.skip("no way to make a read-only folder here (root, and no chattr +i on this file system)")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield folder
    finally:
        undo()


def _one_line_error(main: Callable[[list[str]], int], argv: list[str], capfd) -> str:
    """Run a CLI entry point in this process: it must exit 2 with exactly one stderr line, no traceback."""
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _no_slow_step(monkeypatch) -> None:
    """Make every slow step fail loudly: a refusal must come before any of them."""
    def slow(*args, **kwargs):
        raise AssertionError("a slow step ran before the output was checked")

    monkeypatch.setattr("fan_edge.export.exporter.resolve_model", slow)
    monkeypatch.setattr("fan_edge.predict.predict_photo", slow)
    monkeypatch.setattr("fan_edge.train.trainer.build_model", slow)


# ---- 1. a folder is replaced only when fan-edge wrote it --------------------------------------------------------------


def test_export_never_removes_a_folder_named_like_its_artifact(tmp_path, micro, capfd, monkeypatch):
    _no_slow_step(monkeypatch)
    mine = tmp_path / "X.onnx"
    (mine / "photos").mkdir(parents=True)
    (mine / "photos" / "holiday.jpg").write_text("irreplaceable")
    before = _listing(tmp_path)
    line = _one_line_error(cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(mine), "--no-verify"], capfd)
    assert line.startswith("fan-export: error:") and "folder" in line and str(mine) in line
    assert _listing(tmp_path) == before
    # The same at the commit itself (a folder appearing after the check): a staged file never replaces a folder.
    with Staging(mine) as staging:
        staging.path(mine).write_text("artifact")
        with pytest.raises(ExportError, match="not a file"):
            staging.commit([mine])
    assert _listing(tmp_path) == before


def test_a_package_folder_is_replaced_only_when_fan_edge_wrote_it(tmp_path):
    ours = fan_edge_package(tmp_path / "ours.mlpackage", {"Data/old.bin": "old"})
    foreign = tmp_path / "foreign.mlpackage"
    (foreign / "Data").mkdir(parents=True)
    (foreign / "Manifest.json").write_text("{}")
    (foreign / "Data" / "mine.txt").write_text("mine")
    forged = fan_edge_package(tmp_path / "forged.mlpackage")  # the key, but no contract after it
    spec = forged / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.write_bytes(spec.read_bytes().replace(b'{"input_size"', b'{"input_sizX"'))
    assert is_fan_edge_package(ours) and not is_fan_edge_package(foreign) and not is_fan_edge_package(forged)
    for final in (foreign, forged):
        before = _listing(final)
        with Staging(final) as staging:
            fan_edge_package(staging.path(final))
            with pytest.raises(ExportError, match="did not write"):
                staging.commit([final])
        assert _listing(final) == before
    with Staging(ours) as staging:
        fan_edge_package(staging.path(ours), {"Data/new.bin": "new"})
        staging.commit([ours])
    assert (ours / "Data" / "new.bin").is_file() and not (ours / "Data" / "old.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.mlpackage", "forged.mlpackage", "ours.mlpackage"]


def test_coreml_export_refuses_a_foreign_package_folder(tmp_path, micro, capfd, monkeypatch):
    if importlib.util.find_spec("coremltools") is None:  # not imported: the refusal must not need it (20 s)
        pytest.skip("the Core ML target needs coremltools")
    _no_slow_step(monkeypatch)
    mine = tmp_path / "X.mlpackage"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "a.txt").write_text("mine")
    line = _one_line_error(cli.export_main, ["--target", "coreml", "--model", str(micro), "--output", str(mine)], capfd)
    assert "did not write" in line and _listing(mine) == ["notes", "notes/a.txt"]


# ---- 2. one writer per output; a run verifies what it wrote, then commits the pair ---------------------------------------

_HOLDER = """
import sys, time
from fan_edge.atomic import output_lock
with output_lock(sys.argv[1], "fan-export"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_export_to_the_same_output_is_refused_and_a_run_verifies_its_own_files(
        tmp_path, micro, synthetic_faces, capfd, monkeypatch):
    out = tmp_path / "m.onnx"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _one_line_error(cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(out),
                                                 "--no-verify"], capfd)
        assert f"another fan-export (pid {holder.pid}) is writing it" in line
        assert not out.exists() and not sidecar_path(out).exists()
    finally:
        holder.kill()  # SIGKILL: the kernel releases its lock; its lock file is swept by the next run
        holder.wait()

    from fan_edge.export import exporter

    seen = []
    real_verify = exporter.verify_artifact

    def verify(path, *args, **kwargs):
        # The staged artifact, its staged sidecar beside it, nothing at the final names yet: the pair is verified
        # first and committed as one unit after.
        seen.append(Path(path))
        assert STAGING_FOLDER in Path(path).parts and sidecar_path(path).is_file() and not out.exists()
        return real_verify(path, *args, **kwargs)

    monkeypatch.setattr(exporter, "verify_artifact", verify)
    capfd.readouterr()
    assert cli.export_main(["--target", "onnx", "--model", str(micro), "--output", str(out),
                            "--verify", str(synthetic_faces), "--verify-faces", "1", "--json"]) == 0
    assert len(seen) == 1
    side = json.loads(sidecar_path(out).read_text())
    assert side["verification"]["status"] == "passed" and side["crop"] == ModelContract.from_json(json.dumps(side)).crop.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no lock, no staging left


def test_output_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    out = tmp_path / "m.onnx"
    errors = []

    def rival() -> None:
        try:
            with output_lock(out, "fan-export"):
                pass
        except OutputError as exc:
            errors.append(str(exc))

    with output_lock(out, "fan-export"):
        with output_lock(out, "fan-export"):  # the same run taking it again (fan-edge predict -> export_model)
            thread = threading.Thread(target=rival)
            thread.start()
            thread.join()
    assert len(errors) == 1 and "another fan-export in this process is writing it" in errors[0]
    rival()  # released: free again
    assert len(errors) == 1 and list(tmp_path.iterdir()) == []


# ---- 3. a sidecar that disagrees with the artifact's own contract ------------------------------------------------------


def test_a_sidecar_that_disagrees_with_the_embedded_contract_is_refused(tmp_path, contract_onnx, synthetic_faces, capfd):
    from fan_edge.runtime.session import LandmarkSession

    path = tmp_path / "m.onnx"
    shutil.copy(contract_onnx, path)
    original = json.loads(sidecar_path(contract_onnx).read_text())
    # Informational differences (the card, a verification record) are fine.
    sidecar_path(path).write_text(json.dumps({**original, "card": {"note": "edited"}, "verification": {"status": "ok"}}))
    with LandmarkSession(path) as session:
        assert session.contract.verification == {"status": "ok"}
        good, _ = session.predict(np.zeros((140, 140, 3), np.uint8), np.array([[20.0, 20.0, 120.0, 120.0]]))
    # The attacker's case: another export's crop shift.
    sidecar_path(path).write_text(json.dumps({**original, "crop": {**original["crop"], "center_shift": 0.9}}))
    with pytest.raises(ContractError, match=r"disagrees with the contract inside the artifact on crop") as info:
        LandmarkSession(path)
    assert "\n" not in str(info.value)
    for field, value in (("input_size", 128), ("refine", "gaussian"), ("output_names", ["other"]), ("batch", 1)):
        changed = {**original, field: value, **({"heatmap_size": 32} if field == "input_size" else {})}
        sidecar_path(path).write_text(json.dumps(changed))
        with pytest.raises(ContractError, match=field):
            LandmarkSession(path)
    sidecar_path(path).write_text(json.dumps({**original, "crop": {**original["crop"], "center_shift": 0.9}}))
    line = _one_line_error(cli.main, ["predict", str(synthetic_faces / "face0.png"), "--model", str(path), "--boxes", BOXES], capfd)
    assert line.startswith("fan-edge: error:") and "disagrees" in line
    sidecar_path(path).unlink()  # the artifact alone: its own contract serves
    with LandmarkSession(path) as session:
        points, _ = session.predict(np.zeros((140, 140, 3), np.uint8), np.array([[20.0, 20.0, 120.0, 120.0]]))
    np.testing.assert_allclose(points, good)


# ---- 4. the sweep removes only what fan-edge provably made -------------------------------------------------------------


def test_the_sweep_never_deletes_what_fan_edge_did_not_write(tmp_path):
    dead = _dead_pid()
    folder = tmp_path / "out"
    folder.mkdir()
    # Users' files and folders with the names fan-edge's temporaries once had, whose "pid" is free.
    (folder / f".report.json.{dead}.abcd1234.tmp").write_text("user file")
    (folder / f".photos.{dead}.abcd1234.tmp").mkdir()
    (folder / f".photos.{dead}.abcd1234.tmp" / "a.jpg").write_text("user photo")
    for name in (f".fan-export-{dead}-abcd1234", f".fan-export-old-{dead}-abcd1234"):
        (folder / name).mkdir()
        (folder / name / "keep.txt").write_text("user")
    # Inside fan-edge's own folder: a file without an owner record, and one with a forged record (wrong inode).
    staging = folder / STAGING_FOLDER
    staging.mkdir()
    (staging / f"notes.{dead}.abcdefgh.tmp").write_text("no record")
    (staging / f"forged.{dead}.abcdefgh.tmp").write_text("forged")
    (staging / f"forged.{dead}.abcdefgh.tmp.owner").write_text(json.dumps(
        {"tag": "fan-edge temporary", "pid": dead, "role": "file", "dev": 1, "ino": 1, "dir": False}))
    users = _listing(folder)
    # A real temporary of a writer killed before its rename: fan-edge's, and removed.
    pid = os.fork()
    if pid == 0:
        make_temporary(folder, "report.json").write_text("half")
        os._exit(0)
    os.waitpid(pid, 0)
    (made,) = [p for p in staging.iterdir() if p.name.startswith(f"report.json.{pid}.") and p.suffix == ".tmp"]

    assert remove_stale_temporaries(folder) == [made]
    Staging(folder / "m.onnx").cleanup()  # an export's recovery into the same folder
    write_text_atomic(folder / "other.txt", "x")
    assert _listing(folder) == sorted(users + ["other.txt"])


# ---- 5. unwritable outputs: one line, before any work, nothing left -----------------------------------------------------


def test_outputs_under_a_file_or_naming_a_folder_are_one_line_errors(tmp_path, micro, contract_onnx, synthetic_faces,
                                                                     capfd, monkeypatch):
    _no_slow_step(monkeypatch)
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    (tmp_path / "shot.png").mkdir()
    photo = str(synthetic_faces / "face0.png")
    predict = ["predict", photo, "--model", str(contract_onnx), "--boxes", BOXES, "--out"]
    cases = [
        (cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(afile / "m.onnx"), "--no-verify"], "is a file"),
        (cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(afile / "sub") + "/", "--no-verify"], "is a file"),
        (cli.main, [*predict, str(afile / "x.png")], "is a file"),
        (cli.main, [*predict, str(tmp_path / "shot.png")], "is a folder"),
        (cli.train_main, ["--model", str(micro), "--data", str(synthetic_faces), "--out", str(afile / "run"), "--epochs", "1"], "is a file"),
    ]
    before = _listing(tmp_path)
    for main, argv, why in cases:
        assert why in _one_line_error(main, argv, capfd)
    assert _listing(tmp_path) == before
    # The sidecar's path a folder: refused before the artifact is written (it used to be written, then a traceback).
    (tmp_path / "m.onnx.json").mkdir()
    assert "m.onnx.json is an existing folder" in _one_line_error(
        cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(tmp_path / "m.onnx"), "--no-verify"], capfd)
    assert not (tmp_path / "m.onnx").exists()
    # The library's own writes say so in one line too.
    with pytest.raises(OutputError, match="is a file"):
        write_text_atomic(afile / "report.json", "{}")
    with pytest.raises(OutputError, match="is a folder"):
        with atomic_path(tmp_path / "shot.png"):
            pass


def test_read_only_folders_are_one_line_errors_before_any_work(read_only, micro, contract_onnx, synthetic_faces,
                                                                capfd, monkeypatch):
    before = _listing(read_only)
    photo = str(synthetic_faces / "face0.png")
    with monkeypatch.context() as m:
        _no_slow_step(m)
        cases = [
            (cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(read_only / "m.onnx"), "--no-verify"]),
            (cli.export_main, ["--target", "onnx", "--model", str(micro), "--output", str(read_only / "sub") + "/", "--no-verify"]),
            (cli.main, ["predict", photo, "--model", str(contract_onnx), "--boxes", BOXES, "--out", str(read_only / "x.png")]),
            (cli.train_main, ["--model", str(micro), "--data", str(synthetic_faces), "--out", str(read_only / "run"), "--epochs", "1"]),
        ]
        for main, argv in cases:
            assert "is not writable" in _one_line_error(main, argv, capfd)
    # fan-edge predict exports a checkpoint into the cache first: a read-only cache names the cache and the way out.
    monkeypatch.setenv("FAN_EDGE_CACHE", str(read_only / "cache"))
    capfd.readouterr()
    assert cli.main(["predict", photo, "--model", str(micro), "--boxes", BOXES]) == 2
    err = capfd.readouterr().err
    lines = err.strip().splitlines()  # refused before predict's own "exporting ... once" line
    assert "Traceback" not in err and len(lines) == 1 and lines[-1].startswith("fan-edge: error: the fan-edge cache")
    assert "FAN_EDGE_CACHE" in lines[-1] and "is not writable" in lines[-1]
    assert _listing(read_only) == before
    with pytest.raises(OutputError, match="is not writable"):
        check_writable(read_only / "x.json", "--out")
    with pytest.raises(OutputError, match="not writable"):
        write_text_atomic(read_only / "x.json", "{}")
