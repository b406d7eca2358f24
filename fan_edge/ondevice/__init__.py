"""Device tools: timing (``python -m fan_edge.ondevice.bench``) and the concurrency soak (``fan-edge soak``).

What runs on the device under test beside the runtime, in the runtime-only
install: numpy, one backend and fan-edge's file readers (:mod:`fan_edge.files`),
never torch, the training data pipeline or calibration. Apart from the
runtime itself because an app ships the runtime, not these.
"""
