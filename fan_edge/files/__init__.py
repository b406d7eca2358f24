"""Face files on disk, torch-free: images (decoded under header checks), 300-W .pts, and folders of both.

What the runtime's tools read (``predict``, the device timing and soak), and
what :mod:`fan_edge.data` builds its datasets on.
"""
