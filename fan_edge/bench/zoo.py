"""Moved: bundling is :mod:`fan_edge.models.bundle`, the registry table :mod:`fan_edge.models.table`.

Kept so that imports of the old place still work; new code imports from
``fan_edge.models``.
"""

from __future__ import annotations

from ..models.bundle import bundle, measure_card
from ..models.table import format_table, model_summary, zoo_rows

__all__ = ["bundle", "format_table", "measure_card", "model_summary", "zoo_rows"]
