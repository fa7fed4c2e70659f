"""The compiled CPU kernels (drconv_mmdet/ops/csrc/region_products_cpu.cpp) against the PyTorch
kernels, and how the op finds them. Their loop-definition tests are the 'cpu_extension' strategy
of test_region_products.py."""
import importlib
import os
import os.path as osp
import subprocess
import sys
import warnings
from unittest import mock

import pytest
import torch

from drconv_mmdet.ops import cpu_extension, dr_conv2d, region_products
from drconv_mmdet.ops.geometry import make_geometry
from test_region_products import NOT_BUILT, relative_error

needs_extension = pytest.mark.skipif(not cpu_extension.AVAILABLE, reason=NOT_BUILT)

# (batch, in channels, out channels, regions, map (H, W), kernel, stride, padding, dilation):
# many regions on a tiny map (most groups empty or of one pixel), one region owning a map of
# several tiles, groups larger and smaller than the filters' rows (the two window orders), and
# 37 channels (two uneven channel blocks of the backward's tasks).
SHAPES = [
    (3, 6, 5, 16, (3, 4), (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 3, 4, 1, (40, 30), (1, 1), (1, 1), (0, 0), (1, 1)),
    (1, 37, 3, 2, (9, 11), (3, 2), (2, 1), (2, 0), (1, 3)),
    (2, 8, 24, 3, (10, 12), (3, 3), (1, 1), (1, 1), (2, 2)),
    (1, 37, 6, 4, (16, 8), (1, 1), (2, 2), (1, 0), (1, 1)),
]


def random_args(shape, dtype=torch.float32, seed=0):
    batch, channels, out_channels, regions, size, kernel, stride, padding, dilation = shape
    gen = torch.Generator().manual_seed(seed)
    out_size = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]
    x = torch.randn(batch, channels, *size, generator=gen).to(dtype)
    weight = (torch.randn(batch, regions, out_channels, channels, *kernel, generator=gen) /
              (channels * kernel[0] * kernel[1])**0.5).to(dtype)
    guide = torch.randn(batch, regions, *out_size, generator=gen).to(dtype)
    bias = torch.randn(out_channels, generator=gen).to(dtype)
    return (x, weight, guide, bias), (stride, padding, dilation)


def output_and_grads(args, geo, use_extension, monkeypatch, grad_out=None):
    monkeypatch.setattr(region_products, 'USE_CPU_EXTENSION', use_extension)
    leaves = [t.detach().clone().requires_grad_() for t in args]
    out = dr_conv2d(*leaves, *geo)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return out, torch.autograd.grad(out, leaves, grad_out), grad_out


def assert_grads_close(got_grads, want_grads):
    """The gradients of (input, weight, guide, bias) of two kernels: weight gradients sum up to
    thousands of float32 products, in another order in each kernel (and each BLAS), so their
    tolerance is relative to their largest value."""
    for name, got, want in zip(('input', 'weight', 'guide', 'bias'), got_grads, want_grads):
        atol = 1e-5 * want.abs().max().item() if name == 'weight' else None
        torch.testing.assert_close(got, want, rtol=None if atol is None else 1.3e-6, atol=atol,
                                   msg=name)


@needs_extension
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('shape', SHAPES)
def test_matches_pytorch_kernels(shape, threads, monkeypatch):
    args, geo = random_args(shape)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # 3 threads for one sample: channel blocks
    try:
        got, got_grads, grad_out = output_and_grads(args, geo, True, monkeypatch)
    finally:
        torch.set_num_threads(old_threads)
    want, want_grads, _ = output_and_grads(args, geo, False, monkeypatch, grad_out)
    torch.testing.assert_close(got, want)
    assert_grads_close(got_grads, want_grads)


# The kernels work on NCHW planes where a sample's float32 input and output take at most
# PLANAR_SAMPLE_BYTES, or a window at most PLANAR_WINDOW values (kPlanarSampleBytes and
# kPlanarWindow in the .cpp). LARGE's samples and windows are larger: they take channels-last
# rows; LONG_MAP's samples are larger, its windows short: planes.
PLANAR_SAMPLE_BYTES = 1 << 19
PLANAR_WINDOW = 512
LARGE = (2, 70, 9, 3, (41, 47), (3, 3), (1, 1), (1, 1), (1, 1))
LONG_MAP = (1, 4, 5, 2, (180, 200), (3, 3), (1, 1), (1, 1), (1, 1))


def works_on_planes(shape):
    (x, weight, guide, _), _ = random_args(shape)
    sample_bytes = 4 * (x[0].numel() + weight.shape[2] * guide[0, 0].numel())
    return sample_bytes <= PLANAR_SAMPLE_BYTES or weight[0, 0, 0].numel() <= PLANAR_WINDOW


def as_layout(x, layout):
    if layout == 'channels_last':
        return x.contiguous(memory_format=torch.channels_last)
    if layout == 'non_contiguous':  # every other column of a map twice as wide
        return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


@needs_extension
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'non_contiguous'])
@pytest.mark.parametrize('shape', [SHAPES[2], SHAPES[3], LONG_MAP, LARGE])
def test_layouts_match_pytorch_kernels(shape, layout, monkeypatch):
    """NCHW inputs whose samples fit in the cache or whose windows are short run on planes, the
    others on channels-last rows; the results have the layout nn.Conv2d gives."""
    assert works_on_planes(shape) == (shape is not LARGE)
    (x, weight, guide, bias), geo = random_args(shape)
    args = (as_layout(x, layout), weight, as_layout(guide, layout), bias)
    got, got_grads, grad_out = output_and_grads(args, geo, True, monkeypatch)
    want, want_grads, _ = output_and_grads(args, geo, False, monkeypatch, grad_out)
    torch.testing.assert_close(got, want)
    memory_format = region_products.conv_memory_format(args[0])
    assert got.is_contiguous(memory_format=memory_format)
    assert got_grads[0].is_contiguous(memory_format=memory_format)
    assert_grads_close(got_grads, want_grads)


def guides_with_ties(shape):
    """Guides of several dtypes and layouts whose scores tie often (the first maximum wins) and
    hold NaNs (the first NaN wins, as in torch.argmax)."""
    (_, _, guide, _), _ = random_args(shape)
    guide = guide.mul(2).round()
    guide[0, -1, 0, 0] = float('nan')
    guide[-1, :, -1, -1] = float('nan')
    return [guide, guide.bfloat16(), guide.half(), guide.double(),
            guide.contiguous(memory_format=torch.channels_last), as_layout(guide, 'non_contiguous'),
            guide.transpose(-1, -2).contiguous().transpose(-1, -2)]


@needs_extension
@pytest.mark.parametrize('shape', [SHAPES[0], SHAPES[2], LARGE])
def test_guide_gives_its_argmax(shape):
    """The kernels take the guide's argmax over regions themselves: results are those of the
    int64 regions of torch.argmax, bit for bit."""
    (x, weight, _, bias), geo = random_args(shape)
    grad_out = None
    for guide in guides_with_ties(shape):
        regions = region_products._regions(guide)
        results = []
        for given in (guide, regions):
            out = cpu_extension.region_forward(x, weight, given, bias, *map(list, geo))
            grad_out = torch.randn_like(out) if grad_out is None else grad_out
            results.append((out, *cpu_extension.region_backward(grad_out, x, weight, given,
                                                                *map(list, geo), True, True)))
        for name, got, want in zip(('output', 'input', 'weight'), *results):
            assert torch.equal(got, want), (name, guide.dtype, guide.stride())


@needs_extension
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('shape', [SHAPES[2], SHAPES[3], LARGE])
def test_half_matches_float32(shape, dtype):
    """Half types are computed in float32: results are float32's rounded, on every torch (2.1
    has no float16 matrix product on CPU, which the kernels do not need)."""
    (x, weight, guide, bias), geo = random_args(shape, dtype)
    regions = region_products._regions(guide)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:]).to(dtype)
    results = [
        (cpu_extension.region_forward(x_, w_, regions, b_, *map(list, geo)),
         *cpu_extension.region_backward(g_, x_, w_, regions, *map(list, geo), True, True))
        for x_, w_, b_, g_ in ((x, weight, bias, grad_out),
                               (x.float(), weight.float(), bias.float(), grad_out.float()))
    ]
    for name, got, want in zip(('output', 'input', 'weight'), *results):
        assert got.dtype == dtype
        assert relative_error(got, want) < 1e-2, name


@needs_extension
def test_only_needed_gradients():
    (x, weight, guide, bias), geo = random_args(SHAPES[0], torch.float64)
    regions = region_products._regions(guide)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:], dtype=x.dtype)
    both = cpu_extension.region_backward(grad_out, x, weight, regions, *map(list, geo), True,
                                         True)
    grad_input, grad_weight = cpu_extension.region_backward(grad_out, x, weight, regions,
                                                            *map(list, geo), True, False)
    assert grad_weight is None
    torch.testing.assert_close(grad_input, both[0])
    grad_input, grad_weight = cpu_extension.region_backward(grad_out, x, weight, regions,
                                                            *map(list, geo), False, True)
    assert grad_input is None
    torch.testing.assert_close(grad_weight, both[1])


@needs_extension
def test_batch_zero():
    x, weight = torch.randn(0, 3, 5, 4), torch.randn(0, 2, 4, 3, 3, 3)
    for regions in (torch.zeros(0, 12, dtype=torch.long), torch.zeros(0, 2, 3, 4)):
        out = cpu_extension.region_forward(x, weight, regions, None, [1, 1], [0, 1], [1, 1])
        assert out.shape == (0, 4, 3, 4)
        grad_input, grad_weight = cpu_extension.region_backward(out, x, weight, regions, [1, 1],
                                                                [0, 1], [1, 1], True, True)
        assert grad_input.shape == x.shape and grad_weight.shape == weight.shape


@needs_extension
@pytest.mark.parametrize('change, message', [
    (dict(regions=torch.full((1, 6), 2)), r'regions must lie in \[0, 2\), but sample 0 has 2'),
    (dict(regions=torch.zeros(1, 5, dtype=torch.long)), 'regions must be an int64 tensor of shape'),
    (dict(regions=torch.zeros(1, 6, dtype=torch.int32)), 'regions must be an int64 tensor'),
    (dict(regions=torch.zeros(1, 3, 2, 3)),
     r'or a floating guide of shape \(B=1, m=2, Ho=2, Wo=3\), but got Float of shape \[1, 3'),
    (dict(regions=torch.zeros(1, 2, 2, 3, dtype=torch.long)), 'regions must be an int64 tensor'),
    (dict(weight=torch.zeros(1, 2, 3, 4, 1, 2).transpose(2, 3)), 'weight must be contiguous'),
    (dict(weight=torch.zeros(1, 2, 4, 3, 1, 2, dtype=torch.float64)),
     'weight must have the dtype of input'),
    (dict(weight=torch.zeros(1, 2, 4, 5, 1, 2)), r'weight must have shape \(B=1, m, O, C=3'),
    (dict(stride=[1]), 'stride must hold 2 values'),
    (dict(stride=[0, 1]), 'stride and dilation must be positive'),
    (dict(x=torch.zeros(1, 3, 2)), 'input must be 4-D'),
])
def test_errors(change, message):
    args = dict(x=torch.zeros(1, 3, 2, 4), weight=torch.zeros(1, 2, 4, 3, 1, 2),
                regions=torch.zeros(1, 6, dtype=torch.long), stride=[1, 1])
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        cpu_extension.region_forward(args['x'], args['weight'], args['regions'], None,
                                     args['stride'], [0, 0], [1, 1])


@needs_extension
def test_the_flag_switches_the_kernels(monkeypatch):
    args, geo = random_args(SHAPES[0])
    for use_extension, calls in ((True, 1), (False, 0)):
        monkeypatch.setattr(region_products, 'USE_CPU_EXTENSION', use_extension)
        with mock.patch.object(cpu_extension, 'region_forward',
                               wraps=cpu_extension.region_forward) as forward, \
                mock.patch.object(cpu_extension, 'region_backward',
                                  wraps=cpu_extension.region_backward) as backward:
            leaves = [t.requires_grad_() for t in args]
            dr_conv2d(*leaves, *geo).sum().backward()
        assert (forward.call_count, backward.call_count) == (calls, calls)


def test_module_name_carries_the_torch_version():
    version = torch.__version__.split('+')[0]
    assert cpu_extension.MODULE_NAME == 'drconv_mmdet._C_torch' + version.replace('.', '_')


def load_with(monkeypatch, error, builds=()):
    """Runs the loader with the import raising ``error`` and ``builds`` in the package."""

    def import_module(name):
        raise error

    monkeypatch.setattr(importlib, 'import_module', import_module)
    monkeypatch.setattr(cpu_extension.glob, 'glob', lambda pattern: list(builds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loaded = cpu_extension._load()
    return loaded, [str(w.message) for w in caught]


def test_missing_extension_is_quiet(monkeypatch):
    error = ModuleNotFoundError('no module', name=cpu_extension.MODULE_NAME)
    assert load_with(monkeypatch, error) == (False, [])


def test_build_for_another_torch_warns(monkeypatch):
    error = ModuleNotFoundError('no module', name=cpu_extension.MODULE_NAME)
    loaded, messages = load_with(monkeypatch, error, ['/pkg/drconv_mmdet/_C_torch0_1_0.so'])
    assert not loaded
    assert len(messages) == 1
    assert 'built for another torch (_C_torch0_1_0.so)' in messages[0]
    assert 'Rebuild with `pip install --no-build-isolation --no-deps -e .`' in messages[0]


@pytest.mark.parametrize('error', [
    ImportError('undefined symbol: _ZN2at4mm'),
    OSError('cannot open shared object file'),
    ModuleNotFoundError('No module named libfoo', name='libfoo'),
])
def test_broken_extension_warns(monkeypatch, error):
    loaded, messages = load_with(monkeypatch, error)
    assert not loaded
    assert messages == [f'the compiled DRConv CPU kernels ({cpu_extension.MODULE_NAME}) do not '
                        f'load ({error}); the op runs its PyTorch kernels on CPU']


def pytorch_dots(x, weight, grad_out, geo, monkeypatch):
    monkeypatch.setattr(region_products, 'USE_CPU_EXTENSION', False)
    return region_products._region_response_dots(x, weight, grad_out,
                                                  make_geometry(x.shape[-2:], weight.shape[-2:],
                                                                *geo))


@needs_extension
@pytest.mark.parametrize('shape', SHAPES)
def test_guide_dots_match_pytorch_kernels(shape, monkeypatch):
    """On planes the compiled kernels give the guide gradient's region responses."""
    (x, weight, guide, _), geo = random_args(shape)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:])
    got = cpu_extension.guide_dots(grad_out, x, weight, *map(list, geo))
    want = pytorch_dots(x, weight, grad_out, geo, monkeypatch)
    assert got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, want)


@needs_extension
@pytest.mark.parametrize('layout', ['channels_last', 'large'])
def test_guide_dots_leave_rows(layout):
    """Off the planes the grouped convolutions are faster: the kernels give None."""
    (x, weight, guide, _), geo = random_args(LARGE if layout == 'large' else SHAPES[2])
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:])
    assert cpu_extension.guide_dots(grad_out, x, weight, *map(list, geo)) is None


@needs_extension
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float64])
def test_guide_dots_dtypes(dtype, monkeypatch):
    """Half types are computed in float32, float64 in float64: the dots have that dtype."""
    (x, weight, guide, _), geo = random_args(SHAPES[3], dtype)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:]).to(dtype)
    got = cpu_extension.guide_dots(grad_out, x, weight, *map(list, geo))
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = pytorch_dots(x.double(), weight.double(), grad_out.double(), geo, monkeypatch)
    if dtype == torch.float64:
        torch.testing.assert_close(got, want)
    else:
        assert relative_error(got, want) < 1e-2


@needs_extension
def test_guide_dots_batch_zero_and_errors():
    x, weight = torch.randn(0, 3, 5, 4), torch.randn(0, 2, 4, 3, 3, 3)
    dots = cpu_extension.guide_dots(torch.randn(0, 4, 3, 4), x, weight, [1, 1], [0, 1], [1, 1])
    assert dots.shape == (0, 2, 3, 4)
    x, weight = torch.randn(1, 3, 5, 4), torch.randn(1, 2, 4, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r'grad_output must be of shape \(1, 4, 3, 4\), dtype '
                       r'Float and on the CPU, but got \[1, 4, 3, 3\], Float and cpu'):
        cpu_extension.guide_dots(torch.randn(1, 4, 3, 3), x, weight, [1, 1], [0, 1], [1, 1])
    with pytest.raises(RuntimeError, match='weight must be 6-D'):
        cpu_extension.guide_dots(torch.randn(1, 4, 3, 4), x, weight[0], [1, 1], [0, 1], [1, 1])


# Runs in a fresh process, whose kernels pick their instruction set once, capped by
# ATEN_CPU_CAPABILITY: the kernels against the PyTorch kernels on shapes that take the planes.
INSTRUCTION_SET_CHECK = '''
import sys, torch
sys.path.insert(0, {tests!r})
from test_cpu_extension import SHAPES, assert_grads_close, random_args
from drconv_mmdet.ops import cpu_extension, dr_conv2d, region_products

print(cpu_extension.instruction_set())
for shape in SHAPES:
    for dtype in (torch.float32, torch.float64):
        args, geo = random_args(shape, dtype)
        results = []
        for use_extension in (True, False):
            region_products.USE_CPU_EXTENSION = use_extension
            leaves = [t.detach().clone().requires_grad_() for t in args]
            out = dr_conv2d(*leaves, *geo)
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                                   dtype=dtype)
            results.append((out, torch.autograd.grad(out, leaves, grad_out)))
        (got, got_grads), (want, want_grads) = results
        torch.testing.assert_close(got, want)
        assert_grads_close(got_grads, want_grads)
print('ok')
'''


@needs_extension
@pytest.mark.parametrize('capability', ['default', 'avx2', 'avx512'])
def test_instruction_sets_match_pytorch_kernels(capability):
    """Every build of the small matrix products this CPU can run, chosen as ATen chooses its
    kernels (ATEN_CPU_CAPABILITY caps the set)."""
    script = INSTRUCTION_SET_CHECK.format(tests=osp.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    chosen, status = result.stdout.split()
    assert status == 'ok'
    widths = ['default', 'avx2', 'avx512']
    assert widths.index(chosen) <= widths.index(capability)
    if chosen != capability:
        pytest.skip(f'this CPU has no {capability} (the kernels chose {chosen})')
