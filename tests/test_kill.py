"""SIGKILL at random moments: every file fan-edge writes appears whole or not at all.

A kill runs no ``finally``: what survives it is what the file system holds at
that instant. These tests kill real ``fan-export`` and ``fan-train`` processes
(seeded random moments spread over their runs) and the export commit at each
of its file-system steps, then check that every file that existed before is
byte-identical or a complete, loadable newer version, that the only extra
entries are the dead writer's temporaries, that the next run removes those,
and that training resumes from its last complete checkpoint.

The counts below are what the README's reliability section quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fan_edge_package
from fan_edge.atomic import LOCK_TAG, RECORD_SUFFIX, RECORD_TAG, STAGING_FOLDER, make_temporary, temporary_owner
from fan_edge.export.staging import EXPORT_ROLE, JOURNAL, Staging, recover_exports

EXPORT_KILLS = 5  # fan-export (ONNX + OpenVINO) processes killed at seeded random moments
TRAIN_KILLS = 5  # fan-train processes killed at seeded random moments
COMMIT_STEP_KILLS = 25  # at least this many: an export commit killed before each rename/unlink/rmdir it makes (3 layouts)
SEED = 20240607

EXPORT_FINALS = ("tiny-fp32.onnx", "tiny-fp32.onnx.json", "tiny-fp32.bin", "tiny-fp32.xml", "tiny-fp32.xml.json")
EXPORT_GROUPS = (("tiny-fp32.onnx",), ("tiny-fp32.bin", "tiny-fp32.xml"))  # artifact files; each has a sidecar
TRAIN_FINALS = {"last.ckpt", "best.safetensors", "best.json", "spec.json", "train.log"}


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _cli(entry: str, *args: str) -> list[str]:
    """The console script ``entry`` (pyproject's [project.scripts]) run by this interpreter."""
    return [sys.executable, "-c", f"import sys; from fan_edge.cli import {entry}; sys.exit({entry}())", *args]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_pid(path: Path, tag: str) -> int | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("pid") if isinstance(data, dict) and data.get("tag") == tag else None


def _dead_temporaries(folder: Path, pids: set[int]) -> dict[Path, int]:
    """The temporaries in ``folder`` (all in its .fan-edge-tmp/) and their writers, each of which must be one of the
    dead ``pids``; the other entries there (owner records, locks) must be theirs too."""
    found = {}
    dotted = [e for e in folder.iterdir() if e.name.startswith(".")] if folder.exists() else []
    assert all(e.name == STAGING_FOLDER for e in dotted), f"unexpected entries {dotted} after killing {sorted(pids)}"
    for entry in folder.joinpath(STAGING_FOLDER).iterdir() if dotted else []:
        if entry.name.endswith(RECORD_SUFFIX):
            pid = _record_pid(entry, RECORD_TAG)
        elif entry.name.endswith(".lock"):
            pid = _record_pid(entry, LOCK_TAG)
        else:
            pid = found[entry] = temporary_owner(entry)
        assert pid in pids, f"unexpected entry {entry.name} after killing {sorted(pids)}"
    return found


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env())


def _run_to_end(cmd: list[str], log: Path) -> None:
    proc = _start(cmd, log)
    assert proc.wait() == 0, log.read_text()[-3000:]


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` s (it is reaped, so its pid is no longer alive); False when it ended first."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _moments(count: int, low: float, high: float, rng: random.Random) -> list[float]:
    """``count`` random moments in [low, high), one in each of ``count`` equal strata (spread over the run), shuffled."""
    step = (high - low) / count
    moments = [low + (i + rng.random()) * step for i in range(count)]
    rng.shuffle(moments)
    return moments


# ---- a killed writer's temporary is removed by the next write, a live writer's is not ----------------------------------

_HALF_WRITE = r"""
import os, signal, sys, time
from fan_edge.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"half of a checkpoint")
        fh.flush()
    if sys.argv[2:] == ["sleep"]:
        print(tmp, flush=True)
        time.sleep(120)
    os.kill(os.getpid(), signal.SIGKILL)
"""

_WRITE = "import sys; from fan_edge.atomic import write_text_atomic; write_text_atomic(sys.argv[1], 'other')"


def test_killed_writer_leaves_the_old_file_and_the_next_write_removes_its_temporary(tmp_path):
    final = tmp_path / "report.json"
    final.write_text('{"old": true}')
    writer = subprocess.Popen([sys.executable, "-c", _HALF_WRITE, str(final)], env=_env())
    assert writer.wait() == -signal.SIGKILL
    assert final.read_text() == '{"old": true}'
    (stale,) = _dead_temporaries(tmp_path, {writer.pid})
    assert stale.name.startswith("report.json.") and stale.read_bytes() == b"half of a checkpoint"

    live = subprocess.Popen([sys.executable, "-c", _HALF_WRITE, str(tmp_path / "other.txt"), "sleep"],
                            stdout=subprocess.PIPE, text=True, env=_env())  # a writer still at work
    try:
        working = Path(live.stdout.readline().strip())
        subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path / "other.txt")], env=_env(), check=True)
        assert not stale.exists(), "the dead writer's temporary survived the next write into its folder"
        assert working.read_bytes() == b"half of a checkpoint", "a live writer's temporary was removed"
    finally:
        live.kill()
        live.wait()
    subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path / "other.txt")], env=_env(), check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt", "report.json"]
    assert final.read_text() == '{"old": true}'


# ---- an export commit killed before each of its file-system steps ------------------------------------------------------

def _commit_child(folder: Path, kill_at: int, names: list[str]) -> None:
    """In a forked child: stage new versions of ``names`` and commit them, SIGKILLing itself before its
    ``kill_at``-th file-system mutation (rename, unlink, rmdir; clean-up included). Never returns."""
    try:
        finals = [folder / n for n in names]
        calls = [0]

        def hooked(real):
            def call(*args, **kwargs):
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                calls[0] += 1
                return real(*args, **kwargs)
            return call

        with Staging(finals[-2]) as staging:  # the main artifact; the last final is its sidecar
            for final in finals:
                staged = staging.path(final)
                if final.suffix == ".mlpackage":
                    fan_edge_package(staged, {"Data/a": "new a", "Data/b": "new b"})
                else:
                    staged.write_text("new " + final.name)
            for name in ("replace", "rename", "unlink", "rmdir"):
                setattr(os, name, hooked(getattr(os, name)))
            staging.commit(finals)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _fork(target, *args) -> tuple[int, int]:
    """Run ``target(*args)`` in a forked child (no interpreter start-up per kill); (pid, wait status)."""
    pid = os.fork()
    if pid == 0:
        target(*args)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return pid, status


def _tree(path: Path) -> dict[str, str]:
    if path.is_dir():  # a package's own files (its manifest and spec) are the same in the old and the new one
        return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*"))
                if p.is_file() and p.name not in ("Manifest.json", "model.mlmodel")}
    return {"": path.read_text()}


def _write_old(finals: list[Path]) -> None:
    for final in finals:
        if final.is_dir():
            shutil.rmtree(final)
        if final.suffix == ".mlpackage":
            fan_edge_package(final, {"Data/a": "old a", "Data/old-only": "old"})
        else:
            final.write_text("old " + final.name)


def _kill_commit_at_every_step(folder: Path, names: list[str]) -> int:
    """Kill a commit of ``names`` before its 1st, 2nd, ... file-system step until one runs to the end; check each."""
    folder.mkdir()
    finals = [folder / n for n in names]
    new = {n: ({"Data/a": "new a", "Data/b": "new b"} if n.endswith(".mlpackage") else {"": "new " + n}) for n in names}
    kills = 0
    for kill_at in range(500):
        _write_old(finals)  # every kill starts from the old, complete files
        old = {n: _tree(f) for n, f in zip(names, finals)}
        pid, status = _fork(_commit_child, folder, kill_at, names)
        if os.waitstatus_to_exitcode(status) == 0:
            break  # the commit and its clean-up ran to the end: each of their steps has been killed once
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL, f"the commit child failed at step {kill_at}"
        kills += 1
        _dead_temporaries(folder, {pid})
        journaled = any((p / JOURNAL).exists() for p in _dead_temporaries(folder, {pid}) if p.is_dir())
        Staging(finals[-2]).cleanup()  # what the next export into the folder does first
        assert sorted(p.name for p in folder.iterdir()) == sorted(names), f"leftovers after a kill at step {kill_at}"
        state = {n: _tree(f) for n, f in zip(names, finals)}
        assert state in (old, new), f"a mix of old and new files after a kill at step {kill_at}: {state}"
        # Step 0 is the journal's rename: killed before it, the commit had not begun and is undone; after, finished.
        assert state == (old if kill_at == 0 else new), f"step {kill_at}: a begun commit must be finished, another undone"
        assert not journaled or state == new
    else:
        pytest.fail("the commit never completed")
    assert {n: _tree(f) for n, f in zip(names, finals)} == new
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    return kills


def test_commit_killed_at_every_step_is_all_old_or_all_new_after_the_next_export(tmp_path):
    layouts = [["m.onnx", "m.onnx.json"], ["m.bin", "m.xml", "m.xml.json"], ["m.mlpackage", "m.mlpackage.json"]]
    kills = [_kill_commit_at_every_step(tmp_path / str(i), names) for i, names in enumerate(layouts)]
    assert all(k >= 5 for k in kills), kills  # journal, stale sidecar, each rename, clean-up: every layout has steps
    assert sum(kills) >= COMMIT_STEP_KILLS, kills


def _dead_pid() -> int:
    pid, _ = _fork(lambda: None)
    return pid


def _staging_child(folder: Path, journal: dict) -> None:
    """In a forked child: make an export staging folder in ``folder`` holding ``journal``, then die."""
    staging = make_temporary(folder, "m.onnx", role=EXPORT_ROLE, directory=True)
    (staging / "escape").write_text("new")
    (staging / JOURNAL).write_text(json.dumps(journal))
    os._exit(0)


def test_recovery_leaves_live_exports_alone_and_moves_nothing_out_of_its_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_text("old")
    # A dead writer's journal naming a file outside the folder.
    _fork(_staging_child, out, {"destination": "m.onnx", "finals": ["../escape"]})
    (forged,) = [p for p in (out / STAGING_FOLDER).iterdir() if p.is_dir()]
    live = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                             "from fan_edge.atomic import make_temporary; "
                             "p = make_temporary(Path(sys.argv[1]), 'm.onnx', role='export', directory=True); "
                             "(p / 'm.onnx').write_text('being written'); print(p, flush=True); time.sleep(120)", str(out)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        working = Path(live.stdout.readline().strip())
        Staging(out / "m.onnx").cleanup()
        assert working.is_dir() and (working / "m.onnx").read_text() == "being written", "a live export's staging was touched"
    finally:
        live.kill()
        live.wait()
    assert not forged.exists() and not (tmp_path / "escape").exists() and (out / "m.onnx").read_text() == "old"
    Staging(out / "m.onnx").cleanup()  # its writer is gone now: its staging goes, unjournaled, without a move
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"] and (out / "m.onnx").read_text() == "old"


# ---- fan-export killed at random moments --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two small FANs saved under the same file name (so their artifacts share names) whose exports differ in every
    file: other weights and another crop (so another contract). One hourglass level at 64 px keeps the
    torch -> ONNX step, which dominates an export's time, short."""
    import torch

    from conftest import randomise_batchnorm
    from fan_edge.models import FANConfig, Weights, create_model, save_checkpoint
    from fan_edge.runtime.crop import CropSpec

    paths = []
    for seed, scale in ((0, 195.0), (1, 280.0)):
        torch.manual_seed(seed)
        crop = CropSpec(reference_scale=scale, center_shift=0.0)
        config = FANConfig(stacks=1, width=32, input_size=64, hourglass_depth=1)
        model = randomise_batchnorm(create_model(config, weights=Weights(crop=crop)))
        paths.append(save_checkpoint(model, tmp_path_factory.mktemp(f"model{seed}") / "tiny.safetensors", card={"seed": seed}))
    return paths[0], paths[1]


def _contract_of_sidecar(path: Path) -> dict:
    from fan_edge.runtime.contract import ModelContract

    ModelContract.from_json(path.read_text())  # a valid contract, not just JSON
    return json.loads(path.read_text())


def _check_export_files(out: Path) -> dict[str, object]:
    """Every artifact in ``out`` loads (ONNX checker; OpenVINO reads .xml with its .bin), every sidecar is a contract;
    return each file's sha256 (sidecars: their parsed contract as well)."""
    import onnx
    import openvino as ov

    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert set(names) == set(EXPORT_FINALS), f"a final file is missing or unexpected: {names}"
    onnx.checker.check_model(onnx.load(str(out / "tiny-fp32.onnx")), full_check=True)
    ov.Core().read_model(str(out / "tiny-fp32.xml"))
    state: dict[str, object] = {n: _sha(out / n) for n in names}
    for n in names:
        if n.endswith(".json"):
            state[n + ":contract"] = _contract_of_sidecar(out / n)
    return state


def _without_verification(contract: dict) -> dict:
    return {k: v for k, v in contract.items() if k != "verification"}


def _assert_one_version(state: dict, a: dict, b: dict) -> str:
    """Each artifact's files all from the previous export (a) or all from the new one (b), its sidecar from the same
    export (b's before or after its verification was added); returns the versions seen."""
    seen = []
    for group in EXPORT_GROUPS:
        versions = {"a" if state[n] == a[n] else "b" if state[n] == b[n] else "?" for n in group}
        assert versions in ({"a"}, {"b"}), f"{group}: files of different exports or of none: {versions}"
        version = versions.pop()
        sidecar = group[-1] + ".json"
        if version == "a":
            assert state[sidecar] == a[sidecar], f"{sidecar}: the previous artifact lost its contract"
        else:
            contract, final = state[sidecar + ":contract"], b[sidecar + ":contract"]
            assert _without_verification(contract) == _without_verification(final), f"{sidecar}: not the new artifact's contract"
            assert contract.get("verification") in (None, final["verification"])
        seen.append(version)
    return "".join(seen)


def test_fan_export_killed_at_random_moments_keeps_every_previous_file(tmp_path, two_models, synthetic_faces):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    previous, newer = two_models
    out, log = tmp_path / "out", tmp_path / "export.log"

    def command(model: Path) -> list[str]:
        return _cli("export_main", "--model", str(model), "--target", "onnx,openvino", "--precision", "fp32",
                    "--output", str(out), "--verify", str(synthetic_faces), "--verify-faces", "1")

    started = time.monotonic()
    _run_to_end(command(previous), log)
    duration = time.monotonic() - started
    a = _check_export_files(out)

    rng = random.Random(SEED)
    moments = _moments(EXPORT_KILLS, 0.3 * duration, 1.0 * duration, rng)  # the first 30%: imports and tracing, no file
    states, dead, kills, recovered, temporaries = [], set(), 0, 0, 0
    while kills < EXPORT_KILLS:
        moment = moments[kills]
        proc = _start(command(newer), log)
        if not _kill_after(proc, moment):
            assert proc.returncode == 0, log.read_text()[-2000:]
            moments[kills] = 0.8 * moment  # it finished first: the same stratum, earlier (not counted as a kill)
            continue
        kills += 1
        dead.add(proc.pid)
        # Only dead writers' temporaries, never another file (a run killed before it reached its staging step has not
        # swept the earlier ones yet: the run that completes below must have).
        leftovers = _dead_temporaries(out, dead)
        temporaries += proc.pid in leftovers.values()
        if any((p / JOURNAL).exists() for p in leftovers if p.is_dir()):
            recover_exports(out)  # killed between the renames of a commit: the state is the one after the next export
            recovered += 1
        states.append(_check_export_files(out))

    _run_to_end(command(newer), log)
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FINALS), "the next export left temporaries"
    b = _check_export_files(out)
    assert all(b[n + ".json:contract"]["verification"]["status"] == "passed" for n in ("tiny-fp32.onnx", "tiny-fp32.xml"))
    assert all(a[n] != b[n] for n in EXPORT_FINALS)  # every file really was replaced
    seen = [_assert_one_version(state, a, b) for state in states]
    for before, after in zip(seen, seen[1:]):  # an artifact once replaced is never the previous one again
        assert all(not (x == "b" and y == "a") for x, y in zip(before, after)), seen
    print(f"\nexport: {kills} kills, artifact versions (onnx, openvino) after each {seen}, {temporaries} left a temporary, "
          f"{recovered} fell inside a commit; one run {duration:.1f} s")


# ---- fan-train killed at random moments ---------------------------------------------------------------------------------

TRAIN_EPOCHS = 8
_RESUMING = re.compile(r"resuming \S+ at epoch (\d+) batch (\d+)")


def _started(log: Path, proc: subprocess.Popen, runs: int, timeout: float = 300.0) -> None:
    """Wait until the ``runs``-th run has logged its start (the line after resuming, writing spec.json, building the
    model and data): its kill lands in the training loop, not in the imports."""
    deadline = time.monotonic() + timeout
    while not log.exists() or log.read_text().count(" params, ") < runs:
        assert proc.poll() is None, "fan-train ended before it was killed"
        assert time.monotonic() < deadline, "fan-train did not start in time"
        time.sleep(0.01)


def _checkpoint_writes(path: Path, proc: subprocess.Popen, count: int, timeout: float = 300.0) -> None:
    """Wait until ``proc`` has replaced ``path`` ``count`` more times (each atomic write is a new inode)."""
    seen, inode, deadline = 0, None, time.monotonic() + timeout
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        pass
    while seen < count:
        assert proc.poll() is None, "fan-train ended before it was killed: raise TRAIN_EPOCHS"
        assert time.monotonic() < deadline, "fan-train wrote no checkpoint in time"
        try:
            now = path.stat().st_ino
        except FileNotFoundError:
            now = None
        if now is not None and now != inode:
            seen, inode = seen + 1, now
        time.sleep(0.003)


def _train_files(out: Path, finished: bool = False) -> dict:
    """Load every final file of a run (each must be whole): the checkpoint position, the best epoch."""
    import torch
    from safetensors.torch import load_file

    from fan_edge.models import read_checkpoint

    if not out.exists():
        return {"names": set(), "last": None, "best": None}  # killed before it made its folder
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    expected = TRAIN_FINALS | ({"final.safetensors", "final.json"} if finished else set())
    assert names <= expected, f"unexpected files {names - expected}"
    state: dict = {"names": names, "last": None, "best": None}
    if "last.ckpt" in names:
        ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
        state["last"] = (ckpt["epoch"], ckpt["batch"])
        state["history"] = [h["epoch"] for h in ckpt["history"]]
    for weights in ("best.safetensors", "final.safetensors"):
        if weights in names:
            load_file(str(out / weights))
            read_checkpoint(out / weights)
    if "best.json" in names:
        state["best"] = json.loads((out / "best.json").read_text())["epoch"]
    if "spec.json" in names:
        assert json.loads((out / "spec.json").read_text())["epochs"] == TRAIN_EPOCHS
    return state


def _assert_progress(before: dict, after: dict) -> None:
    """Nothing that existed is gone; checkpoints only move forward."""
    assert before["names"] - {"train.log"} <= after["names"], f"lost {before['names'] - after['names']}"
    if before["last"] is not None:
        assert after["last"] >= before["last"], f"last.ckpt went back from {before['last']} to {after['last']}"
    if before["best"] is not None:
        assert after["best"] >= before["best"]


def test_fan_train_killed_at_random_moments_resumes_from_its_last_checkpoint(tmp_path, synthetic_faces):
    out, log = tmp_path / "run", tmp_path / "train.out"
    command = _cli("train_main", "--model", "fan1-w32-i64", "--data", str(synthetic_faces), "--out", str(out),
                   "--epochs", str(TRAIN_EPOCHS), "--batch-size", "3", "--workers", "0", "--seed", "3", "--device", "cpu",
                   "--checkpoint-minutes", "0.0001")  # last.ckpt after every batch: many writes to be killed in
    rng = random.Random(SEED + 1)
    # A kill comes, once the run has started training, after 0-2 more checkpoints plus a random 0-0.3 s: anywhere
    # in a batch or a save; progress per run is bounded so that the killed runs cannot finish the schedule.
    plan = [(rng.randint(0, 2), rng.uniform(0.0, 0.3)) for _ in range(TRAIN_KILLS)]
    state = {"names": set(), "last": None, "best": None}
    resumes_expected, temporaries = [], 0
    for run, (writes, extra) in enumerate(plan, start=1):
        if state["last"] is not None:
            resumes_expected.append(state["last"])
        proc = _start(command, log)
        _started(out / "train.log", proc, run)
        _checkpoint_writes(out / "last.ckpt", proc, writes)
        assert _kill_after(proc, extra), "fan-train ended before it was killed: raise TRAIN_EPOCHS"
        # The next run's first write swept the earlier kills' temporaries: only this one's may be left.
        temporaries += bool(_dead_temporaries(out, {proc.pid}))
        after = _train_files(out)
        _assert_progress(state, after)
        state = after
    if state["last"] is not None:
        resumes_expected.append(state["last"])

    _run_to_end(command, log)
    final = _train_files(out, finished=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(TRAIN_FINALS | {"final.safetensors", "final.json"}), "temporaries left"
    assert final["last"] == (TRAIN_EPOCHS, 0) and final["history"] == list(range(1, TRAIN_EPOCHS + 1))
    resumes = [(int(e), int(b)) for e, b in _RESUMING.findall((out / "train.log").read_text())]
    assert resumes == resumes_expected, "a run did not resume from the last complete checkpoint"
    assert resumes and resumes[-1] > (0, 0), "the runs restarted from scratch instead of resuming"
    print(f"\ntrain: {len(plan)} kills, {temporaries} left a temporary; the runs resumed at (epoch, batch) {resumes}")
