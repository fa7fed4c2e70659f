"""Which kernels compute the DRConv op on which device, and how to choose them for a block.

Three implementations compute the op:

- ``'pytorch'``: the PyTorch kernels of :mod:`.region_products`, on every device and dtype;
  the fallback of the others and the reference they are tested against;
- ``'compiled'``: the compiled CPU kernels of :mod:`.cpu_extension`, where they are built;
  the guide gradient's dots on the PyTorch kernels where the compiled ones leave them;
- ``'triton'``: the Triton kernels of :mod:`.region_products_triton` (sync-free, capturable in
  CUDA graphs), with triton >= 3.0 on CUDA devices of compute capability 8.0 or more, for
  float32, float16 and bfloat16; on CPU tensors only in Triton's interpreter
  (``TRITON_INTERPRET=1``).

Each device type has its default (:data:`DEVICE_DEFAULTS`): the compiled kernels on CPU where
they are built, Triton on CUDA where it runs, the PyTorch kernels elsewhere. On torch >= 2.4
the op registers one kernel per device type of :data:`DEVICE_DEFAULTS` with torch.library (see
:mod:`.dr_conv2d`). :func:`use_kernels` chooses one implementation for the calls in a block, for
tests and benchmarks; the backward pass of a call runs the forward's choice.
"""
import contextlib
import contextvars
import functools
import importlib
from types import ModuleType
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from . import cpu_extension
from .geometry import Geometry
from .region_products import (bias_grad, conv_memory_format, quiet_under_tracing,
                              region_conv_forward, region_input_weight_grads, region_response_dots,
                              straight_through_guide_grad)

__all__ = [
    'IMPLEMENTATIONS', 'DEVICE_DEFAULTS', 'use_kernels', 'chosen_kernels', 'default_kernels',
    'kernels_for', 'triton_kernels', 'forward', 'backward'
]

IMPLEMENTATIONS = ('pytorch', 'compiled', 'triton')

# The implementation chosen by use_kernels, None for the per-device defaults. A context variable
# keeps the choice to the thread (or task) that made it.
_CHOICE: contextvars.ContextVar = contextvars.ContextVar('drconv_kernels', default=None)


@contextlib.contextmanager
def use_kernels(implementation: Optional[str]) -> Iterator[None]:
    """Computes the DRConv ops called in the block with ``implementation`` (one of
    :data:`IMPLEMENTATIONS`), or with each device's default for ``None``.

    A call whose tensors that implementation cannot take raises ``ValueError``.

    Examples::
        >>> with use_kernels('pytorch'):
        ...     out = dr_conv2d(x, weight, guide)
    """
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(f'implementation must be None or one of {IMPLEMENTATIONS}, but got '
                         f'{implementation!r}')
    token = _CHOICE.set(implementation)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def chosen_kernels() -> Optional[str]:
    """The implementation chosen by the innermost :func:`use_kernels`, or None."""
    return _CHOICE.get()


@functools.lru_cache(maxsize=None)
def triton_kernels() -> Optional[ModuleType]:
    """The Triton kernels' module, or None where triton >= 3.0 does not import (torch < 2.4
    ships triton 2). Imported on first use, so that importing this package does not import
    triton."""
    try:
        import triton
    except ImportError:
        return None
    if int(triton.__version__.split('.')[0]) < 3:
        return None
    return importlib.import_module('.region_products_triton', __package__)


def _triton_runs(input: Tensor) -> bool:
    """Whether the Triton kernels take this call: a dtype they have on a device where they run
    (compiled for CUDA devices of compute capability 8.0 or more)."""
    kernels = triton_kernels()
    if kernels is None or not kernels.supports(input.dtype, input.device):
        return False
    return kernels.INTERPRETED or torch.cuda.get_device_capability(input.device) >= (8, 0)


def _cpu_default(input: Tensor) -> str:
    if cpu_extension.AVAILABLE:
        return 'compiled'
    cpu_extension.warn_unavailable()  # once per process, where no build exists
    return 'pytorch'


def _cuda_default(input: Tensor) -> str:
    return 'triton' if _triton_runs(input) else 'pytorch'


# The default implementation of a call, per device type; other device types run the PyTorch
# kernels.
DEVICE_DEFAULTS: Dict[str, Callable[[Tensor], str]] = {'cpu': _cpu_default, 'cuda': _cuda_default}


def default_kernels(input: Tensor) -> str:
    """The implementation a call on ``input``'s device and dtype runs by default."""
    default = DEVICE_DEFAULTS.get(input.device.type)
    return 'pytorch' if default is None else default(input)


def kernels_for(input: Tensor, default: Optional[Callable[[Tensor], str]] = None) -> str:
    """The implementation of a call on ``input``: the chosen one, else ``default(input)``
    (:func:`default_kernels` if None).

    Raises:
        ValueError: where the chosen implementation cannot take ``input``.
    """
    implementation = chosen_kernels()
    if implementation is None:
        return (default or default_kernels)(input)
    if implementation == 'compiled' and not (cpu_extension.AVAILABLE
                                             and input.device.type == 'cpu'):
        raise ValueError(f'the compiled kernels take CPU tensors where they are built (built: '
                         f'{cpu_extension.AVAILABLE}), but got a tensor on {input.device}')
    if implementation == 'triton' and not _triton_runs(input):
        if triton_kernels() is None:
            raise ValueError('the Triton kernels need triton >= 3.0, which does not import here')
        raise ValueError(f'the Triton kernels do not run {input.dtype} on {input.device} here '
                         '(CUDA devices of compute capability 8.0 or more, float32, float16 or '
                         'bfloat16; CPU tensors in the interpreter, TRITON_INTERPRET=1)')
    return implementation


def _geometry_lists(geo: Geometry) -> Tuple[List[int], List[int], List[int]]:
    """Stride, padding and dilation as the compiled kernels take them."""
    return list(geo.stride), list(geo.padding), list(geo.dilation)


@quiet_under_tracing
def forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor], geo: Geometry,
            implementation: str) -> Tensor:
    """Forward of :func:`drconv_mmdet.ops.dr_conv2d` on validated arguments of one dtype, by
    ``implementation``; the output in ``conv_memory_format(input)``."""
    if implementation == 'triton':
        return triton_kernels().region_conv_forward(input, weight, guide, bias, geo,
                                                    conv_memory_format(input))
    if implementation == 'compiled':
        # The kernels take the argmax of the guide themselves.
        return cpu_extension.region_forward(input, weight.contiguous(), guide, bias,
                                            *_geometry_lists(geo))
    return region_conv_forward(input, weight, guide, bias, geo)


@quiet_under_tracing
def backward(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor, geo: Geometry,
             need_input: bool, need_weight: bool, need_guide: bool, need_bias: bool,
             implementation: str) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`forward` for ``(input, weight, guide, bias)``, by
    ``implementation``; ``None`` where not needed. ``guide`` gets the straight-through gradient
    (Eq. 7-8)."""
    grad_input = grad_weight = grad_guide = grad_bias = None
    if implementation == 'triton':
        grad_input, grad_weight, grad_guide = triton_kernels().region_conv_backward(
            grad_output, input, weight, guide, geo, need_input, need_weight, need_guide,
            conv_memory_format(input))
    else:
        compiled = implementation == 'compiled'
        if need_input or need_weight:
            if compiled:
                grad_input, grad_weight = cpu_extension.region_backward(
                    grad_output, input, weight.contiguous(), guide, *_geometry_lists(geo),
                    need_input, need_weight)
            else:
                grad_input, grad_weight = region_input_weight_grads(grad_output, input, weight,
                                                                    guide, geo, need_input,
                                                                    need_weight)
        if need_guide:
            # The compiled kernels compute the dots on NCHW maps with short windows or small
            # samples, where the PyTorch kernels' calls are too small to be efficient.
            dots = cpu_extension.guide_dots(grad_output, input, weight.contiguous(),
                                            *_geometry_lists(geo)) if compiled else None
            if dots is None:
                dots = region_response_dots(input, weight, grad_output, geo)
            grad_guide = straight_through_guide_grad(guide, dots)
    if need_bias:
        grad_bias = bias_grad(grad_output)
    return grad_input, grad_weight, grad_guide, grad_bias
