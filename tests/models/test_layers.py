from __future__ import annotations

import pytest
import torch

from app.errors import InvalidOption
from app.models.layers import feature_layer, targetable_layers

from .nets import TinyNet, Tokens


def test_targetable_layers_rule() -> None:
    assert targetable_layers(TinyNet()) == [
        "stem", "stem.0", "stem.1",
        "blocks", "blocks.0", "blocks.0.conv", "blocks.0.bn",
        "blocks.1", "blocks.1.conv", "blocks.1.bn",
        "extras.0",
    ]  # fmt: skip


def test_feature_layer_is_the_outermost_producer_of_forward_features() -> None:
    net = TinyNet()
    assert feature_layer(net, 32, net.forward_features) == "blocks"


def test_feature_layer_without_forward_features_skips_pooled_maps() -> None:
    assert feature_layer(TinyNet(), 32) == "blocks"  # pool's 1 x 1 output does not count


def test_feature_layer_leaves_batchnorm_statistics_alone() -> None:
    net = TinyNet().train()
    before = net.blocks[0].bn.running_mean.clone()
    feature_layer(net, 32, lambda x: net.forward_features(x + 1))
    assert torch.equal(net.blocks[0].bn.running_mean, before) and net.training


def test_token_features_are_refused() -> None:
    net = Tokens()
    with pytest.raises(InvalidOption, match="not a 4-D"):
        feature_layer(net, 32, net.forward_features)
