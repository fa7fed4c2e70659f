"""The DRConv op in standard ONNX ops, for export.

:func:`dr_conv2d_lowered` computes what :func:`drconv_mmdet.ops.dr_conv2d` computes, in torch ops
that both ONNX exporters (``dynamo=True`` and the TorchScript one) turn into default-domain ONNX
ops with dynamic batch, height and width: ``ArgMax``, ``CumSum``, ``ScatterElements``,
``NonZero``, ``Gather``, ``MatMul``. Like the eager kernels it does the multiply-adds of one
convolution: each region's pixels are gathered from the padded input and multiplied by that
region's filter only. Sizes are read from tensors, never turned into Python numbers, so that
nothing of the example input's shape is frozen into the graph.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import IntPair, as_pair

__all__ = ['dr_conv2d_lowered']


def _region_ranks(region: Tensor, num_regions: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per sample: pixels per region ``count`` (B, m), where each region's run starts in the
    region-sorted pixel order ``start`` (B, m), that order itself ``order`` (B, HW): the
    pixel at sorted position q of sample b is ``order[b, q]``, and each pixel's ``rank`` among
    its region's pixels (B, HW).

    Counting sort by cumulative sums: no sort op, and the order within a region is the pixel
    order.
    """
    one_hot = (region.unsqueeze(2) == torch.arange(num_regions, device=region.device)).long()
    count = one_hot.sum(dim=1)
    start = count.cumsum(dim=1) - count
    rank = one_hot.cumsum(dim=1).gather(2, region.unsqueeze(2)).squeeze(2) - 1
    sorted_pos = start.gather(1, region) + rank
    pixel = torch.arange(region.shape[1], device=region.device).expand_as(region)
    order = torch.zeros_like(region).scatter(1, sorted_pos, pixel)
    return count, start, order, rank


def dr_conv2d_lowered(input: Tensor,
                      weight: Tensor,
                      guide: Tensor,
                      bias: Optional[Tensor] = None,
                      stride: IntPair = 1,
                      padding: IntPair = 0,
                      dilation: IntPair = 1) -> Tensor:
    """:func:`~drconv_mmdet.ops.dr_conv2d` (forward only) in ops that export to standard ONNX.

    Per region j (a static loop over the ``m`` regions): the slots ``0 .. P_j - 1``, ``P_j`` the
    largest count of region j over the batch (at least 1), come from ``NonZero``, so ``P_j`` is a
    dynamic size; sample b's slot s holds its s-th pixel of region j, or is a dummy when s is past
    that sample's count. The k x k windows of the slots' pixels are gathered as rows of the
    channels-last padded input and multiplied by the sample's region-j filter (one batched
    ``MatMul``). Every pixel then gathers its row of the regions' results; dummies are never read.
    With batch 1 this is one convolution of multiply-adds (plus one dummy row per empty region);
    a larger batch pads each region to its largest count over the batch.

    Same arguments and shapes as :func:`~drconv_mmdet.ops.dr_conv2d`, unchecked: its checks turn
    sizes into Python numbers, which would freeze them in the exported graph. ``guide`` gives the
    output size.
    """
    stride = as_pair(stride, 'stride', 1)
    padding = as_pair(padding, 'padding', 0)
    dilation = as_pair(dilation, 'dilation', 1)
    batch, channels = input.shape[:2]
    # Static: the regions are a Python loop and the taps a constant.
    num_regions, out_channels = int(weight.shape[1]), int(weight.shape[2])
    kernel = (int(weight.shape[4]), int(weight.shape[5]))
    out_height, out_width = guide.shape[2:]
    device = input.device

    if padding != (0, 0):
        input = F.pad(input, (padding[1], padding[1], padding[0], padding[0]))
    padded_height, padded_width = input.shape[2:]
    # (B*Hp*Wp, C): one row per padded pixel, so that a window is k*k whole-row gathers.
    rows = input.permute(0, 2, 3, 1).reshape(-1, channels)
    taps = (torch.arange(kernel[0], device=device).unsqueeze(1) * (dilation[0] * padded_width) +
            torch.arange(kernel[1], device=device) * dilation[1]).flatten()
    sample_offset = (torch.arange(batch, device=device) * (padded_height * padded_width)).view(
        -1, 1)
    # (B, m, O, kh*kw*C): tap-major, like the gathered windows.
    filters = weight.permute(0, 1, 2, 4, 5, 3).flatten(3)

    region = guide.argmax(dim=1).flatten(1)
    count, start, order, rank = _region_ranks(region, num_regions)
    pixel_slots = torch.arange(region.shape[1], device=device)
    values, slot_counts = [], []
    for j in range(num_regions):
        # At least one slot, a dummy if the region is empty: a dynamic size of 0 in a Reshape
        # means "keep the input's size" in ONNX (allowzero=0, what both exporters emit).
        used = (pixel_slots < count[:, j:j + 1].clamp(min=1)).any(dim=0)
        slot = used.nonzero()[:, 0]
        slot_counts.append(used.sum())
        valid = slot < count[:, j:j + 1]
        pixel = order.gather(1, torch.where(valid, start[:, j:j + 1] + slot, 0))
        # No `%`: the dynamo exporter cannot translate a remainder by a symbolic size.
        row = pixel // out_width
        corner = (row * (stride[0] * padded_width) + (pixel - row * out_width) * stride[1] +
                  sample_offset)
        windows = rows.index_select(0, (corner.unsqueeze(2) + taps).flatten())
        windows = windows.view(batch, slot.shape[0], kernel[0] * kernel[1] * channels)
        values.append(windows @ filters[:, j].transpose(1, 2))
    # Each pixel's row in the concatenated (B, S, O) results: its region's first slot plus its
    # rank. One gather of whole rows, where a scatter would go element by element.
    values = torch.cat(values, dim=1)
    slot_counts = torch.stack(slot_counts)
    first_slot = slot_counts.cumsum(dim=0) - slot_counts
    sample_rows = torch.arange(batch, device=device).view(-1, 1) * values.shape[1]
    position = (first_slot[region] + rank + sample_rows).flatten()
    output = values.reshape(-1, out_channels).index_select(0, position)
    output = output.view(batch, out_height, out_width, out_channels).permute(0, 3, 1, 2)
    if bias is not None:
        output = output + bias.view(1, -1, 1, 1)
    return output
