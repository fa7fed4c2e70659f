"""The op and the layer on a CUDA device: every way of cutting a call against the float64 loop
definition, the layer against its CPU twin, autocast inside a model, torch.compile, and the
number of host synchronisations per call. Each test skips where no CUDA device is present."""
import copy
import warnings

import pytest
import torch
from torch import nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.ops import dr_conv2d
from drconv_mmdet.ops.dr_conv2d import USE_CUSTOM_OP
from helpers import GEOMETRIES, LAYOUTS, grads
from test_region_products import (loop_results, set_band_values, skewed_args,  # noqa: F401
                                  strategy)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def to_cuda(tensors):
    return [t.detach().cuda().requires_grad_() if t is not None else None for t in tensors]


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_strategies_match_loop_on_cuda(strategy, geometry, layout):  # noqa: F811
    if strategy == 'cpu_extension':
        pytest.skip('the compiled kernels are CPU kernels; on CUDA this is the default strategy')
    x, weight, guide, bias, *geo = skewed_args(2, geometry)
    leaves = to_cuda((x, weight, guide, bias))
    out = dr_conv2d(LAYOUTS[layout](leaves[0]), *leaves[1:], *geo)
    assert out.is_cuda
    expected, grad_out, wanted = loop_results(2, geometry)
    torch.testing.assert_close(out.cpu(), expected)
    for got, want in zip(grads(out, leaves, grad_out.cuda()), wanted):
        torch.testing.assert_close(got.cpu(), want)


def test_batch_zero_on_cuda():
    x, weight, guide, bias, *geo = skewed_args(0, GEOMETRIES[2])
    x, weight, guide, bias = to_cuda((x, weight, guide, bias))
    out = dr_conv2d(x, weight, guide, bias, *geo)
    assert out.shape == (0, weight.shape[2], *guide.shape[-2:]) and out.is_cuda
    gx, gw, gg, gb = torch.autograd.grad(out.sum() + bias.sum(), (x, weight, guide, bias))
    assert gx.shape == x.shape and gw.shape == weight.shape and gg.shape == guide.shape


@pytest.mark.parametrize('generator,kernel', [('basis', 3), ('paper', 1), ('paper', 3)])
def test_layer_matches_cpu(generator, kernel, monkeypatch):
    """A layer and its copy on the GPU agree in float32, with cuDNN autotuning on (the guide
    conv's and the guide gradient's shapes do not depend on the regions)."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    layer = DRConv2d(6, 5, kernel, stride=(2, 1), padding=kernel // 2, region_num=4,
                     generator=generator)
    layer_cuda = copy.deepcopy(layer).cuda()
    x = torch.randn(3, 6, 11, 9)
    outputs = []
    for module, device in ((layer, 'cpu'), (layer_cuda, 'cuda')):
        inp = x.to(device, copy=True).requires_grad_()
        out = module(inp)
        out.square().sum().backward()
        outputs.append((out, inp.grad))
    torch.testing.assert_close(outputs[1][0].cpu(), outputs[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[1][1].cpu(), outputs[0][1], rtol=1e-4, atol=1e-4)
    for (name, param), param_cuda in zip(layer.named_parameters(), layer_cuda.parameters()):
        torch.testing.assert_close(param_cuda.grad.cpu(), param.grad, rtol=1e-3, atol=1e-4,
                                   msg=name)


class _Block(nn.Module):
    """conv -> BN -> ReLU -> DRConv 3x3 -> DRConv 1x1, as a backbone stage would use them."""

    def __init__(self):
        super().__init__()
        # No bias before BN: BN cancels it, its true gradient is rounding noise.
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.conv1 = DRConv2d(8, 8, 3, padding=1, region_num=4)
        self.conv2 = DRConv2d(8, 6, 1, region_num=8, generator='paper')

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(self.stem(x))))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_model_under_autocast(dtype):
    """A training step of a model under CUDA autocast: half-precision outputs, finite float32
    gradients for every parameter, and the float32 step's loss within rounding. (Gradients are
    not compared one by one: half-precision guides pick other regions at near ties, which moves
    the guides' gradients far more than rounding does.)"""
    torch.manual_seed(0)
    model = _Block().cuda()
    model_half = copy.deepcopy(model)
    x = torch.randn(2, 3, 13, 10, device='cuda')
    loss = model(x).square().mean()
    with torch.autocast('cuda', dtype=dtype):
        out = model_half(x)
        assert out.dtype == dtype
    loss_half = out.float().square().mean()
    loss_half.backward()
    torch.testing.assert_close(loss_half, loss, rtol=0.05, atol=0)
    for name, param in model_half.named_parameters():
        assert param.grad.dtype == torch.float32, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


@pytest.mark.skipif(not USE_CUSTOM_OP,
                    reason=f'torch.library.custom_op needs torch >= 2.4, this is '
                    f'{torch.__version__}')
def test_compile_inductor_on_cuda():
    """inductor compiles the model around the registered op without graph breaks, and its
    outputs and gradients match eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Block().cuda()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend='inductor', fullgraph=True)
    x = torch.randn(2, 3, 13, 10, device='cuda')
    outputs = []
    for module in (model, compiled):
        out = module(x)
        out.square().sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-3, atol=1e-3)
    for (name, param), compiled_param in zip(model.named_parameters(),
                                             compiled_model.parameters()):
        torch.testing.assert_close(compiled_param.grad, param.grad, rtol=1e-3, atol=1e-3,
                                   msg=name)


def host_syncs(fn):
    """Runs ``fn`` and lists the host synchronisations CUDA's sync debug mode reports, as the
    ``file:line`` of the Python call that made each."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [f'{w.filename}:{w.lineno}' for w in caught if 'synchroniz' in str(w.message)]


def op_syncs(batch, geometry):
    """Host syncs made by the op's own code in one forward and one backward call."""
    x, weight, guide, bias, *geo = skewed_args(batch, geometry, dtype=torch.float32)
    x, weight, guide, bias = to_cuda((x, weight, guide, bias))
    out = dr_conv2d(x, weight, guide, bias, *geo)  # warm-up: lazy initialisation may sync
    torch.autograd.grad(out.sum(), (x, weight, guide, bias))
    outputs = []
    forward = host_syncs(lambda: outputs.append(dr_conv2d(x, weight, guide, bias, *geo)))
    backward = host_syncs(lambda: torch.autograd.grad(outputs[0].sum(), (x, weight, guide, bias)))
    return [[where for where in syncs if 'drconv_mmdet' in where]
            for syncs in (forward, backward)], (forward, backward)


@pytest.mark.parametrize('geometry', [GEOMETRIES[0], GEOMETRIES[2]])
def test_one_host_sync_per_call(geometry, monkeypatch):
    """The groups' sizes are the only values the op reads back: one sync in the forward and one
    in the backward, whatever the batch and however many bands a call is cut into."""
    ours, everything = op_syncs(5, geometry)
    assert [len(syncs) for syncs in ours] == [1, 1], everything
    set_band_values(monkeypatch, 0)  # one-row bands: many bands per call
    assert op_syncs(1, geometry)[0] == op_syncs(5, geometry)[0] == ours
