"""The Triton kernels against the float64 loop definition: forward and every gradient, routing,
layouts, dtypes, empty regions, ties and NaNs, unwritten outputs, deterministic mode and host
syncs.

Without a CUDA device the kernels run on CPU tensors in Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported); with one they are compiled and run there.
"""
import functools
import importlib.metadata
import platform
import sys

import pytest
import torch
from helpers import GEOMETRIES, LAYOUTS, grads, loop_dr_conv2d, loop_guide_grad, make_args

from drconv_mmdet.ops import dr_conv2d, implementations, use_kernels
from drconv_mmdet.ops.geometry import make_geometry

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def triton_version():
    try:
        return importlib.metadata.version('triton')
    except importlib.metadata.PackageNotFoundError:
        return None


# requirements/tests.txt installs triton where its wheels exist: there a missing triton fails.
# torch < 2.4 pins triton 2 on CUDA, which the kernels do not support.
TRITON_VERSION = triton_version()
pytestmark = [
    pytest.mark.skipif(TRITON_VERSION is None
                       and not (platform.system() == 'Linux' and platform.machine() == 'x86_64'),
                       reason=f'triton has no wheels for {platform.system()} {platform.machine()}'),
    pytest.mark.skipif(
        TRITON_VERSION is not None and int(TRITON_VERSION.split('.')[0]) < 3,
        reason=f'the Triton kernels need triton >= 3.0, torch {torch.__version__} comes with '
        f'triton {TRITON_VERSION}'),
]

# Tolerances against float64: float32 products (exact in the interpreter; TF32 off on GPUs
# below), and half types whose results round to 8 (bfloat16) or 11 (float16) bits.
TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    """The Triton kernels' module, interpreted where no CUDA device is present."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    module = implementations.triton_kernels()
    assert module is not None, 'triton does not import'
    assert module.INTERPRETED == (DEVICE == 'cpu'), (
        'TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py)')
    return module


def on_device(tensors, dtype=None):
    return [
        None if t is None else t.detach().to(DEVICE, dtype if t.is_floating_point() else None)
        for t in tensors
    ]


def triton_call(x,
                weight,
                guide,
                bias,
                geo_args,
                grad_out,
                dtype=torch.float32,
                layout='contiguous'):
    """The op's output and gradients for (x, weight, guide, bias) on the Triton kernels, on
    DEVICE in ``dtype`` (the guide in float32 under half types too, as under autocast)."""
    x, weight, bias = on_device((x, weight, bias), dtype)
    guide, grad_out = on_device((guide, grad_out), torch.float32)
    grad_out = grad_out.to(x.dtype)
    leaves = [
        t.requires_grad_() for t in (LAYOUTS[layout](x), weight, LAYOUTS[layout](guide), bias)
        if t is not None
    ]
    with use_kernels('triton'):
        out = dr_conv2d(leaves[0], leaves[1], leaves[2], None if bias is None else leaves[3],
                        *geo_args)
        return out, grads(out, leaves, grad_out)


@functools.lru_cache(maxsize=None)
def loop_case(batch, num_regions, geometry, channels, out_channels, seed=0):
    """Arguments in float64, the loop definition's output, an output gradient, and the loop's
    gradients for (input, weight, guide, bias)."""
    x, weight, guide, bias, stride, padding, dilation = make_args(batch,
                                                                  num_regions,
                                                                  geometry,
                                                                  seed=seed,
                                                                  channels=channels,
                                                                  out_channels=out_channels)
    gen = torch.Generator().manual_seed(seed + 1)
    x.requires_grad_()
    weight.requires_grad_()
    expected, responses = loop_dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    grad_out = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    want_x, want_w = torch.autograd.grad(expected, (x, weight), grad_out)
    wanted = (want_x, want_w, loop_guide_grad(guide, responses,
                                              grad_out), grad_out.sum(dim=(0, 2, 3)))
    args = (x.detach(), weight.detach(), guide, bias, (stride, padding, dilation))
    return args, expected.detach(), grad_out, wanted


def check_case(case, dtype=torch.float32, layout='contiguous'):
    (x, weight, guide, bias, geo_args), expected, grad_out, wanted = case
    out, got = triton_call(x, weight, guide, bias, geo_args, grad_out, dtype, layout)
    assert out.dtype == dtype and out.device.type == DEVICE
    assert out.is_contiguous(
        memory_format=torch.channels_last if layout == 'channels_last' else torch.contiguous_format)
    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, **tolerance)
    for name, g, want in zip(('input', 'weight', 'guide', 'bias'), got, wanted):
        torch.testing.assert_close(g.cpu().double(), want, **tolerance, msg=name)


# (geometry, regions, layout): 1x1 and 3x3 kernels, stride, padding, dilation, 1, 3 and 4
# regions, NCHW and channels-last.
CASES = [
    (GEOMETRIES[0], 3, 'contiguous'),
    (GEOMETRIES[0], 1, 'channels_last'),
    (GEOMETRIES[1], 4, 'channels_last'),
    (GEOMETRIES[2], 3, 'contiguous'),
    (GEOMETRIES[2], 4, 'channels_last'),
    (GEOMETRIES[3], 4, 'contiguous'),
    (GEOMETRIES[4], 1, 'contiguous'),
    (GEOMETRIES[4], 3, 'channels_last'),
]


@pytest.mark.parametrize('geometry, num_regions, layout', CASES)
def test_matches_loop(geometry, num_regions, layout):
    check_case(loop_case(2, num_regions, geometry, 3, 4), layout=layout)


@pytest.mark.slow
def test_matches_loop_over_channel_blocks():
    """More channels than a block on both sides: the kernels' loops over channel blocks."""
    check_case(loop_case(1, 3, GEOMETRIES[2], 40, 70))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    """Half inputs and filters accumulate in float32; the guide stays float32 (autocast)."""
    check_case(loop_case(2, 3, GEOMETRIES[4], 3, 4), dtype=dtype)


def test_gradients_asked_for_alone():
    """Each gradient computed alone equals the loop's (the input's alone takes the pixels' own
    regions only); the expanded output gradient of a sum is read through its strides."""
    (x, weight, guide, bias, geo_args), _, grad_out, wanted = loop_case(2, 4, GEOMETRIES[4], 3, 4)
    leaves = [t.requires_grad_() for t in on_device((x, weight, guide, bias), torch.float32)]
    with use_kernels('triton'):
        out = dr_conv2d(*leaves, *geo_args)
        for name, leaf, want in zip(('input', 'weight', 'guide', 'bias'), leaves, wanted):
            (got, ) = torch.autograd.grad(out,
                                          leaf,
                                          grad_out.to(DEVICE, torch.float32),
                                          retain_graph=True)
            torch.testing.assert_close(got.cpu().double(),
                                       want,
                                       **TOLERANCES[torch.float32],
                                       msg=name)
        for got, want in zip(torch.autograd.grad(out.sum(), leaves, retain_graph=True),
                             torch.autograd.grad(out, leaves, torch.ones_like(out))):
            torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_deterministic_mode_adds_tap_by_tap():
    """Under torch.use_deterministic_algorithms the input gradient is added one tap per launch,
    without atomics: the loop's gradients, bit for bit from run to run. (The atomic adds are
    checked against the loop by the other tests.)"""
    case = loop_case(2, 3, GEOMETRIES[2], 3, 4)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [triton_call(*case[0], case[2])[1] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for first, second, want in zip(*runs, case[3]):
        assert torch.equal(first, second)
        torch.testing.assert_close(first.cpu().double(), want, **TOLERANCES[torch.float32])


def test_routing_is_a_stable_sort_by_group(kernels):
    """Pixels in group order (b*m + region), raster order within a group, with each group's
    rows; regions are torch.argmax's, ties and NaNs included."""
    gen = torch.Generator().manual_seed(0)
    guide = torch.randn(3, 4, 9, 7, generator=gen).mul(2).round()  # many ties
    guide[0, -1, 0, 0] = float('nan')
    guide[-1, :, -1, -1] = float('nan')  # all NaN: the first wins
    guide[1, 2] = float('nan')  # a whole region of NaNs
    for layout in ('contiguous', 'channels_last'):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            given = LAYOUTS[layout](guide.to(dtype)).to(DEVICE)
            routing = kernels._route(given)
            regions = given.argmax(dim=1).flatten(1)
            assert torch.equal(routing.regions.long().cpu(), regions.flatten().cpu())
            keys = (torch.arange(3, device=DEVICE)[:, None] * 4 + regions).flatten()
            order = torch.sort(keys, stable=True).indices
            assert torch.equal(routing.rows.cpu(), order.cpu())
            ends = torch.bincount(keys, minlength=12).cumsum(0)
            assert torch.equal(routing.group_end.cpu(), ends.cpu())
            starts = torch.cat([ends.new_zeros(1), ends[:-1]])
            assert torch.equal(routing.group_start.cpu(), starts.cpu())


# The interpreter's max over a row of NaNs warns as numpy does.
@pytest.mark.filterwarnings('ignore:All-NaN slice encountered')
def test_ties_and_nans_pick_torch_argmax_regions():
    """Outputs and input and weight gradients are the PyTorch kernels' (torch.argmax) where
    guides tie and hold NaNs; the guide gradient is NaN where its softmax is."""
    (x, weight, guide, bias, geo_args), _, grad_out, _ = loop_case(2, 4, GEOMETRIES[2], 3, 4)
    guide = guide.mul(2).round()
    guide[0, -1, 0, 0] = float('nan')
    guide[-1, :, -1, -1] = float('nan')
    out, got = triton_call(x, weight, guide, bias, geo_args, grad_out, torch.float32)
    leaves = [t.float().requires_grad_() for t in (x, weight, guide, bias)]
    with use_kernels('pytorch'):
        want_out = dr_conv2d(*leaves, *geo_args)
        wanted = grads(want_out, leaves, grad_out.float())
    torch.testing.assert_close(out.cpu(), want_out)
    for g, want in zip(got, wanted):
        torch.testing.assert_close(g.cpu(), want, equal_nan=True)
    assert got[2][0, :, 0, 0].isnan().all() and not got[2][0, :, 1, 1].isnan().any()


def test_regions_without_pixels():
    """Groups without pixels get zero filter gradients (written, not left unset), and their
    logits the straight-through gradient."""
    (x, weight, guide, bias, geo_args), *_ = loop_case(2, 4, GEOMETRIES[1], 3, 4)
    guide = guide.clone()
    guide[:, 0] += 100.0
    guide[1, 2, 0, 0] += 200.0  # one pixel of region 2 in sample 1
    grad_out = torch.randn(2, 4, *guide.shape[-2:], dtype=torch.float64)
    _, (_, grad_w, grad_g, _) = triton_call(x, weight, guide, bias, geo_args, grad_out,
                                            torch.float32)
    assert torch.count_nonzero(grad_w[:, 0]) == grad_w[:, 0].numel()
    assert torch.count_nonzero(grad_w[1, 2]) > 0
    assert torch.count_nonzero(grad_w[0, 1:]) == torch.count_nonzero(grad_w[1, 1]) == 0
    assert torch.count_nonzero(grad_g[:, 1:]) > 0


def test_every_output_is_written(monkeypatch):
    """Buffers come from torch.empty filled with NaN (floats) and -1 (integers): every value
    of the outputs and gradients is written by the kernels."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor):
        return tensor.fill_(float('nan') if tensor.is_floating_point() else -1)

    monkeypatch.setattr(torch, 'empty', lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: poisoned(empty_like(*a, **k)))
    check_case(loop_case(2, 4, GEOMETRIES[4], 3, 4), layout='channels_last')
    check_case(loop_case(2, 3, GEOMETRIES[3], 3, 4))


def test_batch_zero():
    (x, weight, guide, bias, geo_args), *_ = loop_case(2, 3, GEOMETRIES[2], 3, 4)
    out, got = triton_call(x[:0], weight[:0], guide[:0], bias, geo_args,
                           torch.zeros(0, 4, *guide.shape[-2:]), torch.float32)
    assert out.shape == (0, 4, *guide.shape[-2:])
    assert [g.shape for g in got] == [(0, 3, 7, 6), (0, *weight.shape[1:]), (0, *guide.shape[1:]),
                                      (4, )]
    assert not got[3].any()


# Calls that copy a device's values to the host, which waits for the device.
SYNCING = [(torch.Tensor, name) for name in ('item', 'tolist', 'nonzero', 'bincount', 'unique',
                                             '__bool__', '__int__', '__float__', 'numpy')]
SYNCING += [(torch, name) for name in ('nonzero', 'bincount', 'unique', 'masked_select')]


def test_no_host_syncs(monkeypatch):
    """Neither the op nor its kernels' launchers read a value back: the calls that would
    sync on a CUDA device raise when made from the package's code during a forward and
    backward call. (The interpreter copies tensors to the host itself.)"""
    case = loop_case(2, 3, GEOMETRIES[2], 3, 4)

    def forbid(owner, name):
        original = getattr(owner, name)

        def guarded(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if 'drconv_mmdet' in caller:
                raise AssertionError(f'{name} called from {caller}')
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, guarded)

    for owner, name in SYNCING:
        forbid(owner, name)
    triton_call(*case[0], case[2])


def test_cpu_tensors_need_the_interpreter(kernels):
    if DEVICE == 'cuda':
        pytest.skip('the kernels are compiled for CUDA here')
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError,
                       match=r'the Triton kernels take torch.float32, torch.float16, '
                       r'torch.bfloat16 CPU tensors in the interpreter, but got torch.float64'):
        kernels.region_conv_forward(x, x.new_ones(1, 1, 2, 3, 1, 1), x.new_ones(1, 1, 4, 4), None,
                                    make_geometry((4, 4), (1, 1), (1, 1), (0, 0), (1, 1)),
                                    torch.contiguous_format)
    with use_kernels('triton'), pytest.raises(ValueError, match=r'do not run torch.float64'):
        dr_conv2d(x, x.new_ones(1, 1, 2, 3, 1, 1), x.new_ones(1, 1, 4, 4))
