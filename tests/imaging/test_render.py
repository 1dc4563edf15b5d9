"""Rendering: maps resized to the image, grayscale heatmap, jet overlay, raw float32 round trip."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging.render import decode_raw, heatmap_png, jet, overlay_png, raw_map, resize_map


def test_resize_keeps_range_and_orientation() -> None:
    cam = torch.zeros(7, 7)
    cam[0, 6] = 1.0  # top right
    array = resize_map(cam, width=451, height=300)
    assert array.shape == (300, 451) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    assert np.unravel_index(array.argmax(), array.shape)[1] > 400
    same = resize_map(torch.rand(224, 224), 224, 224)
    assert same.shape == (224, 224)


@pytest.mark.parametrize(("value", "rgb"), [(0.0, (0, 0, 128)), (0.5, (128, 255, 128)), (1.0, (128, 0, 0))])
def test_jet_ends_and_middle(value: float, rgb: tuple[int, int, int]) -> None:
    assert tuple(int(c) for c in jet(np.array([value], dtype=np.float32))[0]) == pytest.approx(rgb, abs=1)


def test_pngs_have_the_image_size(cat_photo: Image.Image) -> None:
    array = resize_map(torch.rand(7, 7), cat_photo.width, cat_photo.height)
    heat = Image.open(io.BytesIO(base64.b64decode(heatmap_png(array))))
    over = Image.open(io.BytesIO(base64.b64decode(overlay_png(array, cat_photo))))
    assert heat.size == over.size == cat_photo.size
    assert heat.mode == "L" and over.mode == "RGB"
    assert np.abs(np.asarray(heat) / 255.0 - array).max() <= 0.5 / 255 + 1e-6


def test_raw_round_trip_is_little_endian_float32() -> None:
    array = np.random.default_rng(0).random((3, 5), dtype=np.float32)
    raw = raw_map(array)
    assert raw.shape == (3, 5) and raw.dtype == "float32"
    assert base64.b64decode(raw.data) == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_raw(raw), array)
