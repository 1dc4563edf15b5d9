"""The explanation methods by name, importable without torch (the CLI parses its flags with it).

``app.cam.METHODS`` maps the same names to their classes; tests check the two agree.
"""

from __future__ import annotations

METHOD_NAMES: tuple[str, ...] = ("scorecam", "gradcam", "gradcam++", "recipro-cam")
BATCHED_METHODS: tuple[str, ...] = ("scorecam", "recipro-cam")  # forward batches shared across requests
