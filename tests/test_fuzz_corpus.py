"""Replay the fuzz corpus (fuzz/corpus/<target>/*) through the fuzz targets, without atheris.

Every file the fuzzer kept (seeds, the inputs that reached new code, and the
ones that once crashed and were fixed, ``regress-*``) must load or be refused
with a one-line FanEdgeError; pickle payloads among them must not run. See
fuzz/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from targets import CORPUS, MARKER, TARGETS, run_one  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol", "ignore:.torch.load. received a zip file")

NEEDS = {"artifact-onnx": "onnxruntime", "artifact-tflite": "ai_edge_litert", "artifact-openvino-xml": "openvino",
         "artifact-openvino-bin": "openvino"}


def _cases() -> list:
    cases = []
    for target in TARGETS:
        files = sorted((CORPUS / target).glob("*"))
        cases.append(pytest.param(target, files, id=target))
    return cases


@pytest.mark.parametrize("target, files", _cases())
def test_corpus_loads_or_is_refused_in_one_line(target, files, tmp_path, monkeypatch):
    if target in NEEDS:
        pytest.importorskip(NEEDS[target])
    assert files, f"fuzz/corpus/{target} is empty"
    monkeypatch.chdir(tmp_path)  # where a payload would leave its marker
    for path in files:
        try:
            refusal = run_one(target, path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - the point: name the file that broke the rule
            pytest.fail(f"{target} {path.name}: {type(exc).__name__}: {exc}")
        assert not (tmp_path / MARKER).exists(), f"{path.name}: a pickle payload ran"
        if path.name.startswith("seed-payload-"):
            assert "refused to load" in str(refusal), f"{path.name}: {refusal!r}"


def test_corpus_holds_real_payloads(tmp_path, monkeypatch):
    """The payload seeds run under a plain unpickler (so the replay's refusal of them means something)."""
    import pickle

    payloads = sorted((CORPUS / "checkpoint").glob("seed-payload-*.pkl"))
    assert len(payloads) >= 2
    monkeypatch.chdir(tmp_path)
    for path in payloads:
        pickle.loads(path.read_bytes())  # noqa: S301 - on purpose: this is the unsafe reader
        assert (tmp_path / MARKER).exists(), f"{path.name} is not a working payload"
        (tmp_path / MARKER).unlink()
