"""The compiled CPU kernels of the DRConv op, where they are built.

``pip install --no-build-isolation -e .`` (or any install whose build can import torch and run a
C++ compiler) compiles ``drconv_mmdet/ops/csrc/region_products_cpu.cpp`` into
``drconv_mmdet._C_torch<version>``, which registers ``torch.ops.drconv_cpu.region_forward``,
``region_backward``, ``guide_dots`` and ``works_on_planes``. An extension only works with the
torch it was compiled against, so its name carries that torch's version: environments with
different torch can share one editable checkout, each finding its own build.

Without a build (installed without a compiler, or under pip's build isolation, as ``mim
install`` does) the op runs its PyTorch kernels, the reference the compiled kernels are tested
against: :func:`warn_unavailable` says so once, at the op's first call on CPU. A build that is
present but not usable warns when this module is imported, and the PyTorch kernels run: a build
for another torch, one that does not load, or one whose errors end the process instead of
raising ``RuntimeError`` (checked once per build in a child process, see docs/platforms.md).

With ``DRCONV_REQUIRE_CPU_KERNELS=1`` (:data:`REQUIRE_VARIABLE`) the kernels are required: the
build fails where they do not compile, and importing this module raises ``RuntimeError`` where
they are not usable. The project's setup sets it where a C++ compiler works, so that its tests
fail instead of skipping the compiled kernels.
"""
import glob
import importlib
import os
import os.path as osp
import subprocess
import sys
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'AVAILABLE', 'MODULE_NAME', 'REQUIRE_VARIABLE', 'region_forward', 'region_backward',
    'guide_dots', 'works_on_planes', 'instruction_set', 'required', 'warn_unavailable'
]

# The extension module built for the running torch (its version without a local suffix such
# as '+cpu').
MODULE_NAME = 'drconv_mmdet._C_torch' + torch.__version__.split('+')[0].replace('.', '_')
REQUIRE_VARIABLE = 'DRCONV_REQUIRE_CPU_KERNELS'

# Run in a child process on the extension's file: a build whose C++ exceptions do not reach
# Python ends the process at its first error. One error is raised on the calling thread, one
# on ATen's worker threads (the regions' check runs inside a parallel loop over samples).
_SELF_TEST = '''
import importlib.util, sys
import torch
spec = importlib.util.spec_from_file_location(sys.argv[1], sys.argv[2])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
torch.set_num_threads(2)
calls = [
    ('input must be 4-D', (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1, 1, 1),
                           torch.zeros(1, 1, dtype=torch.long))),
    ('regions must lie in', (torch.zeros(4, 1, 1, 1), torch.zeros(4, 1, 1, 1, 1, 1),
                             torch.ones(4, 1, dtype=torch.long))),
]
for message, (input, weight, regions) in calls:
    try:
        torch.ops.drconv_cpu.region_forward(input, weight, regions, None, [1, 1], [0, 0], [1, 1])
    except RuntimeError as error:
        assert message in str(error), str(error)
    else:
        sys.exit(f'no error for {message!r}')
print('raises')
'''


def required() -> bool:
    """Whether the compiled kernels must build and load (``DRCONV_REQUIRE_CPU_KERNELS=1``)."""
    return os.environ.get(REQUIRE_VARIABLE, '0') == '1'


def _self_test_cache(path: str) -> str:
    return osp.join(osp.dirname(path), '__pycache__', osp.basename(path) + '.selftest')


def _errors_raise(path: str) -> Optional[str]:
    """Whether the extension at ``path`` raises its errors as ``RuntimeError``: None where it
    does, else what happened. The verdict is kept next to the build, keyed by its size and
    modification time, so that a build is checked once."""
    stat = os.stat(path)
    key = f'{stat.st_size} {stat.st_mtime_ns}'
    cache = _self_test_cache(path)
    try:
        with open(cache) as f:
            if f.read() == key:
                return None
    except OSError:
        pass
    try:
        result = subprocess.run([sys.executable, '-c', _SELF_TEST, MODULE_NAME, path],
                                capture_output=True,
                                text=True,
                                timeout=300)
    except subprocess.TimeoutExpired:
        return 'its error check did not finish in 300 s'
    if result.returncode != 0 or result.stdout.split() != ['raises']:
        # std::terminate's first line names the exception; a Python error's last line.
        lines = (result.stderr.strip() or result.stdout.strip() or 'no output').splitlines()
        said = next((line for line in lines if line.startswith('terminate called')), lines[-1])
        return (f'its errors do not raise RuntimeError: a call that must raise ended with exit '
                f'status {result.returncode} ({said})')
    try:
        os.makedirs(osp.dirname(cache), exist_ok=True)
        with open(cache, 'w') as f:
            f.write(key)
    except OSError:  # a read-only install checks in every process
        pass
    return None


def _load() -> Tuple[bool, Optional[str]]:
    """Imports and checks the extension of :data:`MODULE_NAME`: ``(True, None)`` where its ops
    are usable; else False and, where no build exists, why (said at the op's first call on
    CPU). Warns of a build that exists but is not usable; raises ``RuntimeError`` instead where
    the kernels are required."""
    problem = None
    try:
        module = importlib.import_module(MODULE_NAME)
    except ModuleNotFoundError as error:
        if error.name != MODULE_NAME:
            problem = _broken(error)
        else:
            built = glob.glob(osp.join(osp.dirname(osp.dirname(__file__)), '_C_torch*'))
            if not built:
                missing = (f'the compiled DRConv CPU kernels are not built for torch '
                           f'{torch.__version__}; the op runs its PyTorch kernels on CPU, which '
                           'are slower. Build them with a C++ compiler: `pip install '
                           '--no-build-isolation --no-deps .` (or `-e .`) in the source tree')
                if required():
                    raise RuntimeError(f'{REQUIRE_VARIABLE}=1, but {missing}') from None
                return False, missing
            problem = (f'the compiled DRConv CPU kernels are built for another torch '
                       f'({", ".join(sorted(osp.basename(path) for path in built))}), not for '
                       f'torch {torch.__version__}; the op runs its PyTorch kernels on CPU. '
                       f'Rebuild with `pip install --no-build-isolation --no-deps -e .`')
    except (ImportError, OSError) as error:
        problem = _broken(error)
    else:
        if not hasattr(torch.ops.drconv_cpu, 'region_forward'):
            problem = _broken(f'{module.__file__} registers no ops')
        else:
            failure = _errors_raise(module.__file__)
            if failure is not None:
                problem = _broken(f'{module.__file__}: {failure}')
    if problem is None:
        return True, None
    if required():
        raise RuntimeError(f'{REQUIRE_VARIABLE}=1, but {problem}')
    warnings.warn(problem)
    return False, None


def _broken(error: object) -> str:
    return (f'the compiled DRConv CPU kernels ({MODULE_NAME}) are not used ({error}); the op '
            'runs its PyTorch kernels on CPU')


AVAILABLE, _MISSING = _load()


def warn_unavailable() -> None:
    """Warns, once per process, that the op runs its PyTorch kernels on CPU because the compiled
    kernels are not built. The op calls it where a CPU call falls back; a build that exists but
    is not usable was already reported when this module was imported."""
    global _MISSING
    if _MISSING is not None:
        warnings.warn(_MISSING, stacklevel=2)
        _MISSING = None


def region_forward(input: Tensor, weight: Tensor, regions: Tensor, bias: Optional[Tensor],
                   stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """Output pixel ``p`` of sample ``b`` is ``weight[b, regions[b, p]] @ window(b, p)`` (+ bias).

    Every argument is checked (``RuntimeError`` names it); all tensors on the CPU.

    Args:
        input (Tensor[B, C, H, W]): any layout; float64, float32, bfloat16 or float16.
        weight (Tensor[B, m, O, C, kh, kw]): contiguous, of the input's dtype, ``m >= 1``.
        regions (Tensor[B, Ho*Wo] or Tensor[B, m, Ho, Wo]): the int64 region of every output
            pixel, in ``[0, m)``, or the guide, of any floating dtype and layout, whose argmax
            over ``m`` (the first maximum winning, as ``torch.argmax``) the kernels take.
        bias (Tensor[O], optional): of the input's dtype, any layout.
        stride, padding, dilation: ``[h, w]`` each.

    Returns:
        Tensor[B, O, Ho, Wo]: channels-last where ``input`` is (``conv_memory_format``).
    """
    return torch.ops.drconv_cpu.region_forward(input, weight, regions, bias, stride, padding,
                                               dilation)


def region_backward(grad_output: Tensor, input: Tensor, weight: Tensor, regions: Tensor,
                    stride: List[int], padding: List[int], dilation: List[int], need_input: bool,
                    need_weight: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`region_forward` for ``input`` and ``weight``, with the regions fixed.

    Args:
        grad_output (Tensor[B, O, Ho, Wo]): any layout, of the input's dtype.
        input, weight, regions, stride, padding, dilation: as for :func:`region_forward`.
        need_input, need_weight: which gradients to compute.

    Returns:
        (Tensor[B, C, H, W] or None, Tensor[B, m, O, C, kh, kw] or None): the input gradient in
        the input's ``conv_memory_format``, the weight gradient contiguous; None where not
        needed.
    """
    return torch.ops.drconv_cpu.region_backward(grad_output, input, weight, regions, stride,
                                                padding, dilation, need_input, need_weight)


def guide_dots(grad_output: Tensor, input: Tensor, weight: Tensor, stride: List[int],
               padding: List[int], dilation: List[int]) -> Optional[Tensor]:
    """``<grad_output[b, :, p], weight[b, j] @ window(b, p)>`` for every region ``j`` and output
    pixel ``p``: the dot products of the guide's straight-through gradient (Eq. 7).

    They are computed where the kernels work on NCHW planes (:func:`works_on_planes`);
    elsewhere the result is None, and grouped convolutions over whole maps are the faster way.

    Args:
        grad_output (Tensor[B, O, Ho, Wo]): of the input's dtype, any layout.
        input, weight, stride, padding, dilation: as for :func:`region_forward`.

    Returns:
        Tensor[B, m, Ho, Wo] or None: in float32 (float64 for float64 inputs).
    """
    return torch.ops.drconv_cpu.guide_dots(grad_output, input, weight, stride, padding, dilation)


def works_on_planes(input: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                    dilation: List[int]) -> bool:
    """Whether the kernels work on a call's NCHW planes rather than on channels-last rows: an
    NCHW input whose windows hold at most 512 values, or whose sample's input and output fit in
    a core's cache together. Arguments as for :func:`region_forward`."""
    return torch.ops.drconv_cpu.works_on_planes(input, weight, stride, padding, dilation)


def instruction_set() -> str:
    """The instruction set of the kernels' small matrix products in this process: 'avx512',
    'avx2' or 'default'. No wider than the ``ATEN_CPU_CAPABILITY`` environment variable allows,
    as ATen's own kernels."""
    return importlib.import_module(MODULE_NAME).instruction_set()
