"""DRConv2d inside OpenMMLab: registry, ConvModule, init_cfg and optimizer constructor rules."""
import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmdet.registry import MODELS
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import DefaultScope, init_default_scope

from drconv_mmdet.nn import DRConv2d


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_build_conv_layer(generator):
    layer = build_conv_layer(dict(type='DRConv', region_num=4, generator=generator),
                             6,
                             5,
                             3,
                             stride=2,
                             padding=1,
                             dilation=1,
                             groups=1,
                             bias=True)
    assert isinstance(layer, DRConv2d)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (2, 2), (1, 1))
    assert layer.region_num == 4 and layer.generator_type == generator
    assert layer(torch.randn(2, 6, 11, 9)).shape == (2, 5, 6, 5)


def test_conv_module():
    module = ConvModule(8,
                        6,
                        3,
                        padding=1,
                        conv_cfg=dict(type='DRConv', region_num=8),
                        norm_cfg=dict(type='BN'),
                        act_cfg=dict(type='ReLU'))
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
    """ConvModule kaiming-initialises a conv without ``init_weights``, which would zero the bias
    of a DRConv; a DRConv keeps every parameter it has."""
    torch.manual_seed(0)
    module = ConvModule(16, 16, 1, conv_cfg=dict(type='DRConv', region_num=4), norm_cfg=None)
    with torch.no_grad():
        for param in module.conv.parameters():
            param.uniform_(0.5, 1.0)
    before = {name: param.clone() for name, param in module.conv.named_parameters()}
    module.init_weights()
    for name, param in module.conv.named_parameters():
        assert torch.equal(param, before[name]), name


def _drconv_params(model):
    return {
        f'{name}.{param_name}': param
        for name, module in model.named_modules() if isinstance(module, DRConv2d)
        for param_name, param in module.named_parameters()
    }


def test_bias_rules_of_the_optimizer_reach_every_drconv_bias():
    """mmengine matches parameters named exactly ``bias`` of a module; every bias-like DRConv
    parameter must be one, or bias_lr_mult and bias_decay_mult silently skip it."""
    model = torch.nn.Sequential(
        DRConv2d(4, 6, 3, padding=1, region_num=2, generator='paper', static_kernel=True),
        DRConv2d(6, 6, 1, region_num=3, generator='basis'), torch.nn.Conv2d(6, 2, 1))
    constructor = DefaultOptimWrapperConstructor(dict(type='OptimWrapper',
                                                      optimizer=dict(type='SGD',
                                                                     lr=0.01,
                                                                     weight_decay=1e-4)),
                                                 paramwise_cfg=dict(bias_lr_mult=2.,
                                                                    bias_decay_mult=0.))
    groups = {
        id(param): group
        for group in constructor(model).optimizer.param_groups
        for param in group['params']
    }
    params = _drconv_params(model)
    biases = {name for name in params if name.endswith('bias')}
    assert biases == {
        f'{i}.{name}'
        for i in (0, 1)
        for name in ('bias', 'guide.bias')
    } | {'0.generator.reduce.bias', '0.generator.expand.bias', '1.generator.routing.bias'}
    # Every 1-D parameter of the layer is a bias.
    assert {name for name, param in params.items() if param.dim() == 1} == biases
    for name, param in params.items():
        expected = (0.02, 0.) if name in biases else (0.01, 1e-4)
        assert (groups[id(param)]['lr'], groups[id(param)]['weight_decay']) == expected, name


def test_fpn_xavier_init_cfg_leaves_the_drconv_init_alone():
    """FPN's init_cfg dict(type='Xavier', layer='Conv2d') matches modules by class name (and
    base class names); the DRConv's guide and generators must keep their own init."""
    neck = MODELS.build(
        dict(type='DRFPN',
             in_channels=[4, 8],
             out_channels=6,
             num_outs=2,
             drconv_cfg=dict(type='DRConv', region_num=2, generator='paper', static_kernel=True),
             drconv_layers=('fpn_convs.0', 'lateral_convs.1'),
             init_cfg=dict(type='Xavier', layer='Conv2d', distribution='uniform')))
    before = {name: param.detach().clone() for name, param in _drconv_params(neck).items()}
    assert len(before) == 2 * 8
    plain = neck.lateral_convs[0].conv.weight.detach().clone()
    neck.init_weights()
    assert not torch.equal(neck.lateral_convs[0].conv.weight, plain)
    for name, param in _drconv_params(neck).items():
        assert torch.equal(param, before[name]), name
