from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.errors import InvalidOption
from app.models import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (224, 224), (100, 60)])
@pytest.mark.parametrize("view", ["eval_tensor", "full_tensor"])
def test_views_are_float32_s_by_s(size: tuple[int, int], view: str) -> None:
    pre = Preprocessing(input_size=224, resize_size=256)
    x = getattr(pre, view)(noise_image(*size))
    assert x.shape == (3, 224, 224)
    assert x.dtype == torch.float32


def test_full_tensor_keeps_an_s_by_s_image_exactly() -> None:
    pre = Preprocessing(input_size=224, resize_size=256, interpolation="bicubic")
    img = noise_image(224, 224)
    pixels = pre.denormalize(pre.full_tensor(img)) * 255
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()
    assert torch.equal(pixels.round(), expected)
    assert (pixels - expected).abs().max() < 1e-3


def test_full_tensor_covers_the_whole_image_without_crop() -> None:
    # Left half black, right half white: no crop keeps the border columns' colours.
    img = Image.new("RGB", (400, 200), "black")
    img.paste((255, 255, 255), (200, 0, 400, 200))
    pre = Preprocessing(input_size=64, resize_size=64)
    x = pre.denormalize(pre.full_tensor(img))
    assert x[:, :, 0].max() < 0.01 and x[:, :, -1].min() > 0.99
    assert x[:, :, :30].max() < 0.01 and x[:, :, 34:].min() > 0.99


def test_eval_tensor_centre_crops_after_resizing_the_shorter_side() -> None:
    # A 512x256 image: shorter side -> 256 keeps it whole in height; the crop takes the centre.
    img = Image.new("RGB", (512, 256), "black")
    img.paste((255, 0, 0), (128, 0, 384, 256))  # the centre 256 columns are red
    pre = Preprocessing(input_size=224, resize_size=256, interpolation="nearest")
    x = pre.denormalize(pre.eval_tensor(img))
    assert torch.allclose(x[0], torch.ones(224, 224), atol=1e-5)
    assert x[1:].abs().max() < 1e-5


@pytest.mark.parametrize("mean, std", [(IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
def test_normalisation_values(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    pre = Preprocessing(input_size=8, resize_size=8, mean=mean, std=std)
    x = pre.full_tensor(Image.new("RGB", (8, 8), (255, 0, 128)))
    for c, value in enumerate((1.0, 0.0, 128 / 255)):
        assert torch.allclose(x[c], torch.full((8, 8), (value - mean[c]) / std[c]), atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_become_rgb(mode: str) -> None:
    assert Preprocessing().eval_tensor(noise_image(50, 40, mode)).shape == (3, 224, 224)


def test_lists_from_json_become_tuples() -> None:
    pre = Preprocessing(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])  # type: ignore[arg-type]
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)
    assert hash(pre) == hash(Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": 224.0}, "input_size"),
        ({"input_size": 300, "resize_size": 256}, "resize_size"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"std": "abc"}, "std"),
    ],
)
def test_bad_values_are_invalid_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        Preprocessing(**kwargs)  # type: ignore[arg-type]
