"""The DRConv op's kernels: batched region products in plain PyTorch.

Output pixel ``p`` of sample ``b`` is ``weight[b, r] @ window(b, p)`` with
``r = argmax_j guide[b, j, p]``. All ``B x Ho x Wo`` output pixels of a call are grouped by the
key ``b * m + r``, without a loop over samples:

- groups with nearly the same number of pixels form a *length class*; a class's windows are
  gathered as one ``(groups, length, kh*kw*C)`` block, shorter groups padded with a pixel whose
  window reads zeros, and multiplied by the groups' filters with one batched matrix product;
- blocks are cut into bands that bound the gathered windows' memory (all windows at once would
  be ``kh*kw`` copies of the input, the memory fault of the official CUDA code);
- results go back to their pixels by one scatter per band.

Only the counts of the groups go to the host (one sync per call); everything else stays on the
device, and products are ``torch.bmm`` (on CUDA, cuBLAS: no per-shape autotuning as cuDNN does
for convolutions of data-dependent shapes under ``cudnn.benchmark``).
"""
import functools
import warnings
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .geometry import Geometry

__all__ = ['region_conv_forward', 'region_conv_backward']

# Fewest values a band of gathered windows may hold (16 MiB of float32): a band holds about one
# sample's input or output, whichever is larger, but never less, so that small maps are not cut
# into many small products, whose fixed cost dominates.
MIN_BAND_VALUES = 1 << 22

# Multiply-adds that the fixed cost of one product call is worth, per device type: a length
# class takes in a shorter group, padding it, while its padded rows cost less than a product
# call of their own. A GPU kernel launch is worth far more multiply-adds than a CPU call.
PRODUCT_CALL_MACS = {'cpu': 1 << 19}
DEFAULT_PRODUCT_CALL_MACS = 1 << 26


def _quiet_under_tracing(kernel: Callable) -> Callable:
    """Silences ``torch.jit.trace``'s warnings about reading sizes and counts in ``kernel``.

    Under tracing (mmengine's FLOP counter) sizes are traced tensors, but the trace records the
    op as one node that reruns the kernel on every call, so the values read here never become
    constants of the trace.
    """

    @functools.wraps(kernel)
    def wrapper(*args, **kwargs):
        if not torch.jit.is_tracing():
            return kernel(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            return kernel(*args, **kwargs)

    return wrapper


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types: sums over bands and overlapping windows are kept in float32, as
    cuDNN and oneDNN accumulate."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _band_values(channels: int, out_channels: int, geo: Geometry) -> int:
    """Values a band of gathered rows may hold: about one sample's input or output."""
    out_pixels = geo.out_size[0] * geo.out_size[1]
    return max(channels * out_pixels, out_channels * out_pixels, MIN_BAND_VALUES)


def _blocks(groups: int, length: int, width: int, band_values: int
            ) -> Iterator[Tuple[slice, slice]]:
    """Splits a ``(groups, length)`` grid of rows ``width`` values wide into bands of at most
    ``band_values`` values (at least one row): whole groups together where a group fits, else
    pieces of one group. Yields ``(group slice, row slice)``."""
    rows = max(1, band_values // width)
    if length <= rows:
        step = rows // length
        for start in range(0, groups, step):
            yield slice(start, min(start + step, groups)), slice(0, length)
    else:
        for group in range(groups):
            for start in range(0, length, rows):
                yield slice(group, group + 1), slice(start, min(start + rows, length))


class _BatchWindows:
    """The zero-padded input of the whole batch as channels-last rows, and the rows read by the
    k x k windows of output pixels.

    Row ``b*Hp*Wp + y*Wp + x`` holds the C channels of padded pixel ``(y, x)`` of sample ``b``;
    gathering whole rows reads contiguous memory, where columns of the NCHW layout would read one
    value per cache line. Output pixels are numbered ``b*Ho*Wo + p``; the extra pixel id ``N``
    (= B*Ho*Wo), which pads length classes, has a window on zero rows after the batch.
    """

    def __init__(self, input: Tensor, geo: Geometry) -> None:
        batch, channels, height, width = input.shape
        pad_h, pad_w = geo.padding
        padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
        self.image_rows = batch * padded_h * padded_w
        # Rows one window spans from its top-left pixel: the zero tail the padding pixel reads.
        extent = ((geo.kernel[0] - 1) * geo.dilation[0] * padded_w +
                  (geo.kernel[1] - 1) * geo.dilation[1] + 1)
        self.padded_shape = (batch, padded_h, padded_w, channels)
        self.rows = input.new_empty((self.image_rows + extent, channels))
        if pad_h or pad_w:
            self.rows.zero_()
        else:
            self.rows[self.image_rows:].zero_()
        self.images(self.rows)[:, pad_h:pad_h + height, pad_w:pad_w + width].copy_(
            input.permute(0, 2, 3, 1))
        device = input.device
        out_h, out_w = geo.out_size
        corner_in_sample = (torch.arange(out_h, device=device)[:, None] *
                            (geo.stride[0] * padded_w) +
                            torch.arange(out_w, device=device) * geo.stride[1]).flatten()
        corners = (torch.arange(batch, device=device)[:, None] * (padded_h * padded_w) +
                   corner_in_sample).flatten()
        # First row of each output pixel's window, and of the padding pixel's.
        self.corners = torch.cat([corners, corners.new_full((1, ), self.image_rows)])
        dy = torch.arange(geo.kernel[0], device=device) * (geo.dilation[0] * padded_w)
        dx = torch.arange(geo.kernel[1], device=device) * geo.dilation[1]
        self.tap_offsets = (dy[:, None] + dx).flatten()

    def images(self, rows: Tensor) -> Tensor:
        """The padded batch (B, Hp, Wp, C) as a view of ``rows`` laid out like :attr:`rows` (the
        input's, or its gradient's)."""
        return rows[:self.image_rows].view(self.padded_shape)

    def window_rows(self, pixels: Tensor) -> Tensor:
        """Rows read by output pixels ``pixels``, window by window, tap-major: (P*kh*kw,)."""
        return (self.corners[pixels.flatten()][:, None] + self.tap_offsets).flatten()

    def gather(self, rows: Tensor, windows: int) -> Tensor:
        """The windows whose rows are ``rows`` (from :meth:`window_rows`) as a
        (windows, kh*kw*C) matrix, the column order of :func:`_class_filters`."""
        return self.rows.index_select(0, rows).view(windows, -1)


def _length_classes(counts: List[int], slack_rows: int) -> List[Tuple[List[int], int]]:
    """Cuts the non-empty groups, longest first, into runs padded to their first group's length.

    A run takes in the next group while the run's padding stays within ``slack_rows`` rows, i.e.
    while padding costs less than the product call a run of its own would add. Groups of equal
    length always share a run. Returns ``(group keys, length)`` per run.
    """
    keys = sorted((k for k, count in enumerate(counts) if count), key=counts.__getitem__,
                  reverse=True)
    classes, start = [], 0
    while start < len(keys):
        length, padding, stop = counts[keys[start]], 0, start + 1
        while stop < len(keys) and padding + length - counts[keys[stop]] <= slack_rows:
            padding += length - counts[keys[stop]]
            stop += 1
        classes.append((keys[start:stop], length))
        start = stop
    return classes


class _LengthClasses:
    """Output pixels grouped by key ``b*m + region``, the groups cut into length classes.

    ``key_order`` lists the non-empty groups class by class; class ``c`` owns
    ``key_order[first:first + groups]`` and a ``(groups, length)`` block of ``pixels`` (padded
    with the pixel id ``N``).
    """

    def __init__(self, regions: Tensor, num_regions: int, macs_per_row: int) -> None:
        batch, out_pixels = regions.shape
        device = regions.device
        num_pixels = batch * out_pixels
        keys = (torch.arange(batch, device=device)[:, None] * num_regions + regions).flatten()
        sorted_keys, order = torch.sort(keys, stable=True)
        starts = torch.searchsorted(sorted_keys,
                                    torch.arange(batch * num_regions + 1, device=device))
        starts_host = starts.tolist()  # the call's one host sync
        counts = [stop - start for start, stop in zip(starts_host, starts_host[1:])]
        call_macs = PRODUCT_CALL_MACS.get(device.type, DEFAULT_PRODUCT_CALL_MACS)
        classes = _length_classes(counts, call_macs // max(1, macs_per_row))

        key_order, block_start = [], [0] * len(counts)
        self.classes: List[Tuple[int, int, int, int]] = []  # (first, groups, length, row offset)
        rows = 0
        for class_keys, length in classes:
            self.classes.append((len(key_order), len(class_keys), length, rows))
            for key in class_keys:
                block_start[key] = rows
                rows += length
            key_order.extend(class_keys)
        self.key_order = torch.tensor(key_order, dtype=torch.long, device=device)
        # Pixel i of the sorted order goes to its group's block row, at its rank in the group.
        rank = torch.arange(num_pixels, device=device) - starts[sorted_keys]
        block_row = torch.tensor(block_start, dtype=torch.long, device=device)[sorted_keys] + rank
        self.pixels = torch.full((rows, ), num_pixels, dtype=torch.long, device=device)
        self.pixels.index_copy_(0, block_row, order)

    def blocks(self, width: int, band_values: int) -> Iterator[Tuple[slice, Tensor]]:
        """Bands of the classes: ``(slice of key_order, (groups, rows) pixel ids)``."""
        for first, groups, length, offset in self.classes:
            block = self.pixels[offset:offset + groups * length].view(groups, length)
            for group_slice, row_slice in _blocks(groups, length, width, band_values):
                keys = slice(first + group_slice.start, first + group_slice.stop)
                yield keys, block[group_slice, row_slice]


def _class_filters(weight: Tensor, key_order: Tensor) -> Tensor:
    """The filters of groups ``key_order`` as ``(G, kh*kw*C, O)`` matrices, tap-major like the
    gathered windows (one copy of the used filters)."""
    batch, num_regions, out_channels, channels, kernel_h, kernel_w = weight.shape
    filters = weight.reshape(batch * num_regions, out_channels, channels, kernel_h,
                             kernel_w).permute(0, 3, 4, 2, 1)
    return filters.index_select(0, key_order).view(len(key_order), -1, out_channels)


def _regions(guide: Tensor) -> Tensor:
    """The guided mask (B, Ho*Wo): the first region of highest score, like ``argmax``.

    Reducing over the last, contiguous dimension is several times faster than over dim 1.
    """
    return guide.permute(0, 2, 3, 1).contiguous().argmax(dim=-1).flatten(1)


def _memory_format(x: Tensor) -> torch.memory_format:
    """The layout of ``x`` that an output should keep, as ``nn.Conv2d`` does."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _as_layout(x: Tensor, dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
    """``x`` in ``dtype`` and ``memory_format``: itself if it already is, else one copy."""
    if x.dtype == dtype and x.is_contiguous(memory_format=memory_format):
        return x
    return torch.empty(x.shape, dtype=dtype, device=x.device,
                       memory_format=memory_format).copy_(x)


def _pixel_rows(image: Tensor) -> Tensor:
    """A (B, C, H, W) batch as (B*H*W + 1, C) rows, one pixel's channels each, the last row
    zero (the padding pixel's)."""
    batch, channels, height, width = image.shape
    rows = image.new_empty((batch * height * width + 1, channels))
    rows[:-1].view(batch, height, width, channels).copy_(image.permute(0, 2, 3, 1))
    rows[-1].zero_()
    return rows


def _add_products(acc: Tensor, left: Tensor, right: Tensor) -> None:
    """``acc += left @ right`` for batches of matrices, summed in ``acc``'s dtype."""
    if acc.dtype == left.dtype:
        acc.baddbmm_(left, right)
    else:
        acc += torch.bmm(left, right)


def _region_response_dots(windows: _BatchWindows, weight: Tensor, grad_rows: Tensor,
                          geo: Geometry, band_values: int) -> Tensor:
    """``<dL/dY(p), Y_j(p)>`` for every region j and pixel p (Eq. 7), as (B, m, Ho, Wo) in the
    accumulation dtype.

    Every region's response is needed: m convolutions of work, one matrix product per band of
    whole samples (or of one sample's pixels) against all m filters of the sample side by side.
    """
    batch, num_regions, out_channels = weight.shape[:3]
    out_pixels = geo.out_size[0] * geo.out_size[1]
    acc_dtype = _accumulation_dtype(weight.dtype)
    # (B, kh*kw*C, m*O): column j*O + o is output channel o of region j.
    all_filters = weight.permute(0, 4, 5, 3, 1, 2).reshape(batch, geo.taps * weight.shape[3],
                                                           num_regions * out_channels)
    pixel_ids = torch.arange(batch * out_pixels, device=weight.device).view(batch, out_pixels)
    grads = grad_rows[:-1].view(batch, out_pixels, out_channels)
    dots = grad_rows.new_empty((batch, out_pixels, num_regions), dtype=acc_dtype)
    width = max(all_filters.shape[1], num_regions * out_channels)
    for samples, pixels in _blocks(batch, out_pixels, width, band_values):
        ids = pixel_ids[samples, pixels]
        cols = windows.gather(windows.window_rows(ids), ids.numel()).view(*ids.shape, -1)
        responses = torch.bmm(cols, all_filters[samples]).view(*ids.shape, num_regions,
                                                                out_channels)
        band_grads = grads[samples, pixels].unsqueeze(-2)
        dots[samples, pixels] = (responses.to(acc_dtype) * band_grads.to(acc_dtype)).sum(-1)
    return dots.view(batch, *geo.out_size, num_regions).permute(0, 3, 1, 2)


@_quiet_under_tracing
def region_conv_forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                        geo: Geometry) -> Tensor:
    """Forward of :func:`drconv_mmdet.ops.dr_conv2d` on validated arguments of one dtype."""
    batch, num_regions, out_channels, channels = weight.shape[:4]
    num_pixels = batch * geo.out_size[0] * geo.out_size[1]
    width = geo.taps * channels
    # Row N is the sink of the padding rows of length classes.
    out_rows = input.new_empty((num_pixels + 1, out_channels))
    if num_pixels:
        windows = _BatchWindows(input, geo)
        classes = _LengthClasses(_regions(guide), num_regions, width * out_channels)
        filters = _class_filters(weight, classes.key_order)
        for keys, pixels in classes.blocks(width, _band_values(channels, out_channels, geo)):
            cols = windows.gather(windows.window_rows(pixels), pixels.numel())
            products = torch.bmm(cols.view(*pixels.shape, width), filters[keys])
            out_rows.index_copy_(0, pixels.flatten(), products.view(-1, out_channels))
    if bias is not None:
        out_rows += bias
    output = out_rows[:num_pixels].view(batch, *geo.out_size, out_channels).permute(0, 3, 1, 2)
    return _as_layout(output, input.dtype, _memory_format(input))


@_quiet_under_tracing
def region_conv_backward(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                         geo: Geometry, need_input: bool, need_weight: bool, need_guide: bool,
                         need_bias: bool) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`region_conv_forward` for ``(input, weight, guide, bias)``; ``None``
    where not needed. ``guide`` gets the straight-through gradient (Eq. 7-8)."""
    batch, num_regions, out_channels, channels, kernel_h, kernel_w = weight.shape
    dtype = input.dtype
    acc_dtype = _accumulation_dtype(dtype)
    width = geo.taps * channels
    band_values = _band_values(channels, out_channels, geo)
    grad_rows = _pixel_rows(grad_output)
    windows = _BatchWindows(input, geo)
    grad_input = grad_weight = grad_guide = grad_bias = None

    if (need_input or need_weight) and grad_rows.shape[0] > 1:
        classes = _LengthClasses(_regions(guide), num_regions, width * out_channels)
        filters = _class_filters(weight, classes.key_order)
        if need_weight:
            grad_filters = weight.new_zeros(filters.shape, dtype=acc_dtype)
        if need_input:
            grad_window_rows = torch.zeros_like(windows.rows, dtype=acc_dtype)
        for keys, pixels in classes.blocks(width, band_values):
            window_rows = windows.window_rows(pixels)
            cols = windows.gather(window_rows, pixels.numel()).view(*pixels.shape, width)
            grads = grad_rows.index_select(0, pixels.flatten()).view(*pixels.shape, -1)
            if need_weight:
                _add_products(grad_filters[keys], cols.transpose(1, 2), grads)
            if need_input:
                # A pixel read by several windows gets their sum: index_add_ accumulates
                # repeated indices.
                grad_cols = torch.bmm(grads, filters[keys].transpose(1, 2))
                grad_window_rows.index_add_(0, window_rows,
                                             grad_cols.view(-1, channels).to(acc_dtype))
    if need_weight:
        # Regions without pixels get zero gradients.
        grad_weight = weight.new_zeros((batch * num_regions, kernel_h, kernel_w, channels,
                                        out_channels))
        if grad_rows.shape[0] > 1:
            grad_weight.index_copy_(0, classes.key_order,
                                    grad_filters.view(-1, *grad_weight.shape[1:]).to(dtype))
        grad_weight = grad_weight.view(batch, num_regions, kernel_h, kernel_w, channels,
                                       out_channels).permute(0, 1, 5, 4, 2, 3)
    if need_input:
        if grad_rows.shape[0] == 1:
            grad_input = torch.zeros_like(input)
        else:
            pad_h, pad_w = geo.padding
            height, width_in = input.shape[-2:]
            grad_images = windows.images(grad_window_rows)[:, pad_h:pad_h + height, pad_w:pad_w + width_in]
            grad_input = _as_layout(grad_images.permute(0, 3, 1, 2), dtype,
                                    _memory_format(input))
    if need_guide:
        grad_probs = _region_response_dots(windows, weight, grad_rows, geo, band_values)
        # Eq. 8: back through the softmax that stands in for the argmax; half precision would
        # lose the small probabilities, so it is done in at least float32.
        probs_dtype = torch.promote_types(guide.dtype, torch.float32)
        probs = torch.softmax(guide.to(probs_dtype), dim=1)
        grad_probs = grad_probs.to(probs_dtype)
        grad_logits = probs * (grad_probs - (probs * grad_probs).sum(dim=1, keepdim=True))
        grad_guide = grad_logits.to(guide.dtype)
    if need_bias:
        grad_bias = grad_output.sum(dim=(0, 2, 3), dtype=acc_dtype).to(dtype)
    return grad_input, grad_weight, grad_guide, grad_bias
