"""Bundled zoo weights (safetensors) and their model cards (JSON)."""
