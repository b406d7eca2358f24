"""Accuracy and latency measurement: evaluation, benchmark tables and device profiling."""
