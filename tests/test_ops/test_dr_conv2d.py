import importlib
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from drconv_mmdet.ops import conv_output_size, dr_conv2d, dr_conv2d_reference

# The kernels' module, whose band floor a test lowers.
op_module = importlib.import_module('drconv_mmdet.ops.region_products')

# (kernel, stride, padding, dilation): asymmetric on purpose, so that H/W mix-ups fail.
GEOMETRIES = [
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((3, 1), (2, 1), (1, 0), (2, 1)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 3), (1, 2), (0, 1), (1, 2)),
]
IN_CHANNELS, OUT_CHANNELS, HEIGHT, WIDTH = 3, 4, 7, 6


def loop_dr_conv2d(x, weight, guide, bias, stride, padding, dilation):
    """Per-pixel float64 definition: the output and every region's response (for Eq. 7)."""
    batch, num_regions, out_channels = weight.shape[:3]
    kh, kw = weight.shape[-2:]
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    out_h, out_w = guide.shape[-2:]
    out_rows, responses = [], torch.zeros(batch, num_regions, out_channels, out_h, out_w,
                                          dtype=x.dtype)
    for b in range(batch):
        for i, j in itertools.product(range(out_h), range(out_w)):
            pixel = [x.new_zeros(out_channels) for _ in range(num_regions)]
            for di, dj in itertools.product(range(kh), range(kw)):
                column = x[b, :, i * stride[0] + di * dilation[0], j * stride[1] + dj * dilation[1]]
                for r in range(num_regions):
                    pixel[r] = pixel[r] + weight[b, r, :, :, di, dj] @ column
            scores = guide[b, :, i, j].tolist()
            region = scores.index(max(scores))  # first maximum wins ties, like torch.argmax
            out_rows.append(pixel[region] + (0 if bias is None else bias))
            for r in range(num_regions):
                responses[b, r, :, i, j] = pixel[r].detach()
    if batch:
        out = torch.stack(out_rows).view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    else:
        out = (x.sum() + weight.sum()) * x.new_zeros(0, out_channels, out_h, out_w)
    return out, responses


def loop_guide_grad(guide, responses, grad_out):
    """Eq. 7, then Eq. 8, written out per pixel."""
    grad = torch.zeros_like(guide)
    batch, num_regions, out_h, out_w = guide.shape
    for b, i, j in itertools.product(range(batch), range(out_h), range(out_w)):
        probs = torch.softmax(guide[b, :, i, j], dim=0)
        grad_probs = torch.stack(
            [grad_out[b, :, i, j] @ responses[b, r, :, i, j] for r in range(num_regions)])
        grad[b, :, i, j] = probs * (grad_probs - probs @ grad_probs)
    return grad


def make_args(batch, num_regions, geometry, dtype=torch.float64, seed=0, with_bias=True):
    kernel, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    out_size = conv_output_size((HEIGHT, WIDTH), kernel, stride, padding, dilation)
    x = torch.randn(batch, IN_CHANNELS, HEIGHT, WIDTH, generator=gen, dtype=dtype)
    weight = torch.randn(batch, num_regions, OUT_CHANNELS, IN_CHANNELS, *kernel, generator=gen,
                         dtype=dtype)
    guide = torch.randn(batch, num_regions, *out_size, generator=gen, dtype=dtype)
    bias = torch.randn(OUT_CHANNELS, generator=gen, dtype=dtype) if with_bias else None
    return x, weight, guide, bias, stride, padding, dilation


def non_contiguous(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


LAYOUTS = {
    'contiguous': lambda t: t,
    'non_contiguous': non_contiguous,
    'channels_last': lambda t: t.contiguous(memory_format=torch.channels_last),
}


def grads(out, inputs, grad_out):
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, grad_out)


@pytest.mark.parametrize('geometry', GEOMETRIES)
@pytest.mark.parametrize('num_regions', [1, 2, 5])
@pytest.mark.parametrize('batch', [0, 1, 3])
def test_forward_and_grads_match_loop(geometry, num_regions, batch):
    x, weight, guide, bias, stride, padding, dilation = make_args(batch, num_regions, geometry)
    for t in (x, weight, guide, bias):
        t.requires_grad_()
    out = dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    expected, responses = loop_dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    got = grads(out, (x, weight, guide, bias), grad_out)
    want_x, want_w = torch.autograd.grad(expected, (x, weight), grad_out)
    torch.testing.assert_close(got[0], want_x)
    torch.testing.assert_close(got[1], want_w)
    torch.testing.assert_close(got[2], loop_guide_grad(guide.detach(), responses, grad_out))
    torch.testing.assert_close(got[3], grad_out.sum(dim=(0, 2, 3)))


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('geometry', [GEOMETRIES[0], GEOMETRIES[1]])
def test_memory_layouts(layout, geometry):
    x, weight, guide, bias, *geo = make_args(2, 3, geometry)
    x_l, guide_l = LAYOUTS[layout](x), LAYOUTS[layout](guide)
    weight_l = non_contiguous(weight) if layout == 'non_contiguous' else weight
    for t in (x, weight, guide, x_l, weight_l, guide_l):
        t.requires_grad_()
    out = dr_conv2d(x_l, weight_l, guide_l, bias, *geo)
    expected = dr_conv2d(x, weight, guide, bias, *geo)
    torch.testing.assert_close(out, expected)
    # Like nn.Conv2d: channels_last in, channels_last out; anything else gives a contiguous output.
    assert out.is_contiguous(memory_format=torch.channels_last if layout == 'channels_last' else
                             torch.contiguous_format)
    grad_out = torch.randn_like(expected)
    for got, want in zip(grads(out, (x_l, weight_l, guide_l), grad_out),
                         grads(expected, (x, weight, guide), grad_out)):
        torch.testing.assert_close(got, want)


def test_ties_pick_the_first_region():
    x, weight, _, _, *geo = make_args(2, 4, GEOMETRIES[2])
    guide = torch.zeros(2, 4, HEIGHT, WIDTH, dtype=torch.float64)
    guide[:, 2:, :3] = 1.0  # regions 2 and 3 tie on the top rows: region 2 wins there
    out = dr_conv2d(x, weight, guide, None, *geo)
    expected, _ = loop_dr_conv2d(x, weight, guide, None, *geo)
    torch.testing.assert_close(out, expected)
    for b in range(2):
        torch.testing.assert_close(out[b, :, :3], F.conv2d(x[b:b + 1], weight[b, 2],
                                                           padding=1)[0, :, :3])
        torch.testing.assert_close(out[b, :, 3:], F.conv2d(x[b:b + 1], weight[b, 0],
                                                           padding=1)[0, :, 3:])


def test_regions_without_pixels():
    x, weight, guide, _, *geo = make_args(2, 5, GEOMETRIES[1])
    guide = guide.clone()
    guide[:, 0] += 100.0  # region 0 owns every pixel
    weight.requires_grad_()
    guide.requires_grad_()
    out = dr_conv2d(x, weight, guide, None, *geo)
    grad_w, grad_g = torch.autograd.grad(out.square().sum(), (weight, guide))
    assert grad_w[:, 0].abs().sum() > 0
    assert torch.count_nonzero(grad_w[:, 1:]) == 0
    # The straight-through gradient still reaches the logits of the empty regions.
    assert torch.count_nonzero(grad_g[:, 1:]) > 0


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_gradcheck_input_and_weight(geometry):
    x, weight, guide, bias, *geo = make_args(2, 3, geometry)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    assert gradcheck(lambda x_, w_, b_: dr_conv2d(x_, w_, guide, b_, *geo), (x, weight, bias),
                     fast_mode=True)


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_guide_grad_is_the_surrogate_gradient(geometry):
    """dL/dguide equals autograd of sum_j softmax(guide)_j * Y_j, input and weight detached."""
    x, weight, guide, bias, stride, padding, dilation = make_args(3, 4, geometry)
    guide.requires_grad_()
    out = dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    grad_out = torch.randn_like(out)
    (got, ) = torch.autograd.grad(out, guide, grad_out)
    responses = torch.stack([
        torch.cat([
            F.conv2d(x[b:b + 1], weight[b, j], stride=stride, padding=padding, dilation=dilation)
            for b in range(x.shape[0])
        ]) for j in range(weight.shape[1])
    ], dim=1)
    surrogate = (torch.softmax(guide, dim=1).unsqueeze(2) * responses).sum(dim=1)
    (want, ) = torch.autograd.grad(surrogate, guide, grad_out)
    torch.testing.assert_close(got, want)
    assert torch.count_nonzero(got) == got.numel()


@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_reference_agrees_with_op(geometry):
    x, weight, guide, bias, *geo = make_args(3, 5, geometry, dtype=torch.float32)
    inputs = [t.requires_grad_() for t in (x, weight, guide, bias)]
    out = dr_conv2d(*inputs, *geo)
    ref = dr_conv2d_reference(*inputs, *geo)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    for got, want in zip(grads(out, inputs, grad_out), grads(ref, inputs, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_float32_matches_float64():
    args64 = make_args(2, 4, GEOMETRIES[2])
    args32 = [t.float() if isinstance(t, torch.Tensor) else t for t in args64]
    torch.testing.assert_close(dr_conv2d(*args32).double(), dr_conv2d(*args64), rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_autocast():
    x, weight, guide, bias, *geo = make_args(2, 4, GEOMETRIES[2], dtype=torch.float32)
    x.requires_grad_()
    weight.requires_grad_()
    guide.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dr_conv2d(x, weight, guide, bias, *geo)
    assert out.dtype == torch.bfloat16
    expected = dr_conv2d(x, weight, guide, bias, *geo)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)
    out.float().sum().backward()
    for t in (x, weight, guide):
        assert t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()


def test_float16():
    x, weight, guide, bias, *geo = make_args(2, 4, GEOMETRIES[2], dtype=torch.float32)
    out = dr_conv2d(x.half(), weight.half(), guide.half(), bias.half(), *geo)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), dr_conv2d(x, weight, guide.half().float(), bias, *geo),
                               rtol=0.01, atol=0.05)


def test_bands_match_reference(monkeypatch):
    # A small band budget splits each sample into several bands of rows.
    monkeypatch.setattr(op_module, 'MIN_BAND_VALUES', 0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 20, 24, generator=gen)
    weight = torch.randn(2, 3, 2, 8, 3, 3, generator=gen)
    guide = torch.randn(2, 3, 20, 24, generator=gen)
    inputs = [t.requires_grad_() for t in (x, weight, guide)]
    out = dr_conv2d(*inputs, padding=1)
    ref = dr_conv2d_reference(*inputs, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    for got, want in zip(grads(out, inputs, grad_out), grads(ref, inputs, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _valid():
    return dict(input=torch.randn(2, 3, 5, 4), weight=torch.randn(2, 4, 6, 3, 3, 3),
                guide=torch.randn(2, 4, 5, 4), bias=None, stride=1, padding=1, dilation=1)


@pytest.mark.parametrize('change, message', [
    (dict(input=torch.randn(3, 5, 4)), r'input must be 4-D \(B, C, H, W\), but got shape \(3, 5, 4\)'),
    (dict(weight=torch.randn(2, 4, 6, 3, 3)), r'weight must be 6-D .* but got shape'),
    (dict(guide=torch.randn(2, 4, 20)), r'guide must be 4-D'),
    (dict(weight=torch.randn(2, 4, 6, 2, 3, 3)), r'weight must have shape \(B=2, m, O, C=3, kh, kw\)'),
    (dict(weight=torch.randn(1, 4, 6, 3, 3, 3)), r'weight must have shape \(B=2'),
    (dict(weight=torch.randn(2, 0, 6, 3, 3, 3)), r'at least one region'),
    (dict(bias=torch.randn(5)), r'bias must have shape \(6,\), but got \(5,\)'),
    (dict(input=torch.randn(2, 3, 5, 4).double()), r'weight must have the dtype of input'),
    (dict(input=torch.ones(2, 3, 5, 4, dtype=torch.long)), r'input must be a floating point'),
    (dict(guide=torch.ones(2, 4, 5, 4, dtype=torch.long)), r'guide must be a floating point'),
    (dict(stride=0), r'stride must be an int or a pair of ints >= 1, but got 0'),
    (dict(padding=(1, -1)), r'padding must be an int or a pair of ints >= 0, but got \(1, -1\)'),
    (dict(dilation=(1, 1, 1)), r'dilation must be an int or a pair'),
    (dict(padding=0, input=torch.randn(2, 3, 2, 4), guide=torch.randn(2, 4, 1, 2)),
     r'input of spatial size \(2, 4\) is too small for kernel \(3, 3\)'),
    (dict(guide=torch.randn(2, 4, 4, 4)), r'guide must have shape \(B, m, Ho, Wo\) = \(2, 4, 5, 4\)'),
])
def test_errors(change, message):
    args = {**_valid(), **change}
    with pytest.raises(ValueError, match=message):
        dr_conv2d(**args)
