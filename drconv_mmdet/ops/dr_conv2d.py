"""Region-wise dynamic convolution, the operator behind DRConv.

Chen et al., "Dynamic Region-Aware Convolution", CVPR 2021 (arXiv 2003.12243), Eq. 3-8.

Every output pixel is computed with ONE of ``m`` per-sample filters, the one picked by the argmax of
the guided feature at that pixel. The forward pass therefore does the work of a single convolution:
output pixels are bucketed by region and each bucket is one matrix product with its region's filter.
The guided feature gets the paper's straight-through gradient (softmax in place of the argmax).
"""
import math
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

IntPair = Union[int, Tuple[int, int]]
# Fewest values a band of columns may hold (16 MiB of float32): below that, more bands only add
# small matrix products, whose fixed cost dominates on CPU.
MIN_BAND_VALUES = 1 << 22

__all__ = ['dr_conv2d', 'dr_conv2d_reference', 'DRConv2dFunction', 'conv_output_size']


def as_pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(
            f'{name} must be an int or a pair of ints >= {minimum}, but got {value!r}')
    return pair


def conv_output_size(in_size: Tuple[int, int], kernel_size: Tuple[int, int],
                     stride: Tuple[int, int], padding: Tuple[int, int],
                     dilation: Tuple[int, int]) -> Tuple[int, int]:
    """Spatial size of a convolution's output, per dimension ``(H, W)``."""
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // s + 1
        for size, k, s, pad, dil in zip(in_size, kernel_size, stride, padding, dilation))


class _Geometry(NamedTuple):
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    out_size: Tuple[int, int]

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded conv reads each input pixel as its own column."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)


class _Band(NamedTuple):
    """Output rows ``rows`` of sample ``b``, read from padded input rows ``in_rows``."""
    b: int
    rows: slice
    in_rows: slice


def _bands(x: Tensor, geo: _Geometry, out_channels: int) -> Iterator[Tuple[_Band, slice]]:
    """Splits each sample into bands of output rows; yields each band and its flat output pixels.

    Unfolding a whole k x k input at once would hold k*k copies of it (the memory fault of the
    official CUDA code); a band's columns hold about as many values as one sample's input or
    output, whichever is larger, and at least ``MIN_BAND_VALUES`` so that small maps are not cut
    into many small matrix products.
    """
    height, width = geo.out_size
    budget = max(x.shape[1:].numel(), out_channels * height * width, MIN_BAND_VALUES)
    col_height = x.shape[1] * geo.kernel[0] * geo.kernel[1]
    rows_per_band = height if geo.pointwise else max(1, budget // max(1, col_height * width))
    reach = geo.dilation[0] * (geo.kernel[0] - 1) + 1
    for b in range(x.shape[0]):
        for start in range(0, height, rows_per_band):
            stop = min(start + rows_per_band, height)
            in_rows = slice(start * geo.stride[0], (stop - 1) * geo.stride[0] + reach)
            yield _Band(b, slice(start, stop), in_rows), slice(start * width, stop * width)


def _columns(x_pad: Tensor, band: _Band, geo: _Geometry) -> Tensor:
    """The im2col matrix (C*kh*kw, rows*Wo) of one band."""
    patch = x_pad[band.b, :, band.in_rows]
    if geo.pointwise:
        return patch.reshape(patch.shape[0], -1)
    return F.unfold(patch.unsqueeze(0), geo.kernel, dilation=geo.dilation, stride=geo.stride)[0]


def _add_columns(grad_x_pad: Tensor, grad_cols: Tensor, band: _Band, geo: _Geometry) -> None:
    """Adds a band's column gradient back onto the padded input gradient (col2im)."""
    target = grad_x_pad[band.b, :, band.in_rows]
    if geo.pointwise:
        target.add_(grad_cols.view(target.shape))
        return
    folded = F.fold(
        grad_cols.unsqueeze(0), target.shape[-2:], geo.kernel, dilation=geo.dilation,
        stride=geo.stride)
    target.add_(folded[0])


class _Buckets(NamedTuple):
    """Pixels of a band sorted by region: ``sorted = x[:, order]``, ``x = sorted[:, inverse]``."""
    order: Tensor
    inverse: Tensor
    spans: List[Tuple[int, slice]]


def _bucket(region: Tensor, num_regions: int) -> _Buckets:
    """Sorts a band's pixels by region, so that each region's pixels are one contiguous span.

    Gathering whole columns once and computing each region on a slice is several times faster
    than scattering region by region (``index_copy_`` along a strided dimension).
    """
    order = torch.sort(region, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    spans, start = [], 0
    for j, count in enumerate(torch.bincount(region, minlength=num_regions).tolist()):
        if count:
            spans.append((j, slice(start, start + count)))
        start += count
    return _Buckets(order, inverse, spans)


def _pad(x: Tensor, padding: Tuple[int, int]) -> Tensor:
    if padding == (0, 0):
        return x
    return F.pad(x, (padding[1], padding[1], padding[0], padding[0]))


def _region_response_dots(input: Tensor, weight: Tensor, grad_output: Tensor,
                          geo: _Geometry) -> Tensor:
    """``<dL/dY(p), Y_j(p)>`` for every region j and pixel p (Eq. 7), as (B, m, Ho, Wo).

    Every region's response is needed, m convolutions of work. They run as ordinary convolutions,
    one sample and region at a time: the convolution kernels beat im2col plus a matrix product
    (by about 2x for 3x3 on CPU) and the extra memory stays at one sample's output.
    """
    batch, num_regions = weight.shape[:2]
    dots = grad_output.new_empty((batch, num_regions, *geo.out_size))
    for b in range(batch):
        for j in range(num_regions):
            response = F.conv2d(input[b:b + 1], weight[b, j], stride=geo.stride,
                                padding=geo.padding, dilation=geo.dilation)
            dots[b, j] = (response[0] * grad_output[b]).sum(dim=0)
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


def _take_columns(src: Tensor, index: Tensor, scratch: _Scratch, role: str) -> Tensor:
    """``src[:, index]`` into a reused buffer."""
    return torch.index_select(src, 1, index, out=scratch.get(role, (src.shape[0], index.numel())))


def _put_columns(target: Tensor, src: Tensor, index: Tensor) -> None:
    """``target[:] = src[:, index]``, straight into ``target`` when it is contiguous."""
    if target.is_contiguous():
        torch.index_select(src, 1, index, out=target)
    else:
        target.copy_(src.index_select(1, index))


def _regions(guide: Tensor) -> Tensor:
    """The guided mask (B, Ho*Wo): the first region of highest score, like ``argmax``.

    Reducing over the last, contiguous dimension is several times faster than over dim 1.
    """
    return guide.permute(0, 2, 3, 1).contiguous().argmax(dim=-1).flatten(1)


class DRConv2dFunction(torch.autograd.Function):
    """Autograd function of :func:`dr_conv2d`: hard assignment forward, straight-through backward."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                geo: _Geometry) -> Tensor:
        batch, num_regions, out_channels = weight.shape[:3]
        filters = weight.flatten(3)
        regions = _regions(guide)
        x_pad = _pad(input, geo.padding)
        output = input.new_empty((batch, out_channels, geo.out_size[0] * geo.out_size[1]))
        scratch = _Scratch(input)
        for band, pixels in _bands(input, geo, out_channels):
            buckets = _bucket(regions[band.b, pixels], num_regions)
            cols = _take_columns(_columns(x_pad, band, geo), buckets.order, scratch, 'cols')
            out_sorted = scratch.get('out', (out_channels, cols.shape[1]))
            for j, span in buckets.spans:
                torch.mm(filters[band.b, j], cols[:, span], out=out_sorted[:, span])
            _put_columns(output[band.b, :, pixels], out_sorted, buckets.inverse)
        output = output.view(batch, out_channels, *geo.out_size)
        if bias is not None:
            output += bias.view(1, -1, 1, 1)
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.save_for_backward(input, weight, guide)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, weight, guide = ctx.saved_tensors
        geo = ctx.geo
        need_input, need_weight, need_guide, need_bias = ctx.needs_input_grad[:4]
        batch, num_regions, out_channels = weight.shape[:3]
        filters = weight.flatten(3)
        regions = _regions(guide)
        grad = grad_output.flatten(2)
        x_pad = _pad(input, geo.padding)

        grad_x_pad = torch.zeros_like(x_pad) if need_input else None
        grad_filters = torch.zeros_like(filters) if need_weight else None
        grad_probs = _region_response_dots(input, weight, grad_output, geo) if need_guide else None
        scratch = _Scratch(grad)
        for band, pixels in _bands(input, geo, out_channels) if need_input or need_weight else ():
            buckets = _bucket(regions[band.b, pixels], num_regions)
            cols = _take_columns(_columns(x_pad, band, geo), buckets.order, scratch, 'cols')
            grad_band = _take_columns(grad[band.b, :, pixels], buckets.order, scratch, 'grad')
            grad_cols = scratch.get('grad_cols', cols.shape) if need_input else None
            for j, span in buckets.spans:
                if need_weight:
                    grad_filters[band.b, j].addmm_(grad_band[:, span], cols[:, span].T)
                if need_input:
                    torch.mm(filters[band.b, j].T, grad_band[:, span], out=grad_cols[:, span])
            if need_input:
                _add_columns(grad_x_pad, _take_columns(grad_cols, buckets.inverse, scratch, 'cols'),
                             band, geo)

        grad_input = grad_weight = grad_guide = grad_bias = None
        if need_input:
            pad_h, pad_w = geo.padding
            grad_input = grad_x_pad[..., pad_h:pad_h + input.shape[-2], pad_w:pad_w + input.shape[-1]]
        if need_weight:
            grad_weight = grad_filters.view_as(weight)
        if need_guide:
            # Eq. 8: back through the softmax that stands in for the argmax; half precision would
            # lose the small probabilities, so it is done in at least float32.
            dtype = torch.promote_types(guide.dtype, torch.float32)
            probs = torch.softmax(guide.to(dtype), dim=1)
            grad_probs = grad_probs.to(dtype)
            grad_logits = probs * (grad_probs - (probs * grad_probs).sum(dim=1, keepdim=True))
            grad_guide = grad_logits.to(guide.dtype)
        if need_bias and ctx.has_bias:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_guide, grad_bias, None


def _check_args(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                stride: IntPair, padding: IntPair, dilation: IntPair) -> _Geometry:
    if input.dim() != 4:
        raise ValueError(f'input must be 4-D (B, C, H, W), but got shape {tuple(input.shape)}')
    if weight.dim() != 6:
        raise ValueError('weight must be 6-D (B, m, O, C, kh, kw), but got shape '
                         f'{tuple(weight.shape)}')
    if guide.dim() != 4:
        raise ValueError(f'guide must be 4-D (B, m, Ho, Wo), but got shape {tuple(guide.shape)}')
    batch, channels = input.shape[:2]
    if weight.shape[0] != batch or weight.shape[3] != channels:
        raise ValueError(
            f'weight must have shape (B={batch}, m, O, C={channels}, kh, kw) to match input, but got '
            f'{tuple(weight.shape)}')
    num_regions, out_channels = weight.shape[1:3]
    if num_regions < 1 or out_channels < 1:
        raise ValueError(f'weight must have at least one region and one output channel, but got '
                         f'shape {tuple(weight.shape)}')
    if bias is not None and tuple(bias.shape) != (out_channels, ):
        raise ValueError(f'bias must have shape ({out_channels},), but got {tuple(bias.shape)}')
    if not input.is_floating_point():
        raise ValueError(f'input must be a floating point tensor, but got {input.dtype}')
    for name, tensor in (('weight', weight), ('bias', bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise ValueError(f'{name} must have the dtype of input ({input.dtype}), but got '
                             f'{tensor.dtype}')
    if not guide.is_floating_point():
        raise ValueError(f'guide must be a floating point tensor of logits, but got {guide.dtype}')
    # Plain ints: under torch.jit tracing (FLOP counting) sizes are tensors, which the traced
    # autograd node cannot hold as constant arguments.
    kernel = tuple(int(k) for k in weight.shape[-2:])
    geo_args = (kernel, as_pair(stride, 'stride', 1), as_pair(padding, 'padding', 0),
                as_pair(dilation, 'dilation', 1))
    out_size = conv_output_size(tuple(int(s) for s in input.shape[-2:]), *geo_args)
    if min(out_size) < 1:
        raise ValueError(f'input of spatial size {tuple(input.shape[-2:])} is too small for kernel '
                         f'{tuple(weight.shape[-2:])} with stride {geo_args[1]}, padding '
                         f'{geo_args[2]} and dilation {geo_args[3]}')
    expected_guide = (batch, num_regions, *out_size)
    if tuple(guide.shape) != expected_guide:
        raise ValueError(f'guide must have shape (B, m, Ho, Wo) = {expected_guide}, but got '
                         f'{tuple(guide.shape)}')
    return _Geometry(*geo_args, out_size)


def dr_conv2d(input: Tensor,
              weight: Tensor,
              guide: Tensor,
              bias: Optional[Tensor] = None,
              stride: IntPair = 1,
              padding: IntPair = 0,
              dilation: IntPair = 1) -> Tensor:
    r"""Dynamic region-aware convolution (DRConv, arXiv 2003.12243, Eq. 3-8).

    Output pixel ``p`` of sample ``b`` is the ordinary convolution of ``input[b]`` at ``p`` with the
    filter ``weight[b, argmax_j guide[b, j, p]]``. Pixels are bucketed by region and each bucket is
    one matrix product, so the forward pass costs one convolution, never ``m``.

    Gradients: ``input`` and ``weight`` get the exact gradients of that hard assignment. ``guide``
    gets the paper's straight-through gradient: with ``P = softmax(guide, dim=1)`` and
    ``Y_j = conv(input, weight[:, j])``, ``dL/dP_j(p) = <dL/dY(p), Y_j(p)>`` (Eq. 7), then back
    through the softmax (Eq. 8). It equals autograd of ``sum_j P_j * Y_j`` with ``input`` and
    ``weight`` detached, and costs ``m`` convolutions of work, done one region at a time.

    Under autocast, ``input``, ``weight`` and ``bias`` are cast to the autocast dtype, like
    :func:`torch.nn.functional.conv2d`; ``guide`` keeps its dtype since its argmax and softmax
    are what decide the regions.

    Args:
        input (Tensor[B, C, H, W]): input features.
        weight (Tensor[B, m, O, C, kh, kw]): for each sample, one filter per region.
        guide (Tensor[B, m, Ho, Wo]): guided feature (logits, before any softmax) at the output
            resolution; its argmax over dim 1 is the guided mask.
        bias (Tensor[O], optional): bias added to every output pixel. Default: None.
        stride (int or Tuple[int, int]): stride of the convolution. Default: 1.
        padding (int or Tuple[int, int]): zero padding on both sides. Default: 0.
        dilation (int or Tuple[int, int]): spacing between kernel elements. Default: 1.

    Returns:
        Tensor[B, O, Ho, Wo]: the region-wise convolution.

    Examples::
        >>> x = torch.randn(2, 4, 9, 8)
        >>> weight = torch.randn(2, 3, 5, 4, 3, 3)  # 3 regions, 4 -> 5 channels, 3x3 filters
        >>> # Ho = (9 + 2*1 - 3) // 2 + 1 = 5 and Wo = (8 + 2*1 - 3) // 2 + 1 = 4
        >>> guide = torch.randn(2, 3, 5, 4)
        >>> dr_conv2d(x, weight, guide, stride=2, padding=1).shape
        torch.Size([2, 5, 5, 4])
    """
    geo = _check_args(input, weight, guide, bias, stride, padding, dilation)
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return DRConv2dFunction.apply(input, weight, guide, bias, geo)
    return DRConv2dFunction.apply(input, weight, guide, bias, geo)


def dr_conv2d_reference(input: Tensor,
                        weight: Tensor,
                        guide: Tensor,
                        bias: Optional[Tensor] = None,
                        stride: IntPair = 1,
                        padding: IntPair = 0,
                        dilation: IntPair = 1) -> Tensor:
    """All-regions implementation of :func:`dr_conv2d`, for tests and benchmarks.

    Computes the ``m`` region outputs of every pixel, keeps the argmax region per
    pixel and gets the guide gradient from the straight-through surrogate. It costs ``m``
    convolutions and holds a ``(B, m, O, Ho, Wo)`` tensor, as the public implementations do.
    Same arguments, shapes and gradients as :func:`dr_conv2d`.
    """
    geo = _check_args(input, weight, guide, bias, stride, padding, dilation)
    batch, num_regions, out_channels = weight.shape[:3]
    cols = F.unfold(input, geo.kernel, dilation=geo.dilation, padding=geo.padding, stride=geo.stride)
    responses = torch.einsum('bmok,bkl->bmol', weight.flatten(3),
                             cols).reshape(batch, num_regions, out_channels, *geo.out_size)
    index = guide.argmax(dim=1, keepdim=True).unsqueeze(2).expand(-1, -1, out_channels, -1, -1)
    selected = responses.gather(1, index).squeeze(1)
    probs = torch.softmax(guide, dim=1).to(responses.dtype)
    surrogate = (probs.unsqueeze(2) * responses.detach()).sum(dim=1)
    output = selected + (surrogate - surrogate.detach())
    if bias is not None:
        output = output + bias.view(1, -1, 1, 1)
    return output
