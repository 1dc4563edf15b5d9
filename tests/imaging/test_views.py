"""The pixel views the HTTP process computes without torch are torchvision's, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import v2 as T

from app.imaging.views import ImageViews
from app.models import Preprocessing


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (256, 256), (224, 224), (255, 257), (1000, 120)])
@pytest.mark.parametrize(("input_size", "resize_size"), [(224, 256), (224, 224), (240, 275)])
def test_the_views_are_torchvisions_resize_and_crop(
    interpolation: str, size: tuple[int, int], input_size: int, resize_size: int
) -> None:
    views = ImageViews(input_size, resize_size, interpolation)
    mode = T.InterpolationMode(interpolation)
    image = noise(*size)
    evaluation = T.Compose([T.Resize(resize_size, mode, antialias=True), T.CenterCrop(input_size)])(image)
    whole = T.Resize([input_size, input_size], mode, antialias=True)(image)
    assert np.array_equal(np.asarray(views.eval_image(image)), np.asarray(evaluation))
    assert np.array_equal(np.asarray(views.full_image(image)), np.asarray(whole))


def test_a_models_preprocessing_crosses_the_pipe_as_plain_views() -> None:
    preprocessing = Preprocessing(input_size=240, resize_size=275, interpolation="bicubic", mean=(0.5, 0.5, 0.5))
    views = preprocessing.views()
    assert type(views) is ImageViews and views.views() == views
    assert (views.input_size, views.resize_size, views.interpolation, views.mean, views.std) == (
        240, 275, "bicubic", preprocessing.mean, preprocessing.std,
    )  # fmt: skip
