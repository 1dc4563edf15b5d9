"""Models the GPU check serves: a random-weights ResNet-50 config, and a network that trips a device-side assert.

A lent GPU machine reaches no network, so torchvision's ResNet-50 weights cannot be downloaded there:
``write_resnet`` writes its architecture with a random state dict as a bring-your-own config
(SCORECAM_CUSTOM_MODELS, what `scorecam serve` reads); timings and map agreement need no trained weights.

``AssertNet`` indexes past the end of its logits, on the device, when the batch's mean input is
above ``TRIGGER_MEAN`` (an all-white image: ImageNet-normalised white is about 2.4): on CUDA that is
a device-side assert, which poisons the CUDA context (the worker must exit and be replaced); on a
CPU the same index raises an ordinary IndexError. Photos and the warm-up's inputs stay below it.
The service offers no way to load such a module (a TorchScript config cannot be explained: no
forward hooks on a ScriptModule), so ``bench/gpu_serve_fault.py`` serves it through
``app.server.serve`` with a registry holding ``AssertEntry``, as tests/api/serve_tiny.py serves the
tiny model: the same HTTP process, worker process and supervisor as `scorecam serve`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from app.models import LoadedModel, Preprocessing

ASSERTNET = "assertnet"
ASSERTNET_SIZE = 64
ASSERTNET_LAYER = "features.2"
TRIGGER_MEAN = 2.0
OUT_OF_RANGE = 1_000_000


class AssertNet(nn.Module):
    """conv-bn-relu (16 channels), global pool, linear; an out-of-range index on a bright input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        # index 0 normally, OUT_OF_RANGE on a bright input: computed on the device, no host sync
        index = (x.float().mean() > TRIGGER_MEAN).long().reshape(1) * OUT_OF_RANGE
        return logits + 0.0 * logits.reshape(-1)[index].sum()


class AssertEntry:
    """A registry entry (the ModelEntry protocol) that builds an AssertNet."""

    name = ASSERTNET

    def load(self, weights: object = "default", allow_download: bool = False) -> LoadedModel:
        return LoadedModel(
            name=ASSERTNET,
            module=AssertNet(),
            preprocessing=Preprocessing(input_size=ASSERTNET_SIZE, resize_size=ASSERTNET_SIZE),
            labels=[f"class {i}" for i in range(10)],
            default_layer=ASSERTNET_LAYER,
        )


def write_resnet(folder: Path, tiny: bool = False) -> tuple[str, Path]:
    """torchvision's ResNet-50 (ResNet-18 at 64x64 in the CPU dry run) with random weights (seed 0), as a
    state dict and its JSON config; returns the model's name and the config's path."""
    import torchvision

    arch, size = ("resnet18", 64) if tiny else ("resnet50", 224)
    name = f"{arch}_random"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), folder / f"{name}.pth")
    config = {
        "name": name,
        "weights": f"{name}.pth",
        "architecture": arch,
        "num_classes": 1000,
        "input_size": size,
        "resize_size": size,
        "target_layer": "layer4",
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return name, path
