from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from app.errors import InvalidOption
from app.models import LoadedModel
from app.models.embedded import ARCHITECTURE, packaged_weights_path, remap_by_position

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_packaged_file_has_timm_tensors_in_order() -> None:
    packaged = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(ARCHITECTURE, pretrained=False).state_dict()
    assert len(packaged) == len(reference) == 296
    assert [t.shape for t in packaged.values()] == [t.shape for t in reference.values()]
    assert next(iter(packaged)) == "_conv_stem.weight"  # efficientnet-pytorch naming, not timm's


def test_outputs_equal_timm_with_the_positionally_renamed_dict(lite0: LoadedModel, cat_photo: Image.Image) -> None:
    packaged = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(ARCHITECTURE, pretrained=False).eval()
    reference.load_state_dict(dict(zip(reference.state_dict(), packaged.values(), strict=True)))
    x = lite0.preprocessing.eval_tensor(cat_photo)[None]
    with torch.inference_mode():
        assert torch.equal(lite0.module(x), reference(x))


def test_metadata(lite0: LoadedModel) -> None:
    assert lite0.name == "efficientnet_lite0"
    assert not lite0.module.training
    assert next(lite0.module.parameters()).device.type == "cpu"
    assert lite0.num_classes == len(lite0.labels) == 1000
    assert lite0.labels[281] == "tabby"
    assert lite0.default_layer == "bn2"
    pre = lite0.preprocessing
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, 256, "bicubic")
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)


def test_default_layer_is_1280_by_7_by_7(lite0: LoadedModel) -> None:
    shapes: list[torch.Size] = []
    handle = lite0.resolve_layer("bn2").register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.inference_mode():
            lite0.module(torch.zeros(1, 3, 224, 224))
    finally:
        handle.remove()
    assert shapes == [torch.Size([1, 1280, 7, 7])]


def test_classifies_the_cat(lite0: LoadedModel, cat_photo: Image.Image) -> None:
    with torch.inference_mode():
        top = int(lite0.module(lite0.preprocessing.eval_tensor(cat_photo)[None]).argmax())
    assert top in CAT_CLASSES, lite0.labels[top]


def test_top1_on_the_shared_photos(lite0: LoadedModel, samples: list) -> None:
    # channels_last makes depthwise convolutions about a third faster on the CPU; a copy keeps
    # the session's module as loaded.
    module = copy.deepcopy(lite0.module).to(memory_format=torch.channels_last)
    x = torch.stack([lite0.preprocessing.eval_tensor(Image.open(s.path)) for s in samples])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        predicted = torch.cat([module(batch).argmax(1) for batch in x.split(50)])
    correct = sum(int(p) == s.class_index for p, s in zip(predicted, samples, strict=True))
    assert len(samples) == 100
    assert correct >= 85, f"{correct}/100 correct"


def test_a_timm_named_state_dict_loads_as_is(registry, tmp_path: Path) -> None:
    source = timm.create_model(ARCHITECTURE, pretrained=False)
    torch.save(source.state_dict(), tmp_path / "lite0.pth")
    loaded = registry.load("efficientnet_lite0", weights=tmp_path / "lite0.pth")
    assert torch.equal(loaded.module.conv_stem.weight, source.conv_stem.weight)


def test_remap_names_the_tensor_whose_shape_differs() -> None:
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4))
    source = OrderedDict(x=torch.ones(2, 3), y=torch.ones(5))
    with pytest.raises(InvalidOption, match=r"#1 'y' has shape \(5,\), but 'b' needs \(4,\)"):
        remap_by_position(source, target)
    with pytest.raises(InvalidOption, match="hold 1 tensors"):
        remap_by_position(OrderedDict(x=torch.ones(2, 3)), target)
    assert list(remap_by_position(OrderedDict(x=torch.ones(2, 3), y=torch.ones(4)), target)) == ["a", "b"]
