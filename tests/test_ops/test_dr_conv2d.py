import importlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (GEOMETRIES, HEIGHT, LAYOUTS, WIDTH, grads, loop_dr_conv2d, loop_guide_grad,
                     make_args, non_contiguous)
from torch.autograd import gradcheck

from drconv_mmdet.ops import (JIT_NODE_KIND, cpu_extension, dr_conv2d, dr_conv2d_reference,
                              use_kernels)
from drconv_mmdet.ops.geometry import as_pair
from drconv_mmdet.ops.implementations import default_kernels, kernels_for

# The entry point's module, whose choice between the registered op and the autograd function a
# test switches.
entry_module = importlib.import_module('drconv_mmdet.ops.dr_conv2d')


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
    assert out.is_contiguous(
        memory_format=torch.channels_last if layout == 'channels_last' else torch.contiguous_format)
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
        torch.testing.assert_close(out[b, :, :3],
                                   F.conv2d(x[b:b + 1], weight[b, 2], padding=1)[0, :, :3])
        torch.testing.assert_close(out[b, :, 3:],
                                   F.conv2d(x[b:b + 1], weight[b, 0], padding=1)[0, :, 3:])


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
    responses = torch.stack(
        [
            torch.cat([
                F.conv2d(
                    x[b:b + 1], weight[b, j], stride=stride, padding=padding, dilation=dilation)
                for b in range(x.shape[0])
            ]) for j in range(weight.shape[1])
        ],
        dim=1,
    )
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
    torch.testing.assert_close(dr_conv2d(*args32).double(),
                               dr_conv2d(*args64),
                               rtol=1e-5,
                               atol=1e-5)


def test_autocast_casts_like_conv2d():
    """Inside a model the generated filters come in the autocast dtype and the layer's bias in
    float32: both are cast before the dtype checks, as F.conv2d casts its arguments. (float16,
    where CPU autocast has it, is tested on models in tests/test_models/test_autocast.py.)"""
    dtype = torch.bfloat16
    x, weight, guide, bias, *geo = make_args(2, 4, GEOMETRIES[2], dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (x, weight, guide, bias)]
    with torch.autocast('cpu', dtype=dtype):
        out = dr_conv2d(x, weight.to(dtype), guide, bias, *geo)
        conv = F.conv2d(x, weight[0, 0], bias)
    assert out.dtype == conv.dtype == dtype
    expected = dr_conv2d(*(t.detach().to(dtype) for t in (x, weight)), guide.detach(),
                         bias.detach().to(dtype), *geo)
    torch.testing.assert_close(out, expected)
    out.float().sum().backward()
    for t in leaves:
        assert t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_autocast_keeps_the_guide_dtype():
    """The regions come from the float32 guide: these two logits are equal in bfloat16."""
    x, weight, _, _, *geo = make_args(2, 2, GEOMETRIES[2], dtype=torch.float32)
    guide = torch.ones(2, 2, HEIGHT, WIDTH)
    guide[:, 1] += 1e-4
    assert guide.bfloat16()[:, 1].eq(guide.bfloat16()[:, 0]).all()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dr_conv2d(x, weight, guide, None, *geo)
    expected = torch.cat([F.conv2d(x[b:b + 1], weight[b, 1], padding=1) for b in range(2)])
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)
    assert (out.float() - expected).abs().max() < (
        out.float() - torch.cat([F.conv2d(x[b:b + 1], weight[b, 0], padding=1)
                                 for b in range(2)])).abs().max()


def test_reference_casts_like_the_op_under_autocast():
    x, weight, guide, bias, *geo = make_args(2, 3, GEOMETRIES[2], dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        # A generator's filters come out of autocast in bfloat16, the input stays float32.
        ref = dr_conv2d_reference(x, weight.bfloat16(), guide, bias, *geo)
        out = dr_conv2d(x, weight.bfloat16(), guide, bias, *geo)
    assert ref.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(ref, out, rtol=0.02, atol=0.05)


def test_autocast_leaves_float64_alone():
    args = make_args(2, 3, GEOMETRIES[1])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dr_conv2d(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, dr_conv2d(*args))
    x, weight, guide, bias, *geo = args
    with torch.autocast('cpu', dtype=torch.bfloat16), pytest.raises(
            ValueError,
            match=r'weight must have the dtype of input \(torch.float64\), but got '
            r'torch.bfloat16'):
        dr_conv2d(x, weight.float(), guide, bias, *geo)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip('this CUDA device has no bfloat16')
    x, weight, guide, bias, *geo = (t.cuda() if isinstance(t, torch.Tensor) else t
                                    for t in make_args(2, 4, GEOMETRIES[2], dtype=torch.float32))
    with torch.autocast('cuda', dtype=dtype):
        out = dr_conv2d(x, weight.to(dtype), guide, bias, *geo)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(),
                               dr_conv2d(x, weight, guide, bias, *geo),
                               rtol=0.05,
                               atol=0.1)


def _valid():
    return dict(input=torch.randn(2, 3, 5, 4),
                weight=torch.randn(2, 4, 6, 3, 3, 3),
                guide=torch.randn(2, 4, 5, 4),
                bias=None,
                stride=1,
                padding=1,
                dilation=1)


# yapf: disable
@pytest.mark.parametrize('change, message', [
    (dict(input=torch.randn(3, 5, 4)),
     r'input must be 4-D \(B, C, H, W\), but got shape \(3, 5, 4\)'),
    (dict(weight=torch.randn(2, 4, 6, 3, 3)), r'weight must be 6-D .* but got shape'),
    (dict(guide=torch.randn(2, 4, 20)), r'guide must be 4-D'),
    (dict(weight=torch.randn(2, 4, 6, 2, 3, 3)),
     r'weight must have shape \(B=2, m, O, C=3, kh, kw\)'),
    (dict(weight=torch.randn(1, 4, 6, 3, 3, 3)), r'weight must have shape \(B=2'),
    (dict(weight=torch.randn(2, 0, 6, 3, 3, 3)), r'at least one region'),
    (dict(bias=torch.randn(5)), r'bias must have shape \(6,\), but got \(5,\)'),
    (dict(input=torch.randn(2, 3, 5, 4).double()),
     r'weight must have the dtype of input \(torch.float64\), but got torch.float32'),
    (dict(bias=torch.randn(6).double()),
     r'bias must have the dtype of input \(torch.float32\), but got torch.float64'),
    (dict(input=torch.ones(2, 3, 5, 4, dtype=torch.long)), r'input must be a floating point'),
    (dict(guide=torch.ones(2, 4, 5, 4, dtype=torch.long)), r'guide must be a floating point'),
    (dict(stride=0), r'stride must be an int or a pair of ints >= 1, but got 0'),
    (dict(padding=(1, -1)), r'padding must be an int or a pair of ints >= 0, but got \(1, -1\)'),
    (dict(dilation=(1, 1, 1)), r'dilation must be an int or a pair'),
    (dict(stride=True), r'stride must be an int or a pair of ints >= 1, but got True'),
    (dict(padding=(False, 1)), r'padding must be an int or a pair .*, but got \(False, 1\)'),
    (dict(dilation=1.0), r'dilation must be an int or a pair of ints >= 1, but got 1.0'),
    (dict(weight=torch.randn(2, 4, 6, 3, 3, 3, device='meta')),
     r'^input, weight and guide must be on one device, but got input on cpu, weight on meta, '
     r'guide on cpu$'),
    (dict(guide=torch.randn(2, 4, 5, 4, device='meta'), bias=torch.randn(6)),
     r'^input, weight, guide and bias must be on one device, but got input on cpu, weight on '
     r'cpu, guide on meta, bias on cpu$'),
    (dict(bias=torch.randn(6, device='meta')), r'guide and bias must be on one device'),
    (dict(padding=0, input=torch.randn(2, 3, 2, 4), guide=torch.randn(2, 4, 1, 2)),
     r'input of spatial size \(2, 4\) is too small for kernel \(3, 3\)'),
    (dict(guide=torch.randn(2, 4, 4, 4)),
     r'guide must have shape \(B, m, Ho, Wo\) = \(2, 4, 5, 4\)'),
])
# yapf: enable
def test_errors(change, message):
    args = {**_valid(), **change}
    with pytest.raises(ValueError, match=message):
        dr_conv2d(**args)


def test_numpy_ints_are_sizes():
    x, weight, guide, bias, _, _, _ = make_args(2, 3, GEOMETRIES[1])
    expected = dr_conv2d(x, weight, guide, bias, (2, 1), (1, 0), (2, 1))
    out = dr_conv2d(x, weight, guide, bias, (np.int64(2), 1), (np.int32(1), np.int64(0)),
                    np.array([2, 1]).tolist())
    torch.testing.assert_close(out, expected)
    pair = as_pair(np.int16(3), 'stride', 1)
    assert pair == (3, 3) and all(type(v) is int for v in pair)


@pytest.mark.parametrize('value', [True, np.float32(1.0), '11', (1, 1.5), np.bool_(True)])
def test_as_pair_rejects_non_ints(value):
    with pytest.raises(ValueError,
                       match=r'^kernel_size must be an int or a pair of ints >= 1, '
                       r'but got '):
        as_pair(value, 'kernel_size', 1)


@pytest.fixture(params=['registered_op', 'autograd_function'])
def op_path(request, monkeypatch):
    """Runs a test through torch.ops.drconv.dr_conv2d (torch >= 2.4) and through
    DRConv2dFunction, the path of older torch."""
    if request.param == 'registered_op' and not entry_module.USE_CUSTOM_OP:
        pytest.skip(f'torch.library.custom_op needs torch >= 2.4, this is {torch.__version__}')
    monkeypatch.setattr(entry_module, 'USE_CUSTOM_OP', request.param == 'registered_op')
    return request.param


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('geometry', [GEOMETRIES[1], GEOMETRIES[4]])
def test_both_paths_match_loop(op_path, geometry, layout):
    x, weight, guide, bias, stride, padding, dilation = make_args(2, 3, geometry)
    leaves = [t.requires_grad_() for t in (x, weight, guide, bias)]
    out = dr_conv2d(LAYOUTS[layout](x), weight, LAYOUTS[layout](guide), bias, stride, padding,
                    dilation)
    expected, responses = loop_dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    want_x, want_w = torch.autograd.grad(expected, (x, weight), grad_out)
    for g, want in zip(got, (want_x, want_w, loop_guide_grad(
            guide.detach(), responses, grad_out), grad_out.sum(dim=(0, 2, 3)))):
        torch.testing.assert_close(g, want)
    # Only the gradients asked for: guide and bias alone, then input alone.
    got_guide, got_bias = torch.autograd.grad(out, (guide, bias), grad_out, retain_graph=True)
    torch.testing.assert_close(got_guide, got[2])
    torch.testing.assert_close(got_bias, got[3])
    torch.testing.assert_close(torch.autograd.grad(out, x, grad_out)[0], got[0])


def test_both_paths_gradcheck(op_path):
    x, weight, guide, bias, *geo = make_args(2, 3, GEOMETRIES[4])
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    assert gradcheck(lambda x_, w_, b_: dr_conv2d(x_, w_, guide, b_, *geo), leaves, fast_mode=True)


def test_jit_trace_records_one_op(op_path):
    """mmengine's FLOP counter traces models and counts the op by JIT_NODE_KIND."""
    x, weight, guide, bias, *geo = make_args(2, 3, GEOMETRIES[1], dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda *args: dr_conv2d(*args, *geo), (x, weight, guide, bias),
                                 check_trace=False)
    # mmengine names an autograd function's node by kind and Python name.
    kinds = [
        f'{node.kind()}.{node.pyname()}' if node.kind() == 'prim::PythonOp' else node.kind()
        for node in traced.inlined_graph.nodes()
    ]
    if op_path == 'registered_op':
        assert kinds.count(JIT_NODE_KIND) == 1, kinds
        # The kernels run untraced behind the op; the entry point's checks read sizes quietly.
        assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    else:
        assert kinds.count('prim::PythonOp.DRConv2dFunction') == 1, kinds
    new_args = make_args(2, 3, GEOMETRIES[1], dtype=torch.float32, seed=1)[:4]
    torch.testing.assert_close(traced(*new_args), dr_conv2d(*new_args, *geo))


def test_double_backward_is_refused(op_path):
    x, weight, guide, bias, *geo = make_args(1, 2, GEOMETRIES[0])
    x.requires_grad_()
    out = dr_conv2d(x, weight, guide, bias, *geo)
    grad_out = torch.randn_like(out, requires_grad=True)
    (grad_x, ) = torch.autograd.grad(out, x, grad_out, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice|no autograd formula'):
        grad_x.sum().backward()


def test_use_kernels_rejects_unknown_names():
    with pytest.raises(ValueError,
                       match=r"^implementation must be None or one of \('pytorch', "
                       r"'compiled', 'triton'\), but got 'cudnn'$"):
        with use_kernels('cudnn'):
            pass


def test_compiled_kernels_take_cpu_tensors_only():
    with use_kernels('compiled'), pytest.raises(
            ValueError,
            match=r'^the compiled kernels take CPU tensors where they are built '
            r'\(built: (True|False)\), but got a tensor on meta$'):
        kernels_for(torch.empty(0, device='meta'))


def test_kernels_by_device():
    """Each device type's default; use_kernels overrides it within its block only."""
    cpu = torch.empty(0)
    assert default_kernels(cpu) == ('compiled' if cpu_extension.AVAILABLE else 'pytorch')
    assert default_kernels(torch.empty(0, device='meta')) == 'pytorch'
    with use_kernels('pytorch'):
        assert kernels_for(cpu) == 'pytorch'
        with use_kernels(None):
            assert kernels_for(cpu) == default_kernels(cpu)
    assert kernels_for(cpu) == default_kernels(cpu)


def test_backward_runs_the_forward_kernels(op_path, monkeypatch):
    """A backward pass outside the block of its forward pass runs the forward's kernels."""
    chosen = []
    original = entry_module.backward

    def record(*args):
        chosen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(entry_module, 'backward', record)
    x, weight, guide, bias, *geo = make_args(1, 2, GEOMETRIES[2])
    x.requires_grad_()
    with use_kernels('pytorch'):
        out = dr_conv2d(x, weight, guide, bias, *geo)
    out.sum().backward()
    assert chosen == ['pytorch']
