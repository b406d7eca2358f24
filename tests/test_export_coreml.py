"""fan-export to Core ML (.mlpackage): spec checks on Linux, metadata, the landmarks pipeline, atomic folder writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ct = pytest.importorskip("coremltools", reason="Core ML export needs the coreml extra: pip install -c constraints.txt -e '.[coreml]'")

from conftest import fan_edge_package  # noqa: E402
from fan_edge.cli import export_main  # noqa: E402
from fan_edge.export import coreml_export, export_model  # noqa: E402
from fan_edge.errors import ExportError  # noqa: E402
from fan_edge.export.staging import Staging  # noqa: E402
from fan_edge.rows import Status  # noqa: E402
from fan_edge.runtime.contract import METADATA_KEY, ModelContract, sidecar_path  # noqa: E402

REASON = "prediction needs macOS"  # why a Core ML export is "not verified" off a Mac


def _ops(spec) -> list[str]:
    """Every MIL operation type of an ML program (or of each model of a pipeline), in order."""
    if spec.WhichOneof("Type") == "pipeline":
        return [op for model in spec.pipeline.models for op in _ops(model)]
    found = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            found += [op.type for op in block.operations]
    return found


def _has_fp16(spec) -> bool:
    """Whether any tensor of the program is float16 (MIL types in the spec's text form)."""
    return "FLOAT16" in str(spec)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def coreml_exported(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("coreml")
    results = export_model(str(tiny_checkpoint), "coreml", "fp32,fp16,int8", output=out)
    results += export_model(str(tiny_checkpoint), "coreml", "fp32", outputs="landmarks", output=out)
    return {(r.precision, r.outputs): r for r in results}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_exports_a_checked_package(coreml_exported, precision):
    r = coreml_exported[(precision, "heatmaps")]
    assert r.path.suffix == ".mlpackage" and r.path.is_dir() and (r.path / "Manifest.json").is_file()
    assert r.status is Status.NOT_VERIFIED and r.reason == REASON and r.parity is None and r.size_mb > 0
    side = json.loads(sidecar_path(r.path).read_text())
    assert side["verification"] == {"status": "not verified", "reason": REASON}
    # The spec, read back with coremltools without the Core ML runtime (this is Linux).
    spec = ct.utils.load_spec(str(r.path))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["input"] and [o.name for o in spec.description.output] == ["heatmaps"]
    array = spec.description.input[0].type.multiArrayType
    assert array.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32  # float32 I/O at every precision
    ranges = [(s.lowerBound, s.upperBound) for s in array.shapeRange.sizeRanges]
    assert ranges == [(1, coreml_export.MAX_BATCH), (3, 3), (128, 128), (128, 128)]
    # The contract in the user-defined metadata equals the sidecar's (less the verification record).
    model = ct.models.MLModel(str(r.path), skip_model_load=True)
    embedded = ModelContract.from_json(model.user_defined_metadata[METADATA_KEY])
    assert ModelContract.from_json(json.dumps(side)).replace(verification=None) == embedded
    assert embedded.target == "coreml" and embedded.precision == precision and embedded.layout == "NCHW"
    assert embedded.refine == "gaussian" and embedded.crop.reference_scale == 280.0 and embedded.extra["max_batch"] == 64
    assert coreml_export.read_contract(r.path) == embedded
    # int8 is weights only here, and the contract says so (no calibration, no activation bits)
    assert embedded.extra.get("int8") == ({"weights_only": True, "per_channel": True} if precision == "int8" else None)
    ops = _ops(spec)
    assert "conv" in ops
    # float32 throughout, or float16 compute (float32 I/O around it)
    assert _has_fp16(spec) == (precision != "fp32")
    quantized = [op for op in ops if op.startswith("constexpr")]
    assert bool(quantized) == (precision == "int8")


def test_landmarks_are_a_float32_head_after_the_network(coreml_exported):
    r = coreml_exported[("fp32", "landmarks")]
    spec = ct.utils.load_spec(str(r.path))
    assert spec.WhichOneof("Type") == "pipeline" and len(spec.pipeline.models) == 2
    body, head = spec.pipeline.models
    assert [o.name for o in body.description.output] == ["heatmaps"] and [i.name for i in head.description.input] == ["heatmaps"]
    assert [o.name for o in spec.description.output] == ["landmarks", "scores"]
    assert not _has_fp16(head) and r.status is Status.NOT_VERIFIED


def test_fp16_landmarks_keep_the_head_float32(tiny_checkpoint, tmp_path):
    (r,) = export_model(str(tiny_checkpoint), "coreml", "fp16", outputs="landmarks", output=tmp_path)
    body, head = ct.utils.load_spec(str(r.path)).pipeline.models
    assert _has_fp16(body) and not _has_fp16(head)


def test_cli_needs_no_faces_and_says_why_it_did_not_verify(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.mlpackage"
    assert export_main(["--target", "coreml", "--model", str(tiny_checkpoint), "--output", str(out)]) == 0
    assert f"not verified ({REASON})" in capsys.readouterr().out and out.is_dir()
    assert export_main(["--target", "coreml", "--model", str(tiny_checkpoint), "--output", str(tmp_path / "m.onnx")]) == 2
    assert ".mlpackage" in capsys.readouterr().err


def test_reexport_replaces_an_older_package_whole(tiny_checkpoint, tmp_path):
    out = fan_edge_package(tmp_path / "m.mlpackage", {"stale/old.bin": "OLD"})  # one fan-edge wrote
    (r,) = export_model(str(tiny_checkpoint), "coreml", "fp32", output=out, verify=False)
    assert r.path == out and not (out / "stale").exists() and (out / "Manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage", "m.mlpackage.json"]  # no staging left
    # A folder fan-edge did not write is never replaced, whatever its name.
    mine = tmp_path / "user.mlpackage"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="did not write"):
        export_model(str(tiny_checkpoint), "coreml", "fp32", output=mine, verify=False)
    assert (mine / "notes" / "keep.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes"]


def test_failed_export_leaves_no_partial_folder_and_keeps_the_older_one(tiny_checkpoint, tmp_path, monkeypatch):
    out = fan_edge_package(tmp_path / "m.mlpackage", {"Data/weights.bin": "OLD WEIGHTS"})
    sidecar_path(out).write_text('{"old": true}')
    before = _tree(out)

    def broken_check(path, contract):  # the package is fully written in staging, then the export fails
        assert Path(path).is_dir() and Path(path).parent != out.parent
        raise OSError("No space left on device")

    monkeypatch.setattr(coreml_export, "check_spec", broken_check)
    with pytest.raises(OSError):
        export_model(str(tiny_checkpoint), "coreml", "fp32", output=out, verify=False)
    assert _tree(out) == before and sidecar_path(out).read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage", "m.mlpackage.json"]


def test_folder_commit_puts_the_older_folder_back_when_the_move_fails(tmp_path, monkeypatch):
    final = fan_edge_package(tmp_path / "m.mlpackage", {"a": "old"})
    with Staging(final) as staging:
        staged = staging.path(final)
        staged.mkdir()
        (staged / "a").write_text("new")
        real_replace = os.replace

        def failing_replace(src, dst):
            if Path(src) == staged:
                raise OSError("rename failed")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError):
            staging.commit([final])
        monkeypatch.undo()
    assert (final / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
    # And a commit that works swaps the folders.
    with Staging(final) as staging:
        staging.path(final).mkdir()
        (staging.path(final) / "b").write_text("new")
        staging.commit([final])
    assert sorted(p.name for p in final.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["m.mlpackage"]
