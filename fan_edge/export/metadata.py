"""From a PyTorch FAN and the export options to the artifact's :class:`~fan_edge.runtime.contract.ModelContract`."""

from __future__ import annotations

import json
import math
from typing import Any

from .. import __version__
from ..runtime.contract import MAX_CARD_BYTES, MAX_DEPTH, OUTPUT_ROLES, ModelContract, json_depth
from ..runtime.scheme import MIRROR_PAIRS

INPUT_NAME = "input"
# The heatmaps tensor keeps this name inside a landmarks graph too (the parity report reads it there).
HEATMAPS_NAME = "heatmaps"


def plain_card(card: Any) -> dict[str, Any]:
    """A model card reduced to plain, bounded JSON that the contract accepts.

    The card comes from the checkpoint's ``.json`` (anyone's file): one that is
    too large, too deep, or not plain JSON (NaN, odd types) keeps its short
    scalar fields only, so that an odd card never stops an export.
    """
    if not isinstance(card, dict):
        return {}
    try:
        text = json.dumps(card, default=str, allow_nan=False)
        if len(text) <= MAX_CARD_BYTES and json_depth(card) < MAX_DEPTH:
            return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        pass
    return {str(k): v for k, v in card.items() if _short_scalar(v)}


def _short_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return abs(value) < 10**18
    return isinstance(value, str) and len(value) < 1000


def build_contract(model: Any, *, model_name: str, card: dict[str, Any], target: str, precision: str, outputs: str) -> ModelContract:
    """The contract of exporting ``model`` (a FAN) to ``target`` at ``precision`` with ``outputs``: its architecture,
    and the crop and refinement of its weights (``model.weights``)."""
    cfg = model.config
    k = cfg.num_landmarks
    return ModelContract(
        input_size=cfg.input_size,
        heatmap_size=cfg.heatmap_size,
        outputs=outputs,
        refine=model.weights.refine,
        num_landmarks=k,
        crop=model.weights.crop,
        layout="NCHW",
        channel_order="RGB",
        value_range=(0.0, 1.0),
        input_name=INPUT_NAME,
        output_names=OUTPUT_ROLES[outputs],
        batch=None,
        mirror_pairs=MIRROR_PAIRS if k == 68 else (),
        model=model_name,
        config=json.loads(json.dumps(cfg.to_dict())),
        card=plain_card(card),
        precision=precision,
        target=target,
        fan_edge_version=__version__,
    )
