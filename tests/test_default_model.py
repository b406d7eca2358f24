"""The bundled default model, on real faces: its card's figures must be what it scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from fan_edge.evaluation import evaluate_model
from fan_edge.models import create_model, get_entry


def test_default_is_a_trained_zoo_model():
    entry = get_entry("default")
    assert entry.trained, "the bundled default has no weights"
    card = entry.card()
    assert card["default"] is True
    assert card["recipe"].startswith(("fan-train", "fan-distill", "fan-edge label"))  # labelling is a first step too
    assert {"nme_io", "nme_box", "auc7", "fr7", "torch_cpu_ms_p50"} <= set(card["figures"])


def test_default_scores_its_card_on_afw(data_dir: Path):
    entry = get_entry("default")
    figures = entry.card()["figures"]
    model = create_model("default")
    scores = evaluate_model(model, data_dir / figures["data"]).scores.as_percent()
    assert scores["faces"] == figures["faces"]
    for key in ("nme_io", "nme_box", "auc7", "fr7"):
        assert scores[key] == pytest.approx(figures[key], abs=0.02), key
