"""Adaptive average pooling that exports to ONNX for any input size (the paper generator's
pooling to ``k x k``)."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['adaptive_avg_pool2d', 'adaptive_avg_pool2d_lowered']


def _bin_average(size: Tensor, bins: int, like: Tensor) -> Tensor:
    """(bins, size): row i averages the inputs of adaptive pooling's bin i,
    ``[floor(i * size / bins), ceil((i + 1) * size / bins))``."""
    index = torch.arange(bins, device=like.device).unsqueeze(1)
    begin = index * size // bins
    end = ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=like.device)
    inside = (position >= begin) & (position < end)
    return inside.to(like.dtype) / (end - begin).to(like.dtype)


def adaptive_avg_pool2d_lowered(input: Tensor, output_size: Tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as two ``MatMul`` with averaging matrices built from the input's
    size, so that it exports for any input size.

    The TorchScript exporter refuses adaptive pooling to a size that does not divide the input's,
    and the dynamo exporter freezes the example's bins into the graph, wrong for other sizes.
    """
    height, width = input.shape[2:]
    rows = _bin_average(height, output_size[0], input)
    cols = _bin_average(width, output_size[1], input)
    return rows @ input @ cols.transpose(0, 1)


def adaptive_avg_pool2d(input: Tensor, output_size: Tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d``, or :func:`adaptive_avg_pool2d_lowered` while exporting to
    ONNX."""
    if torch.onnx.is_in_onnx_export():
        return adaptive_avg_pool2d_lowered(input, output_size)
    return F.adaptive_avg_pool2d(input, output_size)
