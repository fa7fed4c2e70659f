"""The compiled CPU kernels (drconv_mmdet/ops/csrc/region_products_cpu.cpp) against the PyTorch
kernels, and how the op finds them. Their loop-definition tests are the 'cpu_extension' strategy
of test_region_products.py."""
import importlib
import os
import os.path as osp
import shutil
import struct
import subprocess
import sys
import warnings
from unittest import mock

import pytest
import torch
from helpers import NOT_BUILT, relative_error

from drconv_mmdet.ops import cpu_extension, dr_conv2d, region_products, use_kernels
from drconv_mmdet.ops.geometry import make_geometry

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


def output_and_grads(args, geo, kernels, grad_out=None):
    leaves = [t.detach().clone().requires_grad_() for t in args]
    with use_kernels(kernels):
        out = dr_conv2d(*leaves, *geo)
        if grad_out is None:
            grad_out = torch.randn(out.shape,
                                   generator=torch.Generator().manual_seed(1)).to(out.dtype)
        return out, torch.autograd.grad(out, leaves, grad_out), grad_out


def assert_grads_close(got_grads, want_grads):
    """The gradients of (input, weight, guide, bias) of two kernels: weight gradients sum up to
    thousands of float32 products, in another order in each kernel (and each BLAS), so their
    tolerance is relative to their largest value."""
    for name, got, want in zip(('input', 'weight', 'guide', 'bias'), got_grads, want_grads):
        atol = 1e-5 * want.abs().max().item() if name == 'weight' else None
        torch.testing.assert_close(got,
                                   want,
                                   rtol=None if atol is None else 1.3e-6,
                                   atol=atol,
                                   msg=name)


@needs_extension
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('shape', SHAPES)
def test_matches_pytorch_kernels(shape, threads):
    args, geo = random_args(shape)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # 3 threads for one sample: channel blocks
    try:
        got, got_grads, grad_out = output_and_grads(args, geo, 'compiled')
    finally:
        torch.set_num_threads(old_threads)
    want, want_grads, _ = output_and_grads(args, geo, 'pytorch', grad_out)
    torch.testing.assert_close(got, want)
    assert_grads_close(got_grads, want_grads)


# NCHW inputs of LARGE's shape take channels-last rows (samples and windows too large for the
# planes), of LONG_MAP's planes (samples too large, windows short).
LARGE = (2, 70, 9, 3, (41, 47), (3, 3), (1, 1), (1, 1), (1, 1))
LONG_MAP = (1, 4, 5, 2, (180, 200), (3, 3), (1, 1), (1, 1), (1, 1))


def as_layout(x, layout):
    if layout == 'channels_last':
        return x.contiguous(memory_format=torch.channels_last)
    if layout == 'non_contiguous':  # every other column of a map twice as wide
        return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


@needs_extension
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'non_contiguous'])
@pytest.mark.parametrize('shape', [SHAPES[2], SHAPES[3], LONG_MAP, LARGE])
def test_layouts_match_pytorch_kernels(shape, layout):
    """NCHW inputs whose samples fit in the cache or whose windows are short run on planes, the
    others on channels-last rows; the results have the layout nn.Conv2d gives."""
    (x, weight, guide, bias), geo = random_args(shape)
    args = (as_layout(x, layout), weight, as_layout(guide, layout), bias)
    planar = cpu_extension.works_on_planes(args[0], weight, *map(list, geo))
    assert planar == (shape is not LARGE and layout != 'channels_last')
    got, got_grads, grad_out = output_and_grads(args, geo, 'compiled')
    want, want_grads, _ = output_and_grads(args, geo, 'pytorch', grad_out)
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
    return [
        guide,
        guide.bfloat16(),
        guide.half(),
        guide.double(),
        guide.contiguous(memory_format=torch.channels_last),
        as_layout(guide, 'non_contiguous'),
        guide.transpose(-1, -2).contiguous().transpose(-1, -2)
    ]


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
    results = [(cpu_extension.region_forward(x_, w_, regions, b_, *map(list, geo)),
                *cpu_extension.region_backward(g_, x_, w_, regions, *map(list, geo), True, True))
               for x_, w_, b_, g_ in ((x, weight, bias, grad_out),
                                      (x.float(), weight.float(), bias.float(), grad_out.float()))]
    for name, got, want in zip(('output', 'input', 'weight'), *results):
        assert got.dtype == dtype
        assert relative_error(got, want) < 1e-2, name


@needs_extension
def test_only_needed_gradients():
    (x, weight, guide, bias), geo = random_args(SHAPES[0], torch.float64)
    regions = region_products._regions(guide)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:], dtype=x.dtype)
    both = cpu_extension.region_backward(grad_out, x, weight, regions, *map(list, geo), True, True)
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


def error_args(**change):
    """Arguments of a valid call of every op (B=1, C=3, O=4, m=2, 2x4 input, 1x2 filters), with
    ``change`` applied; a ``*_device`` key puts that tensor on the meta device."""
    args = dict(grad_output=torch.zeros(1, 4, 2, 3),
                input=torch.zeros(1, 3, 2, 4),
                weight=torch.zeros(1, 2, 4, 3, 1, 2),
                regions=torch.zeros(1, 6, dtype=torch.long),
                bias=torch.zeros(4),
                stride=[1, 1],
                padding=[0, 0],
                dilation=[1, 1])
    for name, value in change.items():
        if name.endswith('_device'):
            name = name[:-len('_device')]
            value = args[name].to('meta')
        args[name] = value
    return args


def call_op(name, args, redispatch_to_cpu=False):
    """Calls torch.ops.drconv_cpu.<name> with the arguments it takes from ``args``; with
    ``redispatch_to_cpu``, straight to its CPU kernel whatever the tensors' devices (the
    dispatcher would refuse a meta tensor before the kernel sees it)."""
    geo = (args['stride'], args['padding'], args['dilation'])
    operands = {
        'region_forward': (args['input'], args['weight'], args['regions'], args['bias'], *geo),
        'region_backward':
        (args['grad_output'], args['input'], args['weight'], args['regions'], *geo, True, True),
        'guide_dots': (args['grad_output'], args['input'], args['weight'], *geo),
        'works_on_planes': (args['input'], args['weight'], *geo),
    }[name]
    op = getattr(torch.ops.drconv_cpu, name).default
    if redispatch_to_cpu:
        return op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *operands)
    return op(*operands)


OPS = ['region_forward', 'region_backward', 'guide_dots', 'works_on_planes']
# The checks every op makes of input, weight and the geometry.
COMMON_ERRORS = [
    (dict(input=torch.zeros(1, 3, 2)),
     r'input must be 4-D \(B, C, H, W\), but got shape \[1, 3, 2\]'),
    (dict(input=torch.zeros(1, 3, 2, 4, dtype=torch.int32)),
     'input must be Double, Float, BFloat16 or Half, but got Int'),
    (dict(weight=torch.zeros(1, 2, 4, 3, 1)), r'weight must be 6-D \(B, m, O, C, kh, kw\)'),
    (dict(weight=torch.zeros(1, 2, 3, 4, 1, 2).transpose(2, 3)), 'weight must be contiguous'),
    (dict(weight=torch.zeros(1, 2, 4, 3, 1, 2, dtype=torch.float64)),
     r'weight must have the dtype of input \(Float\), but got Double'),
    (dict(weight=torch.zeros(1, 2, 4, 5, 1, 2)),
     r'weight must have shape \(B=1, m>0, O, C=3, kh>0, kw>0\), but got \[1, 2, 4, 5, 1, 2\]'),
    (dict(weight=torch.zeros(2, 2, 4, 3, 1, 2)), r'weight must have shape \(B=1'),
    (dict(weight=torch.zeros(1, 0, 4, 3, 1, 2)), r'weight must have shape \(B=1, m>0'),
    (dict(weight=torch.zeros(1, 2, 4, 3, 0, 2)), r'weight must have shape \(B=1, m>0'),
    (dict(stride=[1]), r'stride must hold 2 values, but got \[1\]'),
    (dict(padding=[0, 0, 0]), 'padding must hold 2 values'),
    (dict(dilation=[1]), 'dilation must hold 2 values'),
    (dict(stride=[0, 1]), 'stride and dilation must be positive and padding non-negative'),
    (dict(dilation=[1, -1]), 'stride and dilation must be positive'),
    (dict(padding=[-1, 0]), 'padding non-negative'),
    (dict(weight=torch.zeros(1, 2, 4, 3, 3, 2)),
     r'input of spatial size \[2, 4\] is too small for the filters'),
]
# The checks of the ops that take regions, bias or an output gradient.
OP_ERRORS = [
    ('region_forward', dict(regions=torch.full((1, 6), 2)),
     r'regions must lie in \[0, 2\), but sample 0 has 2'),
    ('region_backward', dict(regions=torch.full((1, 6), -1)),
     r'regions must lie in \[0, 2\), but sample 0 has -1'),
    ('region_forward', dict(regions=torch.zeros(1, 5, dtype=torch.long)),
     r'regions must be an int64 tensor of shape \(B=1, Ho\*Wo=6\) or a floating guide of shape '
     r'\(B=1, m=2, Ho=2, Wo=3\), but got Long of shape \[1, 5\]'),
    ('region_forward', dict(regions=torch.zeros(1, 6, dtype=torch.int32)),
     'regions must be an int64 tensor'),
    ('region_forward', dict(regions=torch.zeros(1, 3, 2, 3)),
     r'or a floating guide of shape \(B=1, m=2, Ho=2, Wo=3\), but got Float of shape \[1, 3'),
    ('region_backward', dict(regions=torch.zeros(1, 2, 2, 3, dtype=torch.long)),
     'regions must be an int64 tensor'),
    ('region_forward', dict(bias=torch.zeros(3)),
     r'bias must be a Float tensor of shape \(O=4\), but got Float of shape \[3\]'),
    ('region_forward', dict(bias=torch.zeros(1, 4)), r'but got Float of shape \[1, 4\]'),
    ('region_forward', dict(bias=torch.zeros(4, dtype=torch.float64)),
     r'bias must be a Float tensor of shape \(O=4\), but got Double'),
    ('region_backward', dict(grad_output=torch.zeros(1, 4, 2, 2)),
     r'grad_output must be a Float tensor of shape \(1, 4, 2, 3\), but got Float of shape '
     r'\[1, 4, 2, 2\]'),
    ('guide_dots', dict(grad_output=torch.zeros(1, 4, 2, 3, dtype=torch.float64)),
     r'grad_output must be a Float tensor of shape \(1, 4, 2, 3\), but got Double'),
    ('guide_dots', dict(grad_output=torch.zeros(1, 4, 6)), 'grad_output must be a Float tensor'),
]


@needs_extension
@pytest.mark.parametrize('change, message', COMMON_ERRORS)
@pytest.mark.parametrize('op', OPS)
def test_errors(op, change, message):
    call_op(op, error_args())
    with pytest.raises(RuntimeError, match=message):
        call_op(op, error_args(**change))


@needs_extension
@pytest.mark.parametrize('op, change, message', OP_ERRORS)
def test_op_errors(op, change, message):
    call_op(op, error_args())
    with pytest.raises(RuntimeError, match=message):
        call_op(op, error_args(**change))


@needs_extension
@pytest.mark.skipif(not hasattr(torch._ops.OpOverload, 'redispatch'),
                    reason='this torch has no OpOverload.redispatch to reach a CPU kernel with '
                    'tensors on another device')
@pytest.mark.parametrize('op, tensor', [
    ('region_forward', 'input'),
    ('region_forward', 'weight'),
    ('region_forward', 'regions'),
    ('region_forward', 'bias'),
    ('region_backward', 'grad_output'),
    ('guide_dots', 'grad_output'),
    ('works_on_planes', 'weight'),
])
def test_tensors_must_be_on_the_cpu(op, tensor):
    """The kernels read every tensor as host memory."""
    with pytest.raises(RuntimeError, match=f'{tensor} must be on the CPU, but is on meta'):
        call_op(op, error_args(**{f'{tensor}_device': None}), redispatch_to_cpu=True)


@needs_extension
def test_bias_of_any_layout():
    (x, weight, guide, bias), geo = random_args(SHAPES[0])
    strided = torch.stack([bias, bias], 1)[:, 0]
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        cpu_extension.region_forward(x, weight, guide, strided, *map(list, geo)),
        cpu_extension.region_forward(x, weight, guide, bias, *map(list, geo)))


def load_with(monkeypatch, error=None, builds=(), module=None):
    """Runs the loader with the import raising ``error`` (or giving ``module``) and ``builds``
    in the package, the kernels not required."""
    monkeypatch.delenv(cpu_extension.REQUIRE_VARIABLE, raising=False)

    def import_module(name):
        if error is not None:
            raise error
        return module

    monkeypatch.setattr(importlib, 'import_module', import_module)
    monkeypatch.setattr(cpu_extension.glob, 'glob', lambda pattern: list(builds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loaded = cpu_extension._load()
    return loaded, [str(w.message) for w in caught]


NOT_FOUND = ModuleNotFoundError('no module', name=cpu_extension.MODULE_NAME)


def test_missing_extension_is_said_at_first_use(monkeypatch):
    """Without a build, importing is quiet: the op says so at its first call on CPU."""
    (loaded, missing), messages = load_with(monkeypatch, NOT_FOUND)
    assert not loaded and messages == []
    assert missing.startswith(f'the compiled DRConv CPU kernels are not built for torch '
                              f'{torch.__version__}; the op runs its PyTorch kernels on CPU')
    assert '`pip install --no-build-isolation --no-deps .`' in missing
    monkeypatch.setattr(cpu_extension, '_MISSING', missing)
    with pytest.warns(UserWarning, match='are not built for torch'):
        cpu_extension.warn_unavailable()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        cpu_extension.warn_unavailable()


def test_build_for_another_torch_warns(monkeypatch):
    (loaded, missing), messages = load_with(monkeypatch, NOT_FOUND,
                                            ['/pkg/drconv_mmdet/_C_torch0_1_0.so'])
    assert not loaded and missing is None
    assert len(messages) == 1
    assert 'built for another torch (_C_torch0_1_0.so)' in messages[0]
    assert 'Rebuild with `pip install --no-build-isolation --no-deps -e .`' in messages[0]


@pytest.mark.parametrize('error', [
    ImportError('undefined symbol: _ZN2at4mm'),
    OSError('cannot open shared object file'),
    ModuleNotFoundError('No module named libfoo', name='libfoo'),
])
def test_broken_extension_warns(monkeypatch, error):
    assert load_with(monkeypatch, error) == ((False, None), [
        f'the compiled DRConv CPU kernels ({cpu_extension.MODULE_NAME}) are not used ({error}); '
        'the op runs its PyTorch kernels on CPU'
    ])


@needs_extension
def test_extension_whose_errors_do_not_raise_is_refused(monkeypatch):
    module = importlib.import_module(cpu_extension.MODULE_NAME)
    monkeypatch.setattr(cpu_extension, '_errors_raise', lambda path: 'its errors do not raise')
    (loaded, _), messages = load_with(monkeypatch, module=module)
    assert not loaded
    assert messages == [
        f'the compiled DRConv CPU kernels ({cpu_extension.MODULE_NAME}) are not '
        f'used ({module.__file__}: its errors do not raise); the op runs its '
        'PyTorch kernels on CPU'
    ]


@pytest.mark.parametrize('error, builds', [(NOT_FOUND, ()),
                                           (NOT_FOUND, ['/pkg/drconv_mmdet/_C_torch0_1_0.so']),
                                           (ImportError('undefined symbol'), ())])
def test_required_kernels_raise(monkeypatch, error, builds):
    """DRCONV_REQUIRE_CPU_KERNELS=1: no fallback, whatever kept the kernels out."""
    monkeypatch.setattr(importlib, 'import_module', mock.Mock(side_effect=error))
    monkeypatch.setattr(cpu_extension.glob, 'glob', lambda pattern: list(builds))
    monkeypatch.setenv(cpu_extension.REQUIRE_VARIABLE, '1')
    with pytest.raises(RuntimeError,
                       match='DRCONV_REQUIRE_CPU_KERNELS=1, but the compiled DRConv CPU kernels'):
        cpu_extension._load()


def test_self_test_verdicts(tmp_path, monkeypatch):
    """A child process calls the kernels where they must raise: an end by a signal (as
    std::terminate's abort) or without the verdict refuses the build; only a passing build's
    verdict is kept, for its size and modification time."""
    library = tmp_path / 'library.so'
    library.write_bytes(b'')
    monkeypatch.setattr(cpu_extension, '_SELF_TEST', 'import os; os.abort()')
    assert cpu_extension._errors_raise(str(library)).startswith(
        'its errors do not raise RuntimeError: a call that must raise ended with exit status -6')
    monkeypatch.setattr(cpu_extension, '_SELF_TEST', 'print("done")')
    assert 'exit status 0 (done)' in cpu_extension._errors_raise(str(library))
    assert not (tmp_path / '__pycache__' / 'library.so.selftest').exists()
    monkeypatch.setattr(cpu_extension, '_SELF_TEST', 'print("raises")')
    assert cpu_extension._errors_raise(str(library)) is None
    assert (tmp_path / '__pycache__' / 'library.so.selftest').exists()
    monkeypatch.setattr(cpu_extension, '_SELF_TEST', 'import os; os.abort()')
    assert cpu_extension._errors_raise(str(library)) is None  # kept
    library.write_bytes(b'rebuilt')
    assert 'exit status -6' in cpu_extension._errors_raise(str(library))


def without_unwind_index(path):
    """Turns the PT_GNU_EH_FRAME program header of a 64-bit little-endian ELF library (the index
    through which the unwinder finds its frames' unwind tables) into PT_NULL, as a link without
    ``--eh-frame-hdr`` leaves it; whether there was one."""
    data = bytearray(path.read_bytes())
    if data[:6] != b'\x7fELF\x02\x01':
        return False
    table, = struct.unpack_from('<Q', data, 0x20)  # e_phoff
    entry, count = struct.unpack_from('<HH', data, 0x36)  # e_phentsize, e_phnum
    headers = [table + i * entry for i in range(count)]
    found = [at for at in headers if struct.unpack_from('<I', data, at)[0] == 0x6474e550]
    for at in found:
        struct.pack_into('<I', data, at, 0)
    path.write_bytes(bytes(data))
    return bool(found)


@needs_extension
def test_self_test_judges_builds(tmp_path):
    """The build raises its errors in the child process; the same library without its unwind
    index ends the process at its first error (docs/platforms.md) and is refused. Copies, so
    that their verdicts are computed here."""
    built = importlib.import_module(cpu_extension.MODULE_NAME).__file__
    copy = tmp_path / 'passes' / osp.basename(built)
    copy.parent.mkdir()
    shutil.copy2(built, copy)
    assert cpu_extension._errors_raise(str(copy)) is None
    broken = tmp_path / 'aborts' / osp.basename(built)
    broken.parent.mkdir()
    shutil.copy2(built, broken)
    if not without_unwind_index(broken):
        pytest.skip('the build is no 64-bit little-endian ELF library with an unwind index')
    assert cpu_extension._errors_raise(str(broken)) == (
        'its errors do not raise RuntimeError: a call that must raise ended with exit status -6 '
        "(terminate called after throwing an instance of 'c10::Error')")


def pytorch_dots(x, weight, grad_out, geo):
    return region_products.region_response_dots(
        x, weight, grad_out, make_geometry(x.shape[-2:], weight.shape[-2:], *geo))


@needs_extension
@pytest.mark.parametrize('shape', SHAPES)
def test_guide_dots_match_pytorch_kernels(shape):
    """On planes the compiled kernels give the guide gradient's region responses."""
    (x, weight, guide, _), geo = random_args(shape)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:])
    got = cpu_extension.guide_dots(grad_out, x, weight, *map(list, geo))
    want = pytorch_dots(x, weight, grad_out, geo)
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
def test_guide_dots_dtypes(dtype):
    """Half types are computed in float32, float64 in float64: the dots have that dtype."""
    (x, weight, guide, _), geo = random_args(SHAPES[3], dtype)
    grad_out = torch.randn(x.shape[0], weight.shape[2], *guide.shape[-2:]).to(dtype)
    got = cpu_extension.guide_dots(grad_out, x, weight, *map(list, geo))
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = pytorch_dots(x.double(), weight.double(), grad_out.double(), geo)
    if dtype == torch.float64:
        torch.testing.assert_close(got, want)
    else:
        assert relative_error(got, want) < 1e-2


@needs_extension
def test_guide_dots_batch_zero():
    x, weight = torch.randn(0, 3, 5, 4), torch.randn(0, 2, 4, 3, 3, 3)
    dots = cpu_extension.guide_dots(torch.randn(0, 4, 3, 4), x, weight, [1, 1], [0, 1], [1, 1])
    assert dots.shape == (0, 2, 3, 4)


# Runs in a fresh process, whose kernels pick their instruction set once, capped by
# ATEN_CPU_CAPABILITY: the kernels against the PyTorch kernels on shapes that take the planes.
INSTRUCTION_SET_CHECK = '''
import os.path as osp, sys, torch
sys.path[:0] = [{tests!r}, osp.dirname({tests!r})]  # test modules, helpers
from test_cpu_extension import SHAPES, assert_grads_close, output_and_grads, random_args
from drconv_mmdet.ops import cpu_extension

print(cpu_extension.instruction_set())
for shape in SHAPES:
    for dtype in (torch.float32, torch.float64):
        args, geo = random_args(shape, dtype)
        got, got_grads, grad_out = output_and_grads(args, geo, 'compiled')
        want, want_grads, _ = output_and_grads(args, geo, 'pytorch', grad_out)
        torch.testing.assert_close(got, want)
        assert_grads_close(got_grads, want_grads)
print('ok')
'''


@pytest.mark.slow
@needs_extension
@pytest.mark.parametrize('capability', ['default', 'avx2', 'avx512'])
def test_instruction_sets_match_pytorch_kernels(capability):
    """Every build of the small matrix products this CPU can run, chosen as ATen chooses its
    kernels (ATEN_CPU_CAPABILITY caps the set)."""
    script = INSTRUCTION_SET_CHECK.format(tests=osp.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, '-c', script],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    chosen, status = result.stdout.split()
    assert status == 'ok'
    widths = ['default', 'avx2', 'avx512']
    assert widths.index(chosen) <= widths.index(capability)
    if chosen != capability:
        pytest.skip(f'this CPU has no {capability} (the kernels chose {chosen})')
