"""DRConv2d inside OpenMMLab: registry, ConvModule, init_cfg and optimizer constructor rules."""
import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.registry import DefaultScope, init_default_scope

from drconv_mmdet.models.layers import DRConv2d


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_build_conv_layer(generator):
    layer = build_conv_layer(
        dict(type='DRConv', region_num=4, generator=generator), 6, 5, 3, stride=2, padding=1,
        dilation=1, groups=1, bias=True)
    assert isinstance(layer, DRConv2d)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (2, 2), (1, 1))
    assert layer.region_num == 4 and layer.generator_type == generator
    assert layer(torch.randn(2, 6, 11, 9)).shape == (2, 5, 6, 5)


def test_conv_module():
    module = ConvModule(8, 6, 3, padding=1, conv_cfg=dict(type='DRConv', region_num=8),
                        norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    assert isinstance(module.conv, DRConv2d)
    assert module.with_bias is False and module.conv.bias is None
    out = module(torch.randn(2, 8, 10, 12))
    assert out.shape == (2, 6, 10, 12)
    assert (out >= 0).all()


def test_registered_without_a_default_scope():
    with DefaultScope.overwrite_default_scope(None):
        layer = build_conv_layer(dict(type='DRConv2d', region_num=2), 3, 4, 1)
    assert isinstance(layer, DRConv2d) and layer.region_num == 2


def test_conv_module_keeps_the_layer_init():
    """ConvModule kaiming-initialises convs without init_weights; ours must be left alone."""
    torch.manual_seed(0)
    module = ConvModule(16, 16, 1, conv_cfg=dict(type='DRConv', region_num=4, generator='basis'))
    module.init_weights()
    out = module.conv(torch.randn(4, 16, 8, 8))
    # Variance-preserving init: the output is on the scale of the input, not 0 nor exploding.
    assert 0.2 < out.std().item() < 3.0
