"""The ways the DRConv kernels cut a call into products, each checked against the float64 loop
definition of tests/helpers.py: forward and every gradient."""
import pytest
import torch
from helpers import (GEOMETRIES, LAYOUTS, NOT_BUILT, STRATEGIES, apply_strategy, grads,
                     loop_results, make_args, relative_error, set_band_values, skewed_args)
from torch.autograd import gradcheck

from drconv_mmdet.ops import cpu_extension, dr_conv2d, region_products, use_kernels


@pytest.fixture(params=list(STRATEGIES))
def strategy(request, monkeypatch):
    if STRATEGIES[request.param].get('cpu_extension') and not cpu_extension.AVAILABLE:
        pytest.skip(NOT_BUILT)
    with use_kernels(apply_strategy(request.param, monkeypatch)):
        yield request.param


def check_against_loop(batch, geometry, layout):
    x, weight, guide, bias, stride, padding, dilation = skewed_args(batch, geometry)
    leaves = [t.requires_grad_() for t in (x, weight, guide, bias)]
    out = dr_conv2d(LAYOUTS[layout](x), weight, LAYOUTS[layout](guide), bias, stride, padding,
                    dilation)
    expected, grad_out, wanted = loop_results(batch, geometry)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads(out, leaves, grad_out), wanted):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_strategies_match_loop(strategy, geometry, layout):
    check_against_loop(2, geometry, layout)


@pytest.mark.parametrize('geometry', [GEOMETRIES[1], GEOMETRIES[4]])
def test_strategies_non_contiguous(strategy, geometry):
    check_against_loop(2, geometry, 'non_contiguous')


def test_strategies_batch_zero(strategy):
    x, weight, guide, bias, *geo = make_args(0, 3, GEOMETRIES[2])
    leaves = [t.requires_grad_() for t in (x, weight, guide, bias)]
    out = dr_conv2d(*leaves, *geo)
    assert out.shape == (0, weight.shape[2], *guide.shape[-2:])
    for g, leaf in zip(torch.autograd.grad(out.sum() + bias.sum(), leaves), leaves):
        assert g.shape == leaf.shape


def test_strategies_gradcheck(strategy):
    x, weight, guide, bias, *geo = skewed_args(2, GEOMETRIES[4])
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    assert gradcheck(lambda x_, w_, b_: dr_conv2d(x_, w_, guide, b_, *geo), leaves, fast_mode=True)


def test_length_classes():
    counts = [3, 0, 5, 5, 1]
    # Equal lengths share a class even without slack; empty groups are left out.
    assert region_products._length_classes(counts, 0) == [([2, 3], 5), ([0], 3), ([4], 1)]
    # Group 0 adds 2 padded rows, group 4 would add 4 more.
    assert region_products._length_classes(counts, 2) == [([2, 3, 0], 5), ([4], 1)]
    assert region_products._length_classes(counts, 6) == [([2, 3, 0, 4], 5)]
    assert region_products._length_classes([0, 0], 6) == []


def test_filters_outweigh_windows():
    # 2 samples x 3 regions x 4 output channels = 24 filter rows against 20 or 30 pixels.
    weight = torch.empty(2, 3, 4, 5, 1, 1)
    assert region_products._filters_outweigh_windows(weight, 20)
    assert not region_products._filters_outweigh_windows(weight, 30)


def test_bands():
    # 24-value bands of rows 4 wide: 6 rows per band, i.e. 3 whole groups of 2 rows.
    assert list(region_products._bands(4, 2, 4, 24)) == [(slice(0, 3), slice(0, 2)),
                                                         (slice(3, 4), slice(0, 2))]
    # Groups of 8 rows do not fit: pieces of one group.
    assert list(region_products._bands(2, 8, 4, 24)) == [(slice(0, 1), slice(0, 6)),
                                                         (slice(0, 1), slice(6, 8)),
                                                         (slice(1, 2), slice(0, 6)),
                                                         (slice(1, 2), slice(6, 8))]
    # At most 2 groups per band, though 3 fit.
    assert list(region_products._bands(4, 2, 4, 24, max_groups=2)) == [(slice(0, 2), slice(0, 2)),
                                                                       (slice(2, 4), slice(0, 2))]
    # Rows wider than a band still go one at a time.
    assert list(region_products._bands(1, 2, 100, 24)) == [(slice(0, 1), slice(0, 1)),
                                                           (slice(0, 1), slice(1, 2))]


def test_band_values_of_a_device_type_without_its_own():
    assert 'meta' not in region_products.BAND_VALUES
    assert region_products._band_values(
        torch.device('meta')) == (region_products.DEFAULT_BAND_VALUES)


def _cpu_bmm_supports(dtype: torch.dtype) -> bool:
    try:
        torch.bmm(torch.ones(1, 1, 1, dtype=dtype), torch.ones(1, 1, 1, dtype=dtype))
    except RuntimeError:
        return False
    return True


# Older torch (2.1, tested) has no float16 matrix products on CPU, so there the op runs float16
# on GPUs only.
HALF_DTYPES = [
    torch.bfloat16,
    pytest.param(torch.float16,
                 marks=pytest.mark.skipif(
                     not _cpu_bmm_supports(torch.float16),
                     reason=f'torch {torch.__version__} has no float16 bmm on CPU'))
]


@pytest.mark.parametrize('dtype', HALF_DTYPES)
@pytest.mark.parametrize('key_order', [False, True])
@pytest.mark.parametrize('band_values', [None, 1500])
def test_half_gradients_match_float32(dtype, band_values, key_order, monkeypatch):
    """Half-precision gradients of half-representable inputs are float32's within the rounding
    of the results: sums over bands (10-row bands: 1500 values of 144-value windows), overlapping
    windows and channels are kept in float32."""
    if band_values is not None:
        set_band_values(monkeypatch, band_values)
    monkeypatch.setattr(region_products, '_filters_outweigh_windows', lambda *args: key_order)
    gen = torch.Generator().manual_seed(0)
    shapes = dict(x=(2, 16, 12, 10), weight=(2, 4, 8, 16, 3, 3), guide=(2, 4, 12, 10), bias=(8, ))
    args32 = {k: torch.randn(*s, generator=gen).to(dtype).float() for k, s in shapes.items()}
    args32['weight'] = args32['weight'] * 0.1
    args_half = {k: v.to(dtype).requires_grad_() for k, v in args32.items()}
    args32 = {k: v.requires_grad_() for k, v in args32.items()}
    grad_out = torch.randn((2, 8, 12, 10), generator=gen).to(dtype)
    with use_kernels('pytorch'):
        out32 = dr_conv2d(args32['x'], args32['weight'], args32['guide'], args32['bias'], padding=1)
        out_half = dr_conv2d(args_half['x'],
                             args_half['weight'],
                             args_half['guide'],
                             args_half['bias'],
                             padding=1)
        grads_half = torch.autograd.grad(out_half, list(args_half.values()), grad_out)
        grads32 = torch.autograd.grad(out32, list(args32.values()), grad_out.float())
    assert out_half.dtype == dtype
    assert relative_error(out_half, out32) < 1e-2
    for name, g_half, g32 in zip(args32, grads_half, grads32):
        assert g_half.dtype == dtype
        assert relative_error(g_half, g32) < 1e-2, name


def test_padding_follows_the_call_cost(monkeypatch):
    regions = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 2]])  # groups of 3, 1, 0 and 1, 2, 1 pixels
    monkeypatch.setitem(region_products.PRODUCT_CALL_MACS, 'cpu', 0)
    exact = region_products._LengthClasses(regions, 3, 4, 5, in_key_order=False)
    assert [(groups, length) for _, groups, length, _ in exact.classes] == [(1, 3), (1, 2), (3, 1)]
    assert exact.num_rows == 8  # no padding
    monkeypatch.setitem(region_products.PRODUCT_CALL_MACS, 'cpu', 1 << 62)
    padded = region_products._LengthClasses(regions, 3, 4, 5, in_key_order=False)
    assert [(groups, length) for _, groups, length, _ in padded.classes] == [(5, 3)]
    in_key_order = region_products._LengthClasses(regions, 3, 4, 5, in_key_order=True)
    assert in_key_order.key_order.tolist() == list(range(6))
    assert in_key_order.num_rows == 18  # every group, the empty one too, padded to 3 rows
    for classes in (exact, padded, in_key_order):
        # Every pixel appears once in the block layout, at its block row; the rest is padding.
        assert classes.pixels[classes.block_row].tolist() == list(range(8))
        assert (classes.pixels == 8).sum() == classes.num_rows - 8
