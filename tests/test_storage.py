"""int8 weight storage: a quarter of the file, loading as an ordinary float FAN within half a step of every kernel,
counted by the torch-free header reader, bundled with its figures measured as stored, and malformed files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fan_edge.errors import CheckpointError
from fan_edge.models import create_model, read_checkpoint, save_checkpoint
from fan_edge.models.bundle import bundle
from fan_edge.models.storage import SCALE_SUFFIX
from fan_edge.models.table import fan_edge_file_summary


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("fan2-w32-i64", weights=False).eval()
    for p in net.parameters():  # break the init's symmetry so that every channel has its own range
        p.data.add_(torch.randn_like(p) * 0.05)
    return net


def test_int8_storage_is_a_quarter_and_loads_within_half_a_step(model, tmp_path: Path):
    fp32 = save_checkpoint(model, tmp_path / "fp32.safetensors")
    int8 = save_checkpoint(model, tmp_path / "int8.safetensors", storage="int8")
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size  # a quarter, plus the header and scales of a tiny net
    loaded = read_checkpoint(int8).state_dict
    original = model.state_dict()
    assert set(loaded) == set(original)  # no scale entry reaches the network
    for key, value in original.items():
        got = loaded[key]
        if value.is_floating_point() and value.dim() >= 2:
            assert got.dtype == torch.float32, key
            step = value.reshape(value.shape[0], -1).abs().amax(1) / 127
            error = (got - value).reshape(value.shape[0], -1).abs().amax(1)
            assert torch.all(error <= step / 2 + 1e-7), key
            assert torch.any(got != value), key  # really rounded: the file does not hide the fp32 kernel
        elif value.is_floating_point():
            torch.testing.assert_close(got.float(), value.half().float(), rtol=0, atol=0)
        else:
            assert torch.equal(got, value)
    net = create_model(str(int8)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), net(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_the_header_reader_counts_only_the_networks_tensors(model, tmp_path: Path):
    path = save_checkpoint(model, tmp_path / "int8.safetensors", storage="int8")
    summary = fan_edge_file_summary(str(path))
    assert summary is not None and summary[0] == model.config


def _stored(model, tmp_path: Path, change) -> Path:
    from fan_edge.models.storage import encode

    tensors = encode(model.state_dict(), "int8")
    change(tensors)
    path = save_checkpoint(model, tmp_path / "good.safetensors", storage="int8")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad), metadata=metadata)
    bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    return bad


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("conv1.weight" + SCALE_SUFFIX), "has no scales"),
    (lambda t: t.__setitem__("conv1.weight" + SCALE_SUFFIX, t["conv1.weight" + SCALE_SUFFIX][:-1].clone()),
     "output channels"),
    (lambda t: t.__setitem__("conv9.weight" + SCALE_SUFFIX, torch.ones(3)), "belong to no int8 kernel"),
    (lambda t: t.__setitem__("conv1.weight", t["conv1.weight"].float()), "belong to no int8 kernel"),
])
def test_malformed_int8_files_are_refused_in_one_line(model, tmp_path: Path, change, message):
    bad = _stored(model, tmp_path, change)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_bundle_measures_int8_storage_as_stored(model, tmp_path: Path):
    ckpt = save_checkpoint(model, tmp_path / "w.safetensors", {"recipe": "fan-train --model fan2-w32-i64"})
    seen = []

    def measure(path, data):
        seen.append(read_checkpoint(path).state_dict["conv1.weight"])
        return {"parameters": 1, "macs": 1, "figures": {"nme_io": 1.0}}

    out = bundle(ckpt, "tiny-int8", tmp_path, folder=tmp_path / "zoo", storage="int8", measure=measure)
    assert json.loads(out.with_suffix(".json").read_text())["storage"] == "int8"
    loaded = create_model(str(out)).state_dict()["conv1.weight"]
    torch.testing.assert_close(loaded, seen[0], rtol=0, atol=0)  # the card's figures are of these weights
    assert not torch.equal(loaded, model.state_dict()["conv1.weight"])
