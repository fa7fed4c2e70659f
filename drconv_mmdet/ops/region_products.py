"""The DRConv op's kernels: region-bucketed matrix products in plain PyTorch.

Every output pixel is computed with the filter of its region only: pixels are bucketed by region
and each bucket is one matrix product with its region's filter.
"""
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Geometry

__all__ = ['region_conv_forward', 'region_conv_backward']

# Fewest values a band of gathered windows may hold (16 MiB of float32): below that, more bands
# only add small matrix products, whose fixed cost dominates on CPU.
MIN_BAND_VALUES = 1 << 22


def _bands(channels: int, out_channels: int, geo: Geometry) -> List[slice]:
    """Splits a sample's flat output pixels into bands of whole output rows.

    Gathering every k x k window at once would hold k*k copies of the input (the memory fault of
    the official CUDA code); a band's gathered windows hold about as many values as one sample's
    input or output, whichever is larger, and at least ``MIN_BAND_VALUES`` so that small maps are
    not cut into many small matrix products.
    """
    height, width = geo.out_size
    budget = max(channels * height * width, out_channels * height * width, MIN_BAND_VALUES)
    rows_per_band = max(1, budget // (channels * geo.taps * width))
    return [slice(start * width, min(start + rows_per_band, height) * width)
            for start in range(0, height, rows_per_band)]


def _pixel_rows(image: Tensor, scratch: '_Scratch', role: str) -> Tensor:
    """A (C, H, W) image as (H*W, C), one pixel's channels per contiguous row.

    A view of a channels-last image, else a copy into a buffer reused for every sample. Gathering
    whole rows is what makes the window gathers cheap; gathering columns of the usual
    (C, pixels) layout reads one value per cache line.
    """
    pixels = image.permute(1, 2, 0)
    if not pixels.is_contiguous():
        pixels = scratch.get(role, tuple(pixels.shape)).copy_(pixels)
    return pixels.reshape(-1, image.shape[0])


def _tap_offsets(geo: Geometry, padded_width: int, device: torch.device) -> Tensor:
    """Offsets, in padded pixels, of the kernel taps from a window's top-left pixel, row-major."""
    dy = torch.arange(geo.kernel[0], device=device) * (geo.dilation[0] * padded_width)
    dx = torch.arange(geo.kernel[1], device=device) * geo.dilation[1]
    return (dy[:, None] + dx[None, :]).flatten()


def _window_index(pixels: Tensor, taps: Tensor, geo: Geometry, padded_width: int) -> Tensor:
    """Padded input pixels read by output pixels ``pixels`` (flat), tap by tap: (P*k*k,)."""
    out_width = geo.out_size[1]
    corner = (pixels // out_width * (geo.stride[0] * padded_width) +
              pixels % out_width * geo.stride[1])
    return (corner[:, None] + taps[None, :]).flatten()


def _filters(weight: Tensor) -> Tensor:
    """(B, m, O, C, kh, kw) -> (B, m, O, kh*kw*C), tap-major like the gathered columns."""
    return weight.permute(0, 1, 2, 4, 5, 3).flatten(3)


class _Buckets(NamedTuple):
    """A band's pixels sorted by region (``order``) and each region's span of that order."""
    order: Tensor
    spans: List[Tuple[int, slice]]


def _bucket(region: Tensor, num_regions: int) -> _Buckets:
    """Sorts a band's pixels by region, so that each region's rows are one contiguous slice.

    One gather of the whole band, then one matrix product per region on a slice, is several times
    faster than a gather per region.
    """
    order = torch.sort(region, stable=True).indices
    spans, start = [], 0
    for j, count in enumerate(torch.bincount(region, minlength=num_regions).tolist()):
        if count:
            spans.append((j, slice(start, start + count)))
        start += count
    return _Buckets(order, spans)


def _pad(x: Tensor, padding: Tuple[int, int]) -> Tensor:
    if padding == (0, 0):
        return x
    return F.pad(x, (padding[1], padding[1], padding[0], padding[0]))


def _memory_format(x: Tensor) -> torch.memory_format:
    """The layout of ``x`` that an output should keep, as ``nn.Conv2d`` does."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _region_response_dots(x_pad: Tensor, weight: Tensor, grad_output: Tensor,
                          geo: Geometry) -> Tensor:
    """``<dL/dY(p), Y_j(p)>`` for every region j and pixel p (Eq. 7), as (B, m, Ho, Wo), from the
    padded input; ``x_pad`` and ``grad_output`` are channels-last (the backward converts both once).

    Every region's response is needed, m convolutions of work. They run as ordinary convolutions,
    one sample and region at a time, so that the extra memory stays at one sample's output, and
    channels-last, where oneDNN's CPU kernels are fastest (on the benchmark's CPU, up to 1.4x for
    3x3 and 3x for 1x1 against the same convolution on NCHW tensors, which it reorders first).
    """
    batch, num_regions = weight.shape[:2]
    dots = grad_output.new_empty((batch, num_regions, *geo.out_size))
    for b in range(batch):
        for j in range(num_regions):
            response = F.conv2d(x_pad[b:b + 1], weight[b, j], stride=geo.stride,
                                dilation=geo.dilation)
            dots[b, j] = (response * grad_output[b:b + 1]).sum(dim=1)[0]
    return dots


class _Scratch:
    """Flat buffers reused by every band of a call.

    A fresh multi-megabyte tensor costs a page fault per 4 KiB on first touch, which on CPU is
    slower than the gather that fills it; one buffer per role per call avoids that.
    """

    def __init__(self, like: Tensor) -> None:
        self.like = like
        self.buffers: Dict[str, Tensor] = {}

    def get(self, role: str, shape: Tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get(role)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[role] = self.like.new_empty(numel)
        return buffer[:numel].view(shape)


def _regions(guide: Tensor) -> Tensor:
    """The guided mask (B, Ho*Wo): the first region of highest score, like ``argmax``.

    Reducing over the last, contiguous dimension is several times faster than over dim 1.
    """
    return guide.permute(0, 2, 3, 1).contiguous().argmax(dim=-1).flatten(1)


def _as_pixels(rows: Tensor) -> Tensor:
    """A (N, K) matrix as a channels-last (1, K, N, 1) image of N pixels with K channels."""
    return rows.view(1, rows.shape[0], 1, rows.shape[1]).permute(0, 3, 1, 2)


def _rows_times(rows: Tensor, matrix: Tensor) -> Tensor:
    """``rows @ matrix.T`` for rows (N, K) and a contiguous matrix (M, K): (N, M).

    Run as a 1x1 convolution over N channels-last pixels: on CPU oneDNN does this product about
    twice as fast as ``torch.mm`` (see the README); on CUDA it is one cuDNN call.
    """
    out = F.conv2d(_as_pixels(rows), matrix.view(*matrix.shape, 1, 1))
    return out.permute(0, 2, 3, 1).reshape(rows.shape[0], matrix.shape[0])


def _rows_outer(grad_rows: Tensor, rows: Tensor) -> Tensor:
    """``grad_rows.T @ rows`` for (N, M) and (N, K): (M, K), the weight gradient of
    :func:`_rows_times`, by the same convolution backend."""
    weight_size = (grad_rows.shape[1], rows.shape[1], 1, 1)
    grad = torch.nn.grad.conv2d_weight(_as_pixels(rows), weight_size, _as_pixels(grad_rows))
    return grad.view(weight_size[:2])


class _SampleWindows:
    """The k x k windows of one sample's output pixels, gathered band by band as matrices.

    A band's matrix has one row per output pixel (sorted by region) holding its window's taps
    one after the other: (P, kh*kw*C), the layout of :func:`_filters`.
    """

    def __init__(self, x_pad: Tensor, geo: Geometry, scratch: _Scratch) -> None:
        self.geo = geo
        self.padded_width = x_pad.shape[-1]
        self.rows = _pixel_rows(x_pad, scratch, 'input')
        self.taps = _tap_offsets(geo, self.padded_width, x_pad.device)

    def index(self, pixels: Tensor) -> Tensor:
        """Rows of the padded input read by output pixels ``pixels`` (flat), (P*kh*kw,)."""
        return _window_index(pixels, self.taps, self.geo, self.padded_width)

    def gather(self, index: Tensor, scratch: _Scratch) -> Tensor:
        cols = scratch.get('cols', (index.numel(), self.rows.shape[1]))
        torch.index_select(self.rows, 0, index, out=cols)
        return cols.view(-1, self.geo.taps * self.rows.shape[1])


def region_conv_forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                        geo: Geometry) -> Tensor:
    """Forward of :func:`drconv_mmdet.ops.dr_conv2d` on validated arguments of one dtype."""
    batch, num_regions, out_channels = weight.shape[:3]
    filters = _filters(weight)
    regions = _regions(guide)
    x_pad = _pad(input, geo.padding)
    memory_format = _memory_format(input)
    channels_last = memory_format == torch.channels_last
    output = torch.empty((batch, out_channels, *geo.out_size), dtype=input.dtype,
                         device=input.device, memory_format=memory_format)
    scratch = _Scratch(input)
    out_pixels = geo.out_size[0] * geo.out_size[1]
    bands = _bands(input.shape[1], out_channels, geo)
    for b in range(batch):
        windows = _SampleWindows(x_pad[b], geo, scratch)
        # Each output pixel's channels are written as one row: straight into a channels-last
        # output, else into a buffer transposed into the sample's output at the end.
        out_rows = (output[b].permute(1, 2, 0).view(out_pixels, out_channels)
                    if channels_last else scratch.get('output', (out_pixels, out_channels)))
        for pixels in bands:
            buckets = _bucket(regions[b, pixels], num_regions)
            targets = buckets.order + pixels.start
            cols = windows.gather(windows.index(targets), scratch)
            for j, span in buckets.spans:
                out_rows.index_copy_(0, targets[span], _rows_times(cols[span], filters[b, j]))
        if not channels_last:
            output[b].copy_(out_rows.view(*geo.out_size, out_channels).permute(2, 0, 1))
    if bias is not None:
        output += bias.view(1, -1, 1, 1)
    return output


def region_conv_backward(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                         geo: Geometry, need_input: bool, need_weight: bool, need_guide: bool,
                         need_bias: bool) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`region_conv_forward` for ``(input, weight, guide, bias)``; ``None``
    where not needed. ``guide`` gets the straight-through gradient (Eq. 7-8)."""
    batch, num_regions, out_channels, channels = weight.shape[:4]
    regions = _regions(guide)
    # Channels-last once for the whole batch: the guide gradient's convolutions and the row
    # gathers below all read these layouts.
    x_pad = _pad(input, geo.padding).contiguous(memory_format=torch.channels_last)
    grad_output = grad_output.contiguous(memory_format=torch.channels_last)
    pad_h, pad_w = geo.padding

    grad_input = torch.empty_like(input) if need_input else None
    grad_filters = weight.new_zeros(
        (batch, num_regions, out_channels, geo.taps * channels)) if need_weight else None
    grad_probs = _region_response_dots(x_pad, weight, grad_output, geo) if need_guide else None
    if need_input:
        # (B, m, kh*kw*C, O): the transposed filters the input gradient multiplies.
        filters_t = weight.permute(0, 1, 4, 5, 3, 2).reshape(
            batch, num_regions, geo.taps * channels, out_channels)
    scratch = _Scratch(grad_output)
    bands = _bands(channels, out_channels, geo)
    for b in range(batch) if need_input or need_weight else ():
        windows = _SampleWindows(x_pad[b], geo, scratch)
        grad_rows = _pixel_rows(grad_output[b], scratch, 'grad_output')
        if need_input:
            grad_x_rows = scratch.get('grad_input', tuple(windows.rows.shape)).zero_()
        for pixels in bands:
            buckets = _bucket(regions[b, pixels], num_regions)
            targets = buckets.order + pixels.start
            index = windows.index(targets)
            cols = windows.gather(index, scratch)
            grad_band = scratch.get('grad', (targets.numel(), out_channels))
            torch.index_select(grad_rows, 0, targets, out=grad_band)
            for j, span in buckets.spans:
                if need_weight:
                    grad_filters[b, j] += _rows_outer(grad_band[span], cols[span])
                if need_input:
                    # A pixel read by several windows gets their sum: index_add_ accumulates
                    # repeated indices.
                    taps = slice(span.start * geo.taps, span.stop * geo.taps)
                    grad_cols = _rows_times(grad_band[span], filters_t[b, j])
                    grad_x_rows.index_add_(0, index[taps], grad_cols.view(-1, channels))
        if need_input:
            grad_pad = grad_x_rows.view(*x_pad.shape[-2:], channels).permute(2, 0, 1)
            grad_input[b] = grad_pad[:, pad_h:pad_h + input.shape[-2],
                                     pad_w:pad_w + input.shape[-1]]

    grad_weight = grad_guide = grad_bias = None
    if need_weight:
        kernel_h, kernel_w = geo.kernel
        grad_weight = grad_filters.view(batch, num_regions, out_channels, kernel_h, kernel_w,
                                        channels).permute(0, 1, 2, 5, 3, 4)
    if need_guide:
        # Eq. 8: back through the softmax that stands in for the argmax; half precision would
        # lose the small probabilities, so it is done in at least float32.
        dtype = torch.promote_types(guide.dtype, torch.float32)
        probs = torch.softmax(guide.to(dtype), dim=1)
        grad_probs = grad_probs.to(dtype)
        grad_logits = probs * (grad_probs - (probs * grad_probs).sum(dim=1, keepdim=True))
        grad_guide = grad_logits.to(guide.dtype)
    if need_bias:
        grad_bias = grad_output.sum(dim=(0, 2, 3))
    return grad_input, grad_weight, grad_guide, grad_bias
