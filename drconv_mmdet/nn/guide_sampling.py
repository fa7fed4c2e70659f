"""Guides at a conv's input resolution taken where the conv samples: at its windows' centres.

Layers that share one guided mask (the official ShuffleNet blocks, DetNAS's searched branches)
compute the guide once and sample it for each conv of another stride or padding.
"""
from typing import Tuple

import torch
from torch import Tensor

from drconv_mmdet.ops import conv_output_size

__all__ = ['window_centres', 'sample_guide']


def window_centres(in_size: int, out_size: int, kernel_size: int, stride: int, padding: int,
                   dilation: int, device: torch.device) -> Tensor:
    """Input index of the centre of each output position's window, along one dimension.

    Window ``p`` covers ``p * stride - padding + dilation * i`` for ``i < kernel_size``; its
    centre is ``p * stride - padding + dilation * (kernel_size - 1) / 2``, rounded down when the
    window has an even extent. A centre in the padding (padding larger than half the window)
    is moved to the nearest input index.
    """
    offset = dilation * (kernel_size - 1) // 2 - padding
    centres = torch.arange(out_size, device=device) * stride + offset
    return centres.clamp_(0, in_size - 1)


def sample_guide(guide: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int]) -> Tensor:
    """A guide at a conv's input resolution, taken where the conv samples: at window centres.

    For a conv with this geometry, output pixel ``p`` gets the guide at the input pixel its
    window is centred on (:func:`window_centres`), not a nearest-neighbour resize, which drifts
    for odd sizes (rows 0, 1, 3, 5 instead of 0, 2, 4, 6 for ``H = 7``, ``k = 3``, stride 2,
    padding 1). Gradients flow back to the sampled positions.

    Args:
        guide (Tensor[B, m, H, W]): guide logits at the conv's input resolution.
        kernel_size, stride, padding, dilation (Tuple[int, int]): the conv's geometry.

    Returns:
        Tensor[B, m, Ho, Wo]: the guide at the conv's output resolution.
    """
    in_size = tuple(guide.shape[-2:])
    out_size = conv_output_size(in_size, kernel_size, stride, padding, dilation)
    for dim, geometry in zip((2, 3), zip(in_size, out_size, kernel_size, stride, padding,
                                         dilation)):
        guide = guide.index_select(dim, window_centres(*geometry, device=guide.device))
    return guide
