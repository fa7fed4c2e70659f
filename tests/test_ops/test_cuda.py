"""The op and the layer on a CUDA device: the PyTorch kernels' ways of cutting a call and the
Triton kernels against the float64 loop definition, the layer against its CPU twin, autocast
inside a model, torch.compile, CUDA graphs, deterministic mode, and the host synchronisations of
a call. Each test skips where no CUDA device is present; the Triton tests also where the device
or install has no Triton kernels."""
import copy
import warnings

import pytest
import torch
from helpers import (GEOMETRIES, LAYOUTS, STRATEGIES, apply_strategy, grads, loop_results,
                     set_band_values, skewed_args)
from torch import nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.ops import dr_conv2d, use_kernels
from drconv_mmdet.ops.dr_conv2d import USE_CUSTOM_OP
from drconv_mmdet.ops.implementations import default_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

# The PyTorch kernels' strategies (the compiled kernels are CPU kernels), and the Triton kernels.
CUDA_STRATEGIES = [
    name for name, settings in STRATEGIES.items() if not settings.get('cpu_extension')
] + ['triton']


def triton_runs() -> bool:
    return (torch.cuda.is_available()
            and default_kernels(torch.empty(0, device='cuda')) == 'triton')


needs_triton = pytest.mark.skipif(
    not triton_runs(),
    reason='the Triton kernels need triton and a GPU of compute capability '
    '8.0 or more')


@pytest.fixture(params=CUDA_STRATEGIES)
def strategy(request, monkeypatch):
    if request.param == 'triton':
        if not triton_runs():
            pytest.skip('the Triton kernels need triton and a GPU of compute capability >= 8.0')
        kernels = 'triton'
    else:
        kernels = apply_strategy(request.param, monkeypatch)
    with use_kernels(kernels):
        yield request.param


def to_cuda(tensors, dtype=None):
    return [
        t.detach().to('cuda', dtype).requires_grad_() if t is not None else None for t in tensors
    ]


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_strategies_match_loop_on_cuda(strategy, geometry, layout, monkeypatch):
    # The Triton kernels take float32 (with TF32 off here), the others float64 too.
    dtype = torch.float32 if strategy == 'triton' else torch.float64
    tolerance = dict(rtol=1e-4, atol=1e-4) if strategy == 'triton' else {}
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    x, weight, guide, bias, *geo = skewed_args(2, geometry)
    leaves = to_cuda((x, weight, guide, bias), dtype)
    out = dr_conv2d(LAYOUTS[layout](leaves[0]), *leaves[1:], *geo)
    assert out.is_cuda
    expected, grad_out, wanted = loop_results(2, geometry)
    torch.testing.assert_close(out.cpu().double(), expected, **tolerance)
    for got, want in zip(grads(out, leaves, grad_out.to('cuda', dtype)), wanted):
        torch.testing.assert_close(got.cpu().double(), want, **tolerance)


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
    layer = DRConv2d(6,
                     5,
                     kernel,
                     stride=(2, 1),
                     padding=kernel // 2,
                     region_num=4,
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
        torch.testing.assert_close(param_cuda.grad.cpu(),
                                   param.grad,
                                   rtol=1e-3,
                                   atol=1e-4,
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
    for (name, param), compiled_param in zip(model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(compiled_param.grad, param.grad, rtol=1e-3, atol=1e-3, msg=name)


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
def test_pytorch_kernels_sync_once_per_call(geometry, monkeypatch):
    """The groups' sizes are the only values the PyTorch kernels read back: one sync in the
    forward and one in the backward, whatever the batch and however many bands a call is cut
    into."""
    with use_kernels('pytorch'):
        ours, everything = op_syncs(5, geometry)
        assert [len(syncs) for syncs in ours] == [1, 1], everything
        set_band_values(monkeypatch, 0)  # one-row bands: many bands per call
        assert op_syncs(1, geometry)[0] == op_syncs(5, geometry)[0] == ours


def triton_case(dtype=torch.float32,
                batch=2,
                channels=24,
                out_channels=40,
                size=(13, 10),
                num_regions=4,
                geometry=((3, 3), (1, 1), (1, 1), (1, 1))):
    """CUDA leaves (input, weight, guide, bias), geometry arguments and an output gradient."""
    kernel, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, *size, generator=gen)
    weight = torch.randn(batch, num_regions, out_channels, channels, *kernel, generator=gen)
    out_size = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]
    guide = torch.randn(batch, num_regions, *out_size, generator=gen)
    bias = torch.randn(out_channels, generator=gen)
    grad_out = torch.randn(batch, out_channels, *out_size, generator=gen)
    leaves = [
        t.to('cuda', dtype if t is not guide else None).requires_grad_()
        for t in (x, weight, guide, bias)
    ]
    return leaves, (stride, padding, dilation), grad_out.to('cuda', dtype)


def forward_backward(leaves, geo, grad_out):
    out = dr_conv2d(*leaves, *geo)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


@needs_triton
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_triton_makes_no_host_sync(layout):
    """With CUDA's sync debug mode set to error, a forward and backward call of the Triton
    kernels runs through: nothing is read back."""
    leaves, geo, grad_out = triton_case()
    leaves[0] = LAYOUTS[layout](leaves[0].detach()).requires_grad_()
    with use_kernels('triton'):
        forward_backward(leaves, geo, grad_out)  # warm-up: compilation and lazy initialisation
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode('error')
        try:
            forward_backward(leaves, geo, grad_out)
        finally:
            torch.cuda.set_sync_debug_mode(previous)


@needs_triton
def test_triton_matches_pytorch_kernels(monkeypatch):
    """Several channel blocks, 8 regions, stride and dilation: the Triton kernels agree with the
    PyTorch kernels in float32 without TF32."""
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    leaves, geo, grad_out = triton_case(channels=96,
                                        out_channels=80,
                                        size=(29, 21),
                                        num_regions=8,
                                        geometry=((3, 3), (2, 1), (2, 1), (2, 1)))
    results = []
    for kernels in ('triton', 'pytorch'):
        with use_kernels(kernels):
            results.append(forward_backward(leaves, geo, grad_out))
    for name, got, want in zip(('output', 'input', 'weight', 'guide', 'bias'), *results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3, msg=name)


@needs_triton
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_triton_half_types(dtype):
    """Half inputs and filters, float32 guide (as under autocast): float32's results within the
    rounding of the half type."""
    leaves, geo, grad_out = triton_case(dtype)
    leaves32 = [t.detach().float().requires_grad_() for t in leaves]
    with use_kernels('triton'):
        half = forward_backward(leaves, geo, grad_out)
        full = forward_backward(leaves32, geo, grad_out.float())
    for name, got, want in zip(('output', 'input', 'weight', 'guide', 'bias'), half, full):
        assert got.dtype == (torch.float32 if name == 'guide' else dtype), name
        error = (got.float() - want).norm() / want.norm()
        assert error < 2e-2, (name, error)


@needs_triton
def test_triton_deterministic_mode():
    """Under torch.use_deterministic_algorithms the input gradient is added tap by tap without
    atomics: equal from run to run, and close to the atomic adds'."""
    leaves, geo, grad_out = triton_case()
    with use_kernels('triton'):
        atomic = forward_backward(leaves, geo, grad_out)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            runs = [forward_backward(leaves, geo, grad_out) for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(previous)
    for first, second, other in zip(*runs, atomic):
        assert torch.equal(first, second)
        torch.testing.assert_close(first, other, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_cuda_graph_replay():
    """A forward and backward call captured in a CUDA graph and replayed on new values gives
    eager's results."""
    leaves, geo, grad_out = triton_case()
    static = [t.detach().clone().requires_grad_() for t in leaves]
    static_grad_out = grad_out.clone()
    with use_kernels('triton'):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as capture requires
                forward_backward(static, geo, static_grad_out)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward_backward(static, geo, static_grad_out)
        new = [torch.randn_like(t) for t in leaves]
        new_grad_out = torch.randn_like(grad_out)
        with torch.no_grad():
            for t, value in zip(static, new):
                t.copy_(value)
            static_grad_out.copy_(new_grad_out)
        graph.replay()
        eager = forward_backward([t.requires_grad_() for t in new], geo, new_grad_out)
    for got, want in zip(captured, eager):
        torch.testing.assert_close(got, want)
