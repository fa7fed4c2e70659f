"""The op registered with torch.library: opcheck, and torch.compile of models with DRConv layers."""
import copy

import pytest
import torch
from helpers import make_args
from torch import nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.ops import dr_conv2d
from drconv_mmdet.ops.dr_conv2d import USE_CUSTOM_OP

pytestmark = pytest.mark.skipif(
    not USE_CUSTOM_OP,
    reason=f'torch.library.custom_op needs torch >= 2.4, this is {torch.__version__}')


def _op_args(channels_last=False, with_bias=True, requires_grad=True, dtype=torch.float32):
    """The registered op's arguments, its geometry as the int lists of its schema."""
    # 3x2 kernel, stride (2, 1), padding (1, 0), dilation (1, 2) on a 7x9 input: 4x7 output.
    x, weight, guide, bias, *geometry = make_args(2,
                                                  4, ((3, 2), (2, 1), (1, 0), (1, 2)),
                                                  dtype,
                                                  with_bias=with_bias,
                                                  out_channels=5,
                                                  size=(7, 9))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        guide = guide.contiguous(memory_format=torch.channels_last)
    for t in (x, weight, guide, bias):
        if t is not None:
            t.requires_grad_(requires_grad)
    return (x, weight, guide, bias, *(list(pair) for pair in geometry))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(channels_last=True, with_bias=False),
    dict(requires_grad=False, dtype=torch.float64),
])
def test_opcheck_forward(kwargs):
    """Schema, fake kernel (shapes and strides), autograd registration, AOT dispatch."""
    result = torch.library.opcheck(torch.ops.drconv.dr_conv2d.default, _op_args(**kwargs))
    assert set(result.values()) == {'SUCCESS'}, result


@pytest.mark.parametrize('output_mask', [[True, True, True, True], [False, True, True, False]])
def test_opcheck_backward(output_mask):
    x, weight, guide, _, *geo = _op_args(channels_last=True, requires_grad=False)
    grad_output = torch.randn(2, 5, 4, 7)
    result = torch.library.opcheck(torch.ops.drconv.dr_conv2d_backward.default,
                                   (grad_output, x, weight, guide, *geo, output_mask))
    assert set(result.values()) == {'SUCCESS'}, result


class _TwoDRConvs(nn.Module):
    """A 3x3 DRConv with the paper's generator, then a 1x1 one with the basis generator."""

    def __init__(self):
        super().__init__()
        self.conv1 = DRConv2d(4, 6, 3, padding=1, region_num=3)
        self.conv2 = DRConv2d(6, 5, 1, stride=2, region_num=4, generator='basis')

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def _compiled_matches_eager(backend, sizes, dynamic=None, autocast_dtype=None):
    torch.manual_seed(0)
    model = _TwoDRConvs()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True, dynamic=dynamic)
    tolerance = {} if autocast_dtype is None else dict(rtol=0.05, atol=0.05)
    for size in sizes:
        x = torch.randn(2, 4, *size)
        outputs = []
        for module in (model, compiled):
            module.zero_grad()
            with torch.autocast('cpu',
                                dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                out = module(x)
            out.float().square().sum().backward()
            outputs.append(out)
        torch.testing.assert_close(outputs[1], outputs[0], **tolerance)
        for (name, param), compiled_param in zip(model.named_parameters(),
                                                 compiled_model.parameters()):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            torch.testing.assert_close(compiled_param.grad, param.grad, **tolerance, msg=name)


@pytest.mark.slow
def test_compile_aot_eager_fullgraph():
    torch._dynamo.reset()
    _compiled_matches_eager('aot_eager', [(9, 8)])


@pytest.mark.slow
def test_compile_dynamic_shapes():
    """Symbolic sizes go through the checks and the fake kernels unspecialised: a new input size
    needs no new graph."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        _compiled_matches_eager('aot_eager', [(9, 8), (7, 11)], dynamic=True)


@pytest.mark.slow
def test_compile_under_autocast():
    torch._dynamo.reset()
    _compiled_matches_eager('aot_eager', [(9, 8)], autocast_dtype=torch.bfloat16)


@pytest.mark.slow
def test_compile_inductor():
    """One small function: inductor's start-up, not the graph, is most of the time."""
    torch._dynamo.reset()
    x, weight, guide, bias, *geo = _op_args()

    def conv_relu(*args):
        return torch.relu(dr_conv2d(*args, *geo))

    compiled = torch.compile(conv_relu, backend='inductor', fullgraph=True)
    results = []
    for fn in (conv_relu, compiled):
        out = fn(x, weight, guide, bias)
        results.append((out, *torch.autograd.grad(out.square().sum(), (x, weight, guide, bias))))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('name', ['drconv::dr_conv2d', 'drconv::dr_conv2d_backward'])
def test_one_kernel_per_device_type(name):
    """The op has kernels of its own for CPU and CUDA (the compiled and the Triton kernels where
    they run) and a default for other devices."""
    for key in ('CPU', 'CUDA', 'CompositeExplicitAutograd'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), key
