"""The compiled CPU kernels of the DRConv op, where they are built.

``pip install --no-build-isolation -e .`` (or any install whose build can import torch) compiles
``drconv_mmdet/ops/csrc/region_products_cpu.cpp`` into ``drconv_mmdet._C_torch<version>``, which
registers ``torch.ops.drconv_cpu.region_forward``, ``region_backward`` and ``guide_dots``.
An extension only works with the torch it was compiled against, so its name carries that
torch's version: environments with different torch can share one editable checkout, each
finding its own build.

Without a build (e.g. installed under pip's build isolation, as ``mim install`` does) the op
runs its PyTorch kernels, quietly: they are the reference the compiled kernels are tested
against. A build that is present but does not load warns once, and the PyTorch kernels run.
"""
import glob
import importlib
import os.path as osp
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'AVAILABLE', 'MODULE_NAME', 'region_forward', 'region_backward', 'guide_dots',
    'instruction_set'
]

# The extension module built for the running torch (its version without a local suffix such
# as '+cpu').
MODULE_NAME = 'drconv_mmdet._C_torch' + torch.__version__.split('+')[0].replace('.', '_')


def _load() -> bool:
    """Imports the extension of :data:`MODULE_NAME`; whether its ops are registered."""
    try:
        importlib.import_module(MODULE_NAME)
    except ModuleNotFoundError as error:
        if error.name != MODULE_NAME:
            _warn_broken(error)
            return False
        built = glob.glob(osp.join(osp.dirname(osp.dirname(__file__)), '_C_torch*'))
        if built:
            warnings.warn(
                f'the compiled DRConv CPU kernels are built for another torch '
                f'({", ".join(sorted(osp.basename(path) for path in built))}), not for torch '
                f'{torch.__version__}; the op runs its PyTorch kernels on CPU. Rebuild with '
                '`pip install --no-build-isolation --no-deps -e .`')
        return False
    except (ImportError, OSError) as error:
        _warn_broken(error)
        return False
    return hasattr(torch.ops.drconv_cpu, 'region_forward')


def _warn_broken(error: Exception) -> None:
    warnings.warn(f'the compiled DRConv CPU kernels ({MODULE_NAME}) do not load ({error}); the '
                  'op runs its PyTorch kernels on CPU')


AVAILABLE = _load()


def region_forward(input: Tensor, weight: Tensor, regions: Tensor, bias: Optional[Tensor],
                   stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """Output pixel ``p`` of sample ``b`` is ``weight[b, regions[b, p]] @ window(b, p)`` (+ bias).

    Args:
        input (Tensor[B, C, H, W]): any layout; float64, float32, bfloat16 or float16.
        weight (Tensor[B, m, O, C, kh, kw]): contiguous, of the input's dtype.
        regions (Tensor[B, Ho*Wo] or Tensor[B, m, Ho, Wo]): the int64 region of every output
            pixel, in ``[0, m)``, or the guide, of any floating dtype and layout, whose argmax
            over ``m`` (the first maximum winning, as ``torch.argmax``) the kernels take.
        bias (Tensor[O], optional): of the input's dtype.
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

    They are computed where the kernels work on NCHW planes: an NCHW input whose windows hold at
    most 512 values, or whose sample's input and output fit in a core's cache together;
    elsewhere the result is None, and grouped convolutions over whole maps are the faster way.

    Args:
        grad_output (Tensor[B, O, Ho, Wo]): of the input's dtype.
        input, weight, stride, padding, dilation: as for :func:`region_forward`.

    Returns:
        Tensor[B, m, Ho, Wo] or None: in float32 (float64 for float64 inputs).
    """
    return torch.ops.drconv_cpu.guide_dots(grad_output, input, weight, stride, padding, dilation)


def instruction_set() -> str:
    """The instruction set of the kernels' small matrix products in this process: 'avx512',
    'avx2' or 'default'. No wider than the ``ATEN_CPU_CAPABILITY`` environment variable allows,
    as ATen's own kernels."""
    return importlib.import_module(MODULE_NAME).instruction_set()
