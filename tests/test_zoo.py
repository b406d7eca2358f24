"""The zoo: bundling measures figures afresh into the folder asked for, with portable cards; the registry table reads
them back; a corrupt card costs only its own model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest

from fan_edge.data.heatmaps import gaussian_heatmaps
from fan_edge.errors import ConfigError
from fan_edge.models import create_model, read_checkpoint, save_checkpoint
from fan_edge.bench.card import measure_card
from fan_edge.models.bundle import absolute_paths, bundle, development_weights_folder, portable_card
from fan_edge.models.table import format_table, zoo_rows
from fan_edge.runtime.decode import decode_heatmaps


def test_bundle_measures_the_card_on_the_given_faces(data_dir: Path, tmp_path: Path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for jpg in sorted((data_dir / "afw").glob("*.jpg"))[:6]:
        (faces / jpg.name).symlink_to(jpg)
        (faces / jpg.with_suffix(".pts").name).symlink_to(jpg.with_suffix(".pts"))
    ckpt = save_checkpoint(create_model("fan1-w32-i128", weights=False), tmp_path / "run.safetensors",
                           {"recipe": "fan-train --model fan1-w32-i128", "figures": {"nme_io": 0.1}})
    out = bundle(ckpt, "tiny-test", faces, default=True, folder=tmp_path / "zoo", measure=measure_card)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["name"] == "tiny-test" and card["default"] is True
    assert card["recipe"] == "fan-train --model fan1-w32-i128"
    figs = card["figures"]
    assert figs["faces"] == 6 and figs["data"] == "faces"
    assert figs["nme_io"] != 0.1 * 100  # measured, not copied from the training card
    assert figs["torch_cpu_ms_p50"] > 0 and card["macs"] > 0
    reloaded = read_checkpoint(out)
    assert reloaded.config == create_model("fan1-w32-i128", weights=False).config


def test_bundle_refuses_names_that_shadow_variants(tmp_path: Path):
    with pytest.raises(ConfigError):
        bundle(tmp_path / "x.safetensors", "fan2-w64-i128", tmp_path, folder=tmp_path, measure=measure_card)


def test_table_lists_every_variant_with_counted_macs():
    rows = zoo_rows()
    names = [r["model"] for r in rows]
    assert {"fan4", "fan2", "fan1", "default"} <= set(names)
    fan4 = rows[names.index("fan4")]
    assert fan4["parameters"] == 23_820_176 and abs(fan4["macs"] / 1e9 - 25.2) < 0.3
    md = format_table(rows, markdown=True)
    assert md.splitlines()[0].startswith("| model |") and len(md.splitlines()) == len(rows) + 2


@pytest.mark.parametrize("size", [256, 192, 128])
def test_gaussian_refinement_recovers_arbitrary_subcell_points(size: int):
    rng = np.random.default_rng(size)
    points = rng.uniform(8, size - 8, size=(68, 2))
    maps = gaussian_heatmaps(points, size, sigma=1.5)
    decoded, scores = decode_heatmaps(maps[None], size, refine="gaussian")
    np.testing.assert_allclose(decoded[0], points, atol=1e-3)
    quarter, _ = decode_heatmaps(maps[None], size, refine="quarter")
    assert np.abs(quarter[0] - points).max() > 0.1  # the quarter step alone cannot do this


def test_docs_table_is_the_registry_table():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "zoo.md").read_text()
    assert format_table(zoo_rows(), markdown=True) in docs, "docs/zoo.md is stale: regenerate with `fan-edge models --markdown`"


# --- the weights record in bundled cards; where bundle writes; no machine paths --------------------------------------

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "fan_edge" / "models" / "weights"


def _fake_measure(checkpoint, data, threads=2):
    return {"parameters": 1, "macs": 1, "figures": {"data": Path(data).name, "nme_io": 9.0}}


def test_bundled_cards_hold_no_machine_paths():
    cards = sorted(REPO_WEIGHTS.glob("*.json"))
    assert cards
    for card in cards:
        assert absolute_paths(json.loads(card.read_text())) == [], f"{card.name} holds an absolute path"


def test_bundle_writes_paths_relative_to_the_data_root(tmp_path: Path, monkeypatch):
    from fan_edge.models import Weights

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    afw = root / "300w" / "afw"
    train = root / "300w" / "helen_train"
    run = tmp_path / "runs" / "stage1" / "final.safetensors"
    card = {
        "recipe": f"fan-train --model {run} --data {train} --val {afw} --out=/somewhere/else/r2 && fan-edge bundle x",
        "data": {"train": [str(train), "runs/lfw-labels"], "validation": str(afw),
                 "sources": [{"folder": str(train), "faces": 3}, {"folder": "/home/alice/faces/lfw", "faces": 2}]},
        "train_spec": {"data": [str(train)], "val": str(afw), "out": str(tmp_path / "runs" / "s2"), "teacher": None},
        "description": "2 stacks, w/o tricks: 1/2 the MACs",
    }
    model = create_model("fan1-w32-i128", weights=Weights(crop={"reference_scale": 280.0, "center_shift": 0.0}, refine="gaussian"))
    ckpt = save_checkpoint(model, tmp_path / "run.safetensors", card)
    out = bundle(ckpt, "tiny-paths", afw, folder=tmp_path / "zoo", data_root=root, measure=_fake_measure)
    text = out.with_suffix(".json").read_text()
    written = json.loads(text)
    assert absolute_paths(written) == [] and str(tmp_path) not in text
    assert written["recipe"] == ("fan-train --model runs/stage1/final.safetensors --data 300w/helen_train --val 300w/afw "
                                 "--out=r2 && fan-edge bundle x")
    assert written["data"]["train"] == ["300w/helen_train", "runs/lfw-labels"] and written["data"]["validation"] == "300w/afw"
    assert [s["folder"] for s in written["data"]["sources"]] == ["300w/helen_train", "lfw"]
    assert written["train_spec"]["out"] == "runs/s2" and written["description"] == card["description"]
    # the weights record: crop and refinement beside the architecture, read back as the weights'
    assert written["refine"] == "gaussian" and written["crop"]["reference_scale"] == 280.0 and "crop" not in written["config"]
    reloaded = create_model(out)
    assert reloaded.weights.refine == "gaussian" and reloaded.weights.crop == model.weights.crop
    # without --data-root: relative to the folder above the evaluation faces
    default_root = json.loads(bundle(ckpt, "tiny-paths2", afw, folder=tmp_path / "zoo", measure=_fake_measure).with_suffix(".json").read_text())
    assert default_root["data"]["validation"] == "afw" and default_root["data"]["train"][0] == "helen_train"


def test_portable_card_keeps_text_and_relative_paths():
    card = {"a": "https://example.org/x/y", "b": "../shared/data/300w/afw", "c": ["and/or", "1 / 2"], "d": 3, "e": None}
    assert portable_card(card, "/data", "/work") == card
    assert portable_card({"p": "C:\\Users\\bob\\faces\\afw"}, None, "/work") == {"p": "afw"}


def test_bundle_needs_a_folder_outside_a_development_checkout(tmp_path: Path, monkeypatch):
    from fan_edge.models import bundle as bundle_module

    assert development_weights_folder() == REPO_WEIGHTS  # this checkout: the package's folder is the zoo
    monkeypatch.setattr(bundle_module, "development_weights_folder", lambda: None)
    with pytest.raises(ConfigError, match="--out"):
        bundle(tmp_path / "x.safetensors", "tiny-test", tmp_path, measure=measure_card)


def test_bundle_help_says_where_it_writes():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fan_edge.cli", "bundle", "--help"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--out DIR" in done.stdout and "development checkout" in done.stdout and "--data-root" in done.stdout


# --- a corrupt card ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{ not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ("{}", "no \"config\""),
        ('{"config": {"stacks": "two"}}', "bad config"),
        ('{"config": {"stacks": 1}, "refine": "soft"}', "bad config"),
        ('{"config": {"stacks": 1, "crop": {"zoom": 1}}}', "bad config"),
        ('{"config": {"stacks": 1}, "name": "fan4"}', "shadow"),
        ('{"config": {"stacks": 1}, "name": 4}', "name"),
        ('{"config": {"stacks": 1}, "description": ["x"]}', "description"),
        (b"\xff\xfe{", "unreadable"),
    ],
)
def test_corrupt_cards_are_refused_in_one_line(tmp_path: Path, text, reason):
    from fan_edge.models.registry import read_zoo_card

    card = tmp_path / "broken-300w.json"
    card.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=reason) as excinfo:
        read_zoo_card(card, tmp_path)
    assert "\n" not in str(excinfo.value)


def test_a_corrupt_card_leaves_only_its_model_unavailable(tmp_path: Path):
    """A copy of the weights folder with one card not JSON and one without its config: import, `fan-edge models` and
    the other models work; the two are listed as unavailable with their reason, each warned once in one line."""
    import subprocess
    import sys

    zoo = tmp_path / "weights"
    zoo.mkdir()
    for f in REPO_WEIGHTS.iterdir():
        if f.suffix == ".json":
            (zoo / f.name).write_text(f.read_text())
        elif f.suffix == ".safetensors":
            (zoo / f.name).symlink_to(f)
    (zoo / "fan1-w64-i64-300w.json").write_text("{ not json")
    card = json.loads((zoo / "fan4-w64-i128-300w.json").read_text())
    del card["config"]
    (zoo / "fan4-w64-i128-300w.json").write_text(json.dumps(card))
    code = f"""
import contextlib, io, json, importlib.resources as r
from pathlib import Path
files = r.files
r.files = lambda pkg: Path({str(zoo)!r}) if pkg == "fan_edge.models.weights" else files(pkg)
import fan_edge.models as m
from fan_edge.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["models"])
try:
    m.create_model("fan1-w64-i64-300w")
    refused = ""
except Exception as exc:
    refused = str(exc)
print(json.dumps({{"code": code, "table": out.getvalue(), "unavailable": m.unavailable_models(), "default": m.DEFAULT_NAME,
                  "refused": refused, "other": m.create_model("fan2-w64-i64-300w").weights.refine}}))
"""
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 0 and result["default"] == "fan2-w64-i128-lfw" and result["other"] == "gaussian"
    assert set(result["unavailable"]) == {"fan1-w64-i64-300w", "fan4-w64-i128-300w"}
    assert "not valid JSON" in result["unavailable"]["fan1-w64-i64-300w"]
    assert "config" in result["unavailable"]["fan4-w64-i128-300w"]
    assert "unavailable" in result["refused"] and "not valid JSON" in result["refused"]
    table = result["table"].splitlines()
    assert any(line.startswith("fan1-w64-i64-300w") and "unavailable: model card" in line for line in table)
    assert any(line.startswith("fan2-w64-i128-300w") for line in table)
    warnings = [line for line in done.stderr.splitlines() if "unavailable" in line]
    assert len(warnings) == 2 and all(w.startswith("fan-edge zoo: ") for w in warnings), done.stderr


def test_bundle_can_store_half_precision_weights_measured_as_stored(tmp_path: Path):
    """--storage fp16: half the file, loading as fp32, and the card measured on the rounded weights, not the originals."""
    from safetensors import safe_open

    model = create_model("fan1-w32-i64", weights=False)
    ckpt = save_checkpoint(model, tmp_path / "w.safetensors", {"recipe": "fan-train --model fan1-w32-i64"})
    seen = []

    def measure(path, data):
        seen.append(read_checkpoint(path).state_dict["conv1.weight"])
        return _fake_measure(path, data)

    out = bundle(ckpt, "tiny-half", tmp_path, folder=tmp_path / "zoo", storage="fp16", measure=measure)
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("conv1.weight").dtype == torch.float16
    assert out.stat().st_size < 0.6 * ckpt.stat().st_size
    rounded = model.state_dict()["conv1.weight"].half().float()
    torch.testing.assert_close(seen[0].float(), rounded, rtol=0, atol=0)
    loaded = create_model(str(out))
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.state_dict()["conv1.weight"], rounded, rtol=0, atol=0)
    assert json.loads(out.with_suffix(".json").read_text())["storage"] == "fp16"
    with pytest.raises(ConfigError, match="storage"):
        bundle(ckpt, "tiny-bad", tmp_path, folder=tmp_path / "zoo", storage="int4", measure=measure)
    assert len(seen) == 1  # refused before anything was measured
