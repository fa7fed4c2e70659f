"""Tests of the DRConv2d layer and its filter generators; torch alone, no OpenMMLab."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drconv_mmdet.nn import BasisFilterGenerator, DRConv2d, PaperFilterGenerator
from drconv_mmdet.nn.guide_sampling import sample_guide, window_centres
from drconv_mmdet.ops import dr_conv2d_reference


@pytest.mark.parametrize('generator', ['paper', 'basis'])
@pytest.mark.parametrize('kernel_size, stride, padding', [(1, 1, 0), (3, 1, 1), (3, 2, 1),
                                                          (1, 2, 0)])
def test_forward_backward_reaches_every_parameter(generator, kernel_size, stride, padding):
    layer = DRConv2d(6,
                     5,
                     kernel_size,
                     stride=stride,
                     padding=padding,
                     region_num=4,
                     generator=generator)
    x = torch.randn(2, 6, 11, 9, requires_grad=True)
    out = layer(x)
    expected_hw = [(s + 2 * padding - kernel_size) // stride + 1 for s in (11, 9)]
    assert out.shape == (2, 5, *expected_hw)
    out.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_forward_is_the_definition(generator):
    """Eq. 3-5: each output pixel is the convolution with the filter of its guide's argmax
    region; the all-regions reference computes every region's convolution, then selects."""
    torch.manual_seed(0)
    layer = DRConv2d(4,
                     3,
                     3,
                     stride=(2, 1),
                     padding=(1, 0),
                     dilation=(1, 2),
                     region_num=5,
                     generator=generator).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    guide = F.conv2d(x, layer.guide.weight, layer.guide.bias, (2, 1), (1, 0), (1, 2))
    expected = dr_conv2d_reference(x, layer.generator(x), guide, layer.bias, (2, 1), (1, 0), (1, 2))
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_init_is_variance_preserving(generator):
    torch.manual_seed(0)
    layer = DRConv2d(64, 64, 3, padding=1, region_num=8, generator=generator)
    out = layer(torch.randn(2, 64, 16, 16))
    assert 0.4 < out.std().item() < 1.6


@pytest.mark.parametrize('generator', ['paper', 'basis'])
@pytest.mark.parametrize('kernel_size, filter_std', [(1, None), (1, 0.02), (3, None), (3, 0.3)])
def test_init_weights_sets_the_size_of_the_generated_filters(generator, kernel_size, filter_std):
    torch.manual_seed(0)
    layer = DRConv2d(48, 40, kernel_size, region_num=4, generator=generator)
    layer.init_weights(filter_std)
    expected = filter_std if filter_std is not None else (48 * kernel_size**2)**-0.5
    filters = layer.generator(torch.randn(3, 48, 6, 6))
    assert filters.std().item() == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize('filter_std', [0, -0.1, float('inf'), float('nan'), True, '0.1'])
def test_init_weights_refuses_a_bad_filter_std(filter_std):
    with pytest.raises(ValueError,
                       match=r'filter_std must be a positive finite number or None, but got '):
        DRConv2d(4, 4, 1).init_weights(filter_std)


def test_external_guide_is_sampled_and_shared():
    shared = DRConv2d(4, 4, 1, stride=2, region_num=3, with_guide_conv=False)
    assert shared.guide is None
    assert not any('guide' in name for name, _ in shared.named_parameters())
    x = torch.randn(2, 4, 8, 10)
    guide = torch.randn(2, 3, 8, 10, requires_grad=True)
    out = shared(x, guide)
    assert out.shape == (2, 4, 4, 5)
    expected = dr_conv2d_reference(x,
                                   shared.generator(x),
                                   guide[..., ::2, ::2],
                                   shared.bias,
                                   stride=2)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert guide.grad.abs().sum() > 0


def test_external_guide_overrides_own_guide():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=2)
    x = torch.randn(1, 4, 5, 5)
    guide = torch.zeros(1, 2, 5, 5)
    guide[:, 1] = 1.0
    weight = layer.generator(x)
    torch.testing.assert_close(layer(x, guide), F.conv2d(x, weight[0, 1], layer.bias, padding=1))


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
        'guide.weight', 'guide.bias', 'bias', 'generator.bases', 'generator.routing.weight',
        'generator.routing.bias'
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
    (dict(generator='mlp'), ValueError,
     r"generator must be one of \('paper', 'basis'\), but got 'mlp'"),
    (dict(region_num=3, hidden_channels=8), ValueError,
     r'hidden_channels must be a positive multiple of region_num=3, but got 8'),
    (dict(kernel_size=0), ValueError,
     r'kernel_size must be an int or a pair of ints >= 1, but got 0'),
    (dict(stride=(1, 0)), ValueError, r'stride must be an int or a pair of ints >= 1'),
])
def test_constructor_errors(kwargs, error, message):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DRConv2d(**args)


def test_forward_errors():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=3)
    with pytest.raises(ValueError,
                       match=r'x must have shape \(B, 4, H, W\), but got \(1, 5, 6, 6\)'):
        layer(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError,
                       match=r'guide must have shape \(B=1, region_num=3, H, W\), but '
                       r'got \(1, 2, 6, 6\)'):
        layer(torch.randn(1, 4, 6, 6), torch.randn(1, 2, 6, 6))
    shared = DRConv2d(4, 4, 1, region_num=3, with_guide_conv=False)
    with pytest.raises(ValueError,
                       match='guide is required: this DRConv2d was built with '
                       'with_guide_conv=False'):
        shared(torch.randn(1, 4, 6, 6))


# (generator kwargs, kernel_size, stride, padding, dilation)
FROM_CONV_CASES = [
    (dict(generator='basis'), 1, 1, 0, 1),
    (dict(generator='basis'), 3, 2, 1, 1),
    (dict(generator='basis', num_bases=3), 3, 1, 2, 2),
    (dict(generator='paper'), 1, 2, 0, 1),
    (dict(generator='paper', static_kernel=True), 3, 1, 1, 1),
    (dict(generator='paper', static_kernel=True), (3, 1), 2, (2, 0), (2, 1)),
]


@pytest.mark.parametrize('kwargs, kernel_size, stride, padding, dilation', FROM_CONV_CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_from_conv_computes_the_conv(kwargs, kernel_size, stride, padding, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, kernel_size, stride, padding, dilation, bias=bias)
    layer = DRConv2d.from_conv(conv, region_num=3, **kwargs)
    assert (layer.in_channels, layer.out_channels) == (5, 4)
    assert (layer.kernel_size, layer.stride) == (conv.kernel_size, conv.stride)
    assert (layer.padding, layer.dilation) == (conv.padding, conv.dilation)
    assert (layer.bias is None) == (not bias)
    x = torch.randn(2, 5, 9, 7)
    torch.testing.assert_close(layer(x), conv(x))
    # Every region computes the conv, whatever the guide picks.
    filters = layer.generator(x)
    torch.testing.assert_close(filters, conv.weight.expand_as(filters))


def test_from_conv_channels_last_and_non_contiguous_input():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = DRConv2d.from_conv(conv, region_num=4, generator='basis')
    x = torch.randn(2, 4, 7, 10)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), conv(x))
    x_t = torch.randn(2, 4, 10, 7).transpose(2, 3)
    torch.testing.assert_close(layer(x_t), conv(x_t))


def test_from_conv_keeps_dtype_and_empty_batch():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    layer = DRConv2d.from_conv(conv, region_num=2, generator='paper', static_kernel=True)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    assert layer(x[:0]).shape == (0, 4, 6, 5)


def test_from_conv_bias_true_gives_a_zero_bias_to_a_conv_without_one():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    layer = DRConv2d.from_conv(conv, region_num=2, bias=True)
    assert torch.equal(layer.bias, torch.zeros(4))
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize('padding, expected', [('valid', (0, 0)), ('same', (2, 1))])
def test_from_conv_resolves_string_padding(padding, expected):
    conv = nn.Conv2d(3, 4, (5, 3), padding=padding)
    layer = DRConv2d.from_conv(conv, region_num=2, generator='basis')
    assert layer.padding == expected
    x = torch.randn(1, 3, 7, 6)
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize(
    'kwargs',
    [dict(generator='basis'), dict(generator='paper', static_kernel=True)])
def test_from_conv_every_parameter_learns(kwargs):
    """All parameters get a gradient at the first step except the guide conv, whose
    straight-through gradient is the difference between equal region responses (float noise
    at the start); after one step the regions differ and the guide learns too."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    layer = DRConv2d.from_conv(conv, region_num=4, **kwargs)
    x, target = torch.randn(2, 6, 9, 7), torch.randn(2, 5, 9, 7)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)

    def step():
        optimizer.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        grads = {name: p.grad.abs().max().item() for name, p in layer.named_parameters()}
        optimizer.step()
        return loss.item(), grads

    loss0, grads0 = step()
    assert {name for name, grad in grads0.items() if grad < 1e-6} == {'guide.weight', 'guide.bias'}
    assert min(grads0.values()) >= 0
    loss1, grads1 = step()
    assert loss1 < loss0
    assert all(grad > 1e-6 for grad in grads1.values()), grads1
    with torch.no_grad():
        assert (layer(x) - conv(x)).abs().max() > 1e-3


def test_from_conv_basis_starts_with_distinct_bases():
    """Equal bases would get equal gradients forever; they differ and average to the weight."""
    conv = nn.Conv2d(4, 3, 3)
    generator = DRConv2d.from_conv(conv, region_num=2, generator='basis', num_bases=4).generator
    bases = generator.bases.detach()
    assert not torch.allclose(bases[0], bases[1])
    torch.testing.assert_close(bases.mean(dim=0), conv.weight.detach())
    assert torch.equal(generator.routing.weight, torch.zeros_like(generator.routing.weight))


def test_static_kernel_starts_at_zero():
    layer = DRConv2d(4, 3, 3, region_num=2, generator='paper', static_kernel=True)
    assert torch.equal(layer.generator.static_weight, torch.zeros(3, 4, 3, 3))
    assert 'generator.static_weight' in layer.state_dict()
    assert 'static_kernel=True' in repr(layer)
    assert DRConv2d(4, 3, 3, region_num=2, generator='paper').generator.static_weight is None


# yapf: disable
@pytest.mark.parametrize('conv, kwargs, error, message', [
    (nn.Conv2d(4, 4, 3, groups=2), {}, NotImplementedError,
     r'groups=1 only, but the conv has groups=2'),
    (nn.ConvTranspose2d(4, 4, 3), {}, NotImplementedError,
     r'does not support transposed convolutions, but got ConvTranspose2d'),
    (nn.Linear(4, 4), {}, ValueError, r'conv must be an nn.Conv2d, but got Linear'),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'), {}, NotImplementedError,
     r"pads with zeros only, but the conv has padding_mode='reflect'"),
    (nn.Conv2d(4, 4, 2, padding='same'), {}, NotImplementedError,
     r"padding='same' pads one side more .* kernel_size=\(2, 2\) and dilation=\(1, 1\)"),
    (nn.Conv2d(4, 4, 3), dict(kernel_size=1, stride=2), ValueError,
     r'from_conv takes kernel_size, stride from the conv; expected them out of drconv_kwargs'),
    (nn.Conv2d(4, 4, 1), dict(bias=False), ValueError,
     r'bias=False would drop the bias of the conv'),
    (nn.Conv2d(4, 4, 3), dict(generator='paper'), ValueError,
     r"the paper generator cannot start from a \(3, 3\) kernel: its expand bias is shared by "
     r"the taps. Use generator='basis' or static_kernel=True"),
])
# yapf: enable
def test_from_conv_errors(conv, kwargs, error, message):
    with pytest.raises(error, match=message):
        DRConv2d.from_conv(conv, region_num=2, **kwargs)


def test_init_from_conv_errors():
    layer = DRConv2d(4, 3, 1, region_num=2, generator='basis', bias=False)
    with pytest.raises(ValueError,
                       match=r'bias was given, but this DRConv2d was built with '
                       r'bias=False'):
        layer.init_from_conv(torch.randn(3, 4, 1, 1), torch.randn(3))
    with pytest.raises(ValueError,
                       match=r'weight must have shape \(O, C, kh, kw\) = '
                       r'\(3, 4, 1, 1\), but got \(3, 4, 3, 3\)'):
        layer.init_from_conv(torch.randn(3, 4, 3, 3))
    biased = DRConv2d(4, 3, 1, region_num=2)
    with pytest.raises(ValueError, match=r'bias must have shape \(3,\), but got \(4,\)'):
        biased.init_from_conv(torch.randn(3, 4, 1, 1), torch.randn(4))
    with pytest.raises(ValueError,
                       match=r"static_kernel=True needs the 'paper' generator, but "
                       r"got generator='basis'"):
        DRConv2d(4, 3, 1, generator='basis', static_kernel=True)


def _centre_rows(size, kernel_size, stride, padding, dilation):
    """Hand-written window centres: the middle tap of each window, clamped into the input."""
    out = (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
    rows = []
    for p in range(out):
        taps = [p * stride - padding + dilation * i for i in range(kernel_size)]
        rows.append(min(max(taps[(kernel_size - 1) // 2], 0), size - 1))
    return rows


@pytest.mark.parametrize('size, kernel_size, stride, padding, dilation, expected', [
    (7, 3, 2, 1, 1, [0, 2, 4, 6]),
    (9, 5, 3, 2, 1, [0, 3, 6]),
    (8, 3, 2, 1, 2, [1, 3, 5]),
    (7, 1, 2, 1, 1, [0, 1, 3, 5, 6]),
])
def test_window_centres(size, kernel_size, stride, padding, dilation, expected):
    assert _centre_rows(size, kernel_size, stride, padding, dilation) == expected
    assert window_centres(size, len(expected), kernel_size, stride, padding, dilation,
                          torch.device('cpu')).tolist() == expected


@pytest.mark.parametrize('kernel_size, stride, padding, dilation', [(3, 2, 1, 1),
                                                                    ((3, 5), (2, 3), (1, 2), 1),
                                                                    (3, 2, 2, 2), (1, 2, 0, 1),
                                                                    (3, 3, 0, 1)])
def test_external_guide_at_input_size_is_taken_at_window_centres(kernel_size, stride, padding,
                                                                 dilation):
    layer = DRConv2d(3,
                     4,
                     kernel_size,
                     stride,
                     padding,
                     dilation,
                     region_num=3,
                     with_guide_conv=False)
    x = torch.randn(2, 3, 7, 9)
    guide = torch.randn(2, 3, 7, 9, requires_grad=True)
    rows = _centre_rows(
        7, *(layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]))
    cols = _centre_rows(
        9, *(layer.kernel_size[1], layer.stride[1], layer.padding[1], layer.dilation[1]))
    expected_guide = guide[:, :, rows][:, :, :, cols]
    torch.testing.assert_close(
        sample_guide(guide, layer.kernel_size, layer.stride, layer.padding, layer.dilation),
        expected_guide)
    out = layer(x, guide)
    torch.testing.assert_close(
        out,
        dr_conv2d_reference(x, layer.generator(x), expected_guide, layer.bias, layer.stride,
                            layer.padding, layer.dilation))
    out.square().sum().backward()
    assert guide.grad.abs().sum() > 0


def test_external_guide_of_another_size_is_refused():
    layer = DRConv2d(3, 4, 3, stride=2, padding=1, region_num=2, with_guide_conv=False)
    with pytest.raises(ValueError,
                       match=r'guide must have the output size \(4, 5\) or the '
                       r'input size \(7, 9\) of this layer, but got size \(5, 5\)'):
        layer(torch.randn(1, 3, 7, 9), torch.randn(1, 2, 5, 5))
