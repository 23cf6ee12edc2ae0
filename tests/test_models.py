"""Registry contract for split models: every model, shapes, finiteness, gradients, the explicit seam."""
from __future__ import annotations

import pytest
import torch

from splitshield.config import ModelConfig
from splitshield.data.base import DatasetInfo
from splitshield.errors import ConfigError
from splitshield.models import MODELS, build_model

CUTS = {"vgg11_bn": [1, 2, 3, 4], "resnet20": [1, 3, 9]}


def info(channels: int, size: int) -> DatasetInfo:
    return DatasetInfo(name="t", num_classes=5, channels=channels, size=size, mean=(0.5,) * channels,
                       std=(0.25,) * channels)


def test_every_registered_model_has_cut_cases() -> None:
    assert sorted(CUTS) == MODELS.names()


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 48), (3, 64)])
def test_forward_shapes_finite_and_all_parameters_get_gradients(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    for cut in CUTS[name]:
        model = build_model(ModelConfig(name=name, cut=cut, width=0.125), info(channels, size))
        x = torch.rand(2, channels, size, size)
        z = model.edge(x)
        assert z.shape == (2, *model.feature_shape)
        assert model.feature_shape[0] == 8  # the paper's 8-channel bottleneck
        assert ((z >= 0) & (z <= 1)).all(), "bottleneck ends in a sigmoid"
        logits = model.cloud(z)
        assert logits.shape == (2, 5)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{name} cut={cut}: no gradient for {missing[:3]}"


def test_vgg_paper_cut_gives_512_dim_features_on_cifar_and_8x12x12_on_facescrub() -> None:
    cifar = build_model(ModelConfig(name="vgg11_bn", cut=2), info(3, 32))
    assert cifar.feature_shape == (8, 8, 8) and cifar.feature_dim == 512
    face = build_model(ModelConfig(name="vgg11_bn", cut=2), info(3, 48))
    assert face.feature_shape == (8, 12, 12)


def test_resnet_tinyimagenet_preset_cut_gives_2048_dim_features() -> None:
    model = build_model(ModelConfig(name="resnet20", cut=3), info(3, 64))
    assert model.feature_shape == (8, 16, 16)


def test_width_multiplier_shrinks_the_edge() -> None:
    full = build_model(ModelConfig(width=1.0), info(1, 28))
    small = build_model(ModelConfig(width=0.25), info(1, 28))
    count = lambda m: sum(p.numel() for p in m.edge.parameters())  # noqa: E731
    assert count(small) < count(full) / 4


def test_normalisation_lives_in_the_edge() -> None:
    model = build_model(ModelConfig(width=0.125), info(1, 28))
    assert torch.allclose(model.edge[0](torch.full((1, 1, 2, 2), 0.5)), torch.zeros(1, 1, 2, 2))


def test_edge_blocks_end_with_the_transmitted_feature() -> None:
    model = build_model(ModelConfig(width=0.125), info(1, 28)).eval()
    x = torch.rand(3, 1, 28, 28)
    blocks = model.edge.blocks(x)
    assert torch.equal(blocks[-1], model.edge(x))


@pytest.mark.parametrize("name,cut", [("vgg11_bn", 5), ("vgg11_bn", 0), ("resnet20", 4), ("resnet20", 21)])
def test_invalid_cut_is_a_config_error_naming_valid_values(name: str, cut: int) -> None:
    with pytest.raises(ConfigError, match="valid"):
        build_model(ModelConfig(name=name, cut=cut), info(1, 28))
