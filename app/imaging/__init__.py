"""Image work shared by the service and the CLI: decoding uploads safely, rendering maps as PNGs.

Pillow and numpy only (no torch), so the HTTP process can use it.
"""
