"""What int8 is calibrated on: the masked inputs Score-CAM would actually forward, of real photos.

Post-training quantisation fixes one int8 range per activation from the inputs it is shown, so
they must look like what the runtime will serve: ``X ∘ H_k`` (the photo times an upsampled,
min-max normalised activation map of the target layer, built by the engine's own
``app.cam.channels``), plus the plain photos (the base forward of every explanation). The photos
are scikit-image's bundled ones (chelsea, coffee, astronaut, rocket, horse) when it is installed
(the ``int8`` extra installs it), else generated smooth images; callers with the model's own
preprocessing pass theirs (``Calibration.from_photos``).

Example::

    calibration = Calibration.from_photos(loaded.preprocessing.eval_tensor, layer="bn2")
    InferenceModel(module, precision="int8", runtime="openvino", calibration=calibration)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from app.cam.channels import build_masked_inputs, plan_channels, upsample
from app.errors import InvalidOption

log = logging.getLogger(__name__)
PHOTOS: tuple[str, ...] = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "horse.png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLES = 300  # masked inputs; NNCF's default subset is 300 too
CHECK_PER_IMAGE = 32  # held-out masked inputs per photo for the agreement check (never calibrated on)


def skimage_photos() -> list[Image.Image]:
    """scikit-image's bundled photos, or [] when it is not installed."""
    try:
        from skimage import data
    except ImportError:
        return []
    folder = Path(data.__file__).parent
    return [Image.open(folder / name).convert("RGB") for name in PHOTOS if (folder / name).is_file()]


def _default_preprocess(side: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Image.Image], torch.Tensor]:
    def preprocess(img: Image.Image) -> torch.Tensor:
        short = min(img.size)
        left, top = (img.width - short) // 2, (img.height - short) // 2
        crop = img.crop((left, top, left + short, top + short)).resize((side, side), Image.Resampling.BICUBIC)
        x = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).reshape(side, side, 3)
        x = x.permute(2, 0, 1).float() / 255
        return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    return preprocess


def generated_photos(n: int, side: int) -> torch.Tensor:
    """Smooth seeded images in roughly a normalised photo's range (when no photo package is there)."""
    generator = torch.Generator().manual_seed(2024)
    low = torch.randn(n, 3, 6, 6, generator=generator)
    return F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False).clamp(-2.2, 2.6)


def _generated(side: int) -> torch.Tensor:
    log.warning(
        "scikit-image is not installed: int8 is calibrated on generated images "
        "(pip install 'scorecam-service[int8]' for real photos)"
    )
    return generated_photos(len(PHOTOS), side)


@dataclass(frozen=True)
class CheckSet:
    """Held-out real inputs for int8's agreement check: the photos (first rows), then masked copies.

    owner: the photo of each row; maps: Up(A_k) of each masked row (for Score-CAM's sum).
    """

    inputs: torch.Tensor
    owner: torch.Tensor
    maps: torch.Tensor

    @property
    def photos(self) -> int:
        return int(self.owner.max()) + 1


@dataclass(frozen=True)
class Calibration:
    """Photos (preprocessed, ``[N, 3, S, S]``) and the target layer whose maps mask them.

    ``layer=None`` takes the last layer with a spatial output (the usual Score-CAM layer).
    ``samples`` masked inputs in all, spread evenly over the photos; the plain photos are added.
    """

    images: torch.Tensor
    layer: str | None = None
    samples: int = SAMPLES
    source: str = "given"
    _key: list[str] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_photos(
        cls, preprocess: Callable[[Image.Image], torch.Tensor], layer: str | None = None, samples: int = SAMPLES
    ) -> Calibration:
        """scikit-image's photos through the model's own preprocessing (the one to use)."""
        photos = skimage_photos()
        if not photos:
            side = int(preprocess(Image.new("RGB", (256, 256))).shape[-1])
            return cls(_generated(side), layer, samples, "generated")
        return cls(torch.stack([preprocess(p) for p in photos]), layer, samples, "scikit-image")

    @classmethod
    def default(
        cls, side: int, layer: str | None = None, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> Calibration:
        """scikit-image's photos, centre-cropped to ``side`` and normalised with ``mean``/``std``
        (ImageNet's by default: a model normalised otherwise should use ``from_photos``)."""
        photos = skimage_photos()
        if not photos:
            return cls(_generated(side), layer, source="generated")
        preprocess = _default_preprocess(side, mean, std)
        return cls(torch.stack([preprocess(p) for p in photos]), layer, source="scikit-image")

    def key(self) -> str:
        """A digest of everything the quantised model depends on besides the module."""
        if not self._key:
            shape = tuple(self.images.shape)
            digest = hashlib.sha256(f"{self.layer}:{self.samples}:{CHECK_PER_IMAGE}:{shape}".encode())
            digest.update(self.images.detach().float().cpu().contiguous().numpy().tobytes())
            self._key.append(digest.hexdigest()[:16])
        return self._key[0]

    def inputs(self, module: nn.Module, calibrate: bool = True) -> tuple[torch.Tensor, CheckSet]:
        """(calibration inputs ``[M, 3, S, S]``, the held-out check set).

        Calibration: every plain photo and ``samples`` masked copies; check: every plain photo (its
        first rows) and ``CHECK_PER_IMAGE`` other masked copies of each (channels calibration did
        not use). ``calibrate=False`` (the quantised model is cached) builds the check inputs only.
        """
        images = self.images.detach().float().cpu()
        layer = self.layer or last_spatial_layer(module, images[:1])
        per_image = max(1, self.samples // images.shape[0])
        generator = torch.Generator().manual_seed(0)
        chunks, check, maps = [images], [images], []
        owners = list(range(images.shape[0]))
        for j, (x, acts) in enumerate(zip(images, activations(module, layer, images), strict=True)):
            plan = plan_channels(acts, (x.shape[-2], x.shape[-1]))
            order = torch.randperm(plan.total, generator=generator).tolist()
            held_out = order[:CHECK_PER_IMAGE]  # a layer with few channels: calibration sees them too
            chosen = order[CHECK_PER_IMAGE:][:per_image] or order[:per_image]
            chunks += [build_masked_inputs(x[None], plan, i, i + 1) for i in chosen] if calibrate else []
            check += [build_masked_inputs(x[None], plan, i, i + 1) for i in held_out]
            owners += [j] * len(held_out)
            maps += [upsample(plan.unique[held_out], (x.shape[-2], x.shape[-1]))[:, 0]] if held_out else []
        side = images.shape[-2:]
        up = torch.cat(maps) if maps else images.new_zeros(0, *side)
        return torch.cat(chunks), CheckSet(torch.cat(check), torch.tensor(owners), up)


def activations(module: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """``layer``'s output ``[N, K, h, w]`` for ``images`` (fp32, on the CPU)."""
    modules = dict(module.named_modules())
    if layer not in modules:
        raise InvalidOption(f"calibration layer {layer!r} is not a layer of the model")
    store: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda m, i, o: store.append(o.detach()))
    try:
        with torch.inference_mode():
            module(images)
    finally:
        handle.remove()
    return store[0].float().cpu()


def last_spatial_layer(module: nn.Module, probe: torch.Tensor) -> str:
    """The last module (in call order) whose output is ``[N, K, h, w]`` with h·w > 1."""
    seen: list[str] = []
    handles = []
    for name, sub in module.named_modules():
        if name and not list(sub.children()):

            def hook(m: nn.Module, i: object, o: object, name: str = name) -> None:
                if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-1] * o.shape[-2] > 1:
                    seen.append(name)

            handles.append(sub.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            module(probe)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise InvalidOption("no layer with a spatial output to build calibration masks from; pass Calibration(layer=...)")
    return seen[-1]
