"""The serving core: image decoding, the device worker and its queue, rendering, metrics."""
