import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.registry import DefaultScope, init_default_scope

from drconv_mmdet.models.layers import BasisFilterGenerator, DRConv2d, PaperFilterGenerator
from drconv_mmdet.ops import dr_conv2d


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.mark.parametrize('generator', ['paper', 'basis'])
@pytest.mark.parametrize('kernel_size, stride, padding', [(1, 1, 0), (3, 1, 1), (3, 2, 1), (1, 2, 0)])
def test_build_conv_layer(generator, kernel_size, stride, padding):
    layer = build_conv_layer(
        dict(type='DRConv', region_num=4, generator=generator), 6, 5, kernel_size, stride=stride,
        padding=padding, dilation=1, groups=1, bias=True)
    assert isinstance(layer, DRConv2d)
    x = torch.randn(2, 6, 11, 9, requires_grad=True)
    out = layer(x)
    expected_hw = [(s + 2 * padding - kernel_size) // stride + 1 for s in (11, 9)]
    assert out.shape == (2, 5, *expected_hw)
    out.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_forward_is_the_op_with_generated_filters():
    layer = DRConv2d(4, 3, 3, padding=1, region_num=5, hidden_channels=10)
    x = torch.randn(2, 4, 7, 6)
    guide = torch.nn.functional.conv2d(x, layer.guide_weight, layer.guide_bias, padding=1)
    expected = dr_conv2d(x, layer.generator(x), guide, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), expected)


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


@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_init_is_variance_preserving(generator):
    torch.manual_seed(0)
    layer = DRConv2d(64, 64, 3, padding=1, region_num=8, generator=generator)
    out = layer(torch.randn(2, 64, 16, 16))
    assert 0.4 < out.std().item() < 1.6


def test_external_guide_is_resized_and_shared():
    shared = DRConv2d(4, 4, 1, stride=2, region_num=3, with_guide_conv=False)
    assert shared.guide_weight is None
    assert not any('guide' in name for name, _ in shared.named_parameters())
    x = torch.randn(2, 4, 8, 10)
    guide = torch.randn(2, 3, 8, 10, requires_grad=True)
    out = shared(x, guide)
    assert out.shape == (2, 4, 4, 5)
    expected = dr_conv2d(x, shared.generator(x), guide[..., ::2, ::2], shared.bias, stride=2)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert guide.grad.abs().sum() > 0


def test_external_guide_overrides_own_guide():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=2)
    x = torch.randn(1, 4, 5, 5)
    guide = torch.zeros(1, 2, 5, 5)
    guide[:, 1] = 1.0
    weight = layer.generator(x)
    torch.testing.assert_close(
        layer(x, guide), torch.nn.functional.conv2d(x, weight[0, 1], layer.bias, padding=1))


def test_record_mask():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=3)
    x = torch.randn(2, 4, 6, 7)
    layer(x)
    assert layer.last_mask is None
    layer.record_mask = True
    layer(x)
    assert layer.last_mask.shape == (2, 6, 7)
    assert layer.last_mask.dtype == torch.int64
    assert int(layer.last_mask.max()) < 3


def test_state_dict_round_trip():
    torch.manual_seed(0)
    layer = DRConv2d(4, 6, 3, padding=1, region_num=4, generator='basis', num_bases=3)
    other = DRConv2d(4, 6, 3, padding=1, region_num=4, generator='basis', num_bases=3)
    assert set(layer.state_dict()) == {
        'guide_weight', 'guide_bias', 'bias', 'generator.bases', 'generator.routing_weight',
        'generator.routing_bias'
    }
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(other(x), layer(x))


def test_parameter_counts():
    paper = PaperFilterGenerator(16, 8, (3, 3), region_num=4, hidden_channels=8)
    # reduce: 16*8 + 8; expand (groups=4): 4*8*16 filters of 9 taps from 2 hidden each, + bias
    assert sum(p.numel() for p in paper.parameters()) == 16 * 8 + 8 + 4 * 8 * 16 * 2 + 4 * 8 * 16
    basis = BasisFilterGenerator(16, 8, (3, 3), region_num=4, num_bases=5)
    assert sum(p.numel() for p in basis.parameters()) == 5 * 8 * 16 * 9 + 4 * 5 * 16 + 4 * 5


def test_generated_filter_shapes():
    x = torch.randn(3, 6, 9, 7)
    assert PaperFilterGenerator(6, 5, (3, 1), 4, 8)(x).shape == (3, 4, 5, 6, 3, 1)
    assert BasisFilterGenerator(6, 5, (3, 1), 4, 2)(x).shape == (3, 4, 5, 6, 3, 1)


def test_empty_batch_and_channels_last():
    layer = DRConv2d(4, 5, 3, padding=1, region_num=3)
    assert layer(torch.randn(0, 4, 6, 6)).shape == (0, 5, 6, 6)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), layer(x))


def test_eval_mode_keeps_gradients():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=3).eval()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_conv_attributes():
    layer = DRConv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(2, 1), bias=False)
    assert (layer.in_channels, layer.out_channels) == (4, 6)
    assert layer.kernel_size == (3, 1) and layer.stride == (2, 1)
    assert layer.padding == (1, 0) and layer.dilation == (2, 1)
    assert layer.transposed is False and layer.output_padding == (0, 0) and layer.groups == 1
    assert 'region_num=8' in repr(layer) and 'bias=False' in repr(layer)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(groups=2), NotImplementedError, r'groups=1 only, but got groups=2'),
    (dict(region_num=0), ValueError, r'region_num must be a positive int, but got 0'),
    (dict(in_channels=0), ValueError, r'in_channels must be a positive int, but got 0'),
    (dict(num_bases=-1), ValueError, r'num_bases must be a positive int, but got -1'),
    (dict(generator='mlp'), ValueError, r"generator must be one of \('paper', 'basis'\), but got 'mlp'"),
    (dict(region_num=3, hidden_channels=8), ValueError,
     r'hidden_channels must be a positive multiple of region_num=3, but got 8'),
    (dict(kernel_size=0), ValueError, r'kernel_size must be an int or a pair of ints >= 1, but got 0'),
    (dict(stride=(1, 0)), ValueError, r'stride must be an int or a pair of ints >= 1'),
])
def test_constructor_errors(kwargs, error, message):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DRConv2d(**args)


def test_forward_errors():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=3)
    with pytest.raises(ValueError, match=r'x must have shape \(B, 4, H, W\), but got \(1, 5, 6, 6\)'):
        layer(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match=r'guide must have shape \(B=1, region_num=3, H, W\), but '
                       r'got \(1, 2, 6, 6\)'):
        layer(torch.randn(1, 4, 6, 6), torch.randn(1, 2, 6, 6))
    shared = DRConv2d(4, 4, 1, region_num=3, with_guide_conv=False)
    with pytest.raises(ValueError, match='guide is required: this DRConv2d was built with '
                       'with_guide_conv=False'):
        shared(torch.randn(1, 4, 6, 6))
