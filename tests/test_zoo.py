"""The zoo: bundling measures figures afresh; the registry table reads them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fan_edge.bench.zoo import bundle, format_table, zoo_rows
from fan_edge.data.heatmaps import gaussian_heatmaps
from fan_edge.errors import ConfigError
from fan_edge.models import create_model, read_checkpoint, save_checkpoint
from fan_edge.runtime.decode import decode_heatmaps


def test_bundle_measures_the_card_on_the_given_faces(data_dir: Path, tmp_path: Path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for jpg in sorted((data_dir / "afw").glob("*.jpg"))[:6]:
        (faces / jpg.name).symlink_to(jpg)
        (faces / jpg.with_suffix(".pts").name).symlink_to(jpg.with_suffix(".pts"))
    ckpt = save_checkpoint(create_model("fan1-w32-i128", weights=False), tmp_path / "run.safetensors",
                           {"recipe": "fan-train --model fan1-w32-i128", "figures": {"nme_io": 0.1}})
    out = bundle(ckpt, "tiny-test", faces, default=True, folder=tmp_path / "zoo")
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
        bundle(tmp_path / "x.safetensors", "fan2-w64-i128", tmp_path, folder=tmp_path)


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
