"""Structured pruning: channels removed with torch-pruning's DepGraph, whole stacks dropped, then distillation.

``prune_model`` does the surgery on an nn.Module; ``run_prune`` is ``fan-prune``:
prune, save, fine-tune against the unpruned model, and write the cards.
"""

from .structured import PruneReport, drop_stacks, group_names, group_widths, prune_channels, prune_model

__all__ = ["PruneReport", "drop_stacks", "group_names", "group_widths", "prune_channels", "prune_model"]
