"""The DRConv op's kernels: batched region products in plain PyTorch.

Output pixel ``p`` of sample ``b`` is ``weight[b, r] @ window(b, p)`` with
``r = argmax_j guide[b, j, p]``. All ``B x Ho x Wo`` output pixels of a call are grouped by the
key ``b * m + r``, without a loop over samples:

- groups with nearly the same number of pixels form a *length class*; a class's windows are
  gathered as ``(groups, length, C*kh*kw)`` blocks, shorter groups padded with a pixel whose
  window reads zeros, and multiplied by the groups' filters with one batched matrix product
  (where the filters outweigh the windows, all groups are padded in key order instead, so that
  filters are used where they are);
- blocks are cut into bands that bound the gathered windows' memory (all windows at once would
  be ``kh*kw`` copies of the input, the memory fault of the official CUDA code);
- results land in one buffer laid out like the blocks, and reach their pixels by one gather;
- the guide's straight-through gradient needs all m responses: grouped convolutions of bands
  of samples with their m filters stacked.

Only the groups' sizes go to the host (one sync per call); everything else stays on the device,
and products are ``torch.bmm`` (on CUDA, cuBLAS: no per-shape autotuning, as cuDNN has for
convolutions of data-dependent shapes under ``cudnn.benchmark``).

These kernels run on every device and dtype; they are the fallback of the compiled CPU kernels
and of the Triton kernels, and the reference those are tested against (see
:mod:`.implementations` for which kernels run where).
"""
import functools
import math
import warnings
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Geometry

__all__ = [
    'region_conv_forward', 'region_input_weight_grads', 'region_response_dots',
    'straight_through_guide_grad', 'bias_grad', 'conv_memory_format', 'quiet_under_tracing'
]

# Values of one band's gathered rows, per device type (a band still takes one row where a row is
# wider). On CPU, 1 MiB of float32: small enough that a band's gathered windows or region
# responses are still in cache when the product or the dot products read them; large enough that
# a band's product is not dominated by the fixed cost of a call. A GPU has no such cache to fit
# and pays a kernel launch per step of a band, so its bands are as large as memory allows: a
# bounded fraction of what the all-regions way would hold.
BAND_VALUES = {'cpu': 1 << 18}
DEFAULT_BAND_VALUES = 1 << 24

# Multiply-adds that the fixed cost of one product call is worth, per device type: a length
# class takes in a shorter group, padding it, while its padded rows cost less than a product
# call of their own. A GPU kernel launch is worth far more multiply-adds than a CPU call.
PRODUCT_CALL_MACS = {'cpu': 1 << 19}
DEFAULT_PRODUCT_CALL_MACS = 1 << 26

# Bands of the guide gradient's grouped convolutions (k > 1), per device type: values of the
# region responses, and samples per convolution. oneDNN runs a convolution of a few output rows,
# or of many groups, far below its speed on whole maps of a few groups.
GUIDE_CONV_BAND_VALUES = {'cpu': 1 << 21}
GUIDE_CONV_SAMPLES = {'cpu': 8}


def quiet_under_tracing(kernel: Callable) -> Callable:
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
    """float32 for half types: sums over bands, overlapping windows and channels are kept in
    float32, as cuDNN and oneDNN accumulate."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Scratch:
    """Buffers reused by every band of a call, one per role.

    A fresh multi-megabyte tensor costs a page fault per 4 KiB on first touch, which on CPU is
    slower than the gather that fills it.
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


def _band_values(device: torch.device) -> int:
    """The band size of :data:`BAND_VALUES` for ``device``."""
    return BAND_VALUES.get(device.type, DEFAULT_BAND_VALUES)


def _rows_per_band(width: int, band_values: int) -> int:
    """Rows ``width`` values wide in a band of ``band_values`` values: at least one."""
    return max(1, band_values // width)


def _bands(groups: int,
           length: int,
           width: int,
           band_values: int,
           max_groups: Optional[int] = None) -> Iterator[Tuple[slice, slice]]:
    """Splits a ``(groups, length)`` grid of rows ``width`` values wide into bands of at most
    ``band_values`` values (at least one row): whole groups together where a group fits (at most
    ``max_groups`` of them), else pieces of one group. Yields ``(group slice, row slice)``; a
    band's rows are contiguous in the grid's row-major order."""
    rows = _rows_per_band(width, band_values)
    if length <= rows:
        step = rows // length if max_groups is None else min(rows // length, max_groups)
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
    (= B*Ho*Wo), which pads length classes, has its window on zero rows after the batch.
    """

    def __init__(self, input: Tensor, geo: Geometry) -> None:
        batch, channels, height, width = input.shape
        pad_h, pad_w = geo.padding
        padded_h, padded_w = height + 2 * pad_h, width + 2 * pad_w
        self.image_rows = batch * padded_h * padded_w
        self.padded_shape = (batch, padded_h, padded_w, channels)
        # Rows one window spans from its top-left pixel: the zero tail the padding pixel reads.
        extent = ((geo.kernel[0] - 1) * geo.dilation[0] * padded_w +
                  (geo.kernel[1] - 1) * geo.dilation[1] + 1)
        self.rows = input.new_empty((self.image_rows + extent, channels))
        if pad_h or pad_w:
            self.rows.zero_()
        else:
            self.rows[self.image_rows:].zero_()
        self.images(self.rows)[:, pad_h:pad_h + height,
                               pad_w:pad_w + width].copy_(input.permute(0, 2, 3, 1))
        device = input.device
        out_h, out_w = geo.out_size
        corner_in_sample = (torch.arange(out_h, device=device)[:, None] *
                            (geo.stride[0] * padded_w) +
                            torch.arange(out_w, device=device) * geo.stride[1]).flatten()
        corners = (torch.arange(batch, device=device)[:, None] * (padded_h * padded_w) +
                   corner_in_sample).flatten()
        # First row of each output pixel's window, then of the padding pixel's.
        self.corners = torch.cat([corners, corners.new_full((1, ), self.image_rows)])
        dy = torch.arange(geo.kernel[0], device=device) * (geo.dilation[0] * padded_w)
        dx = torch.arange(geo.kernel[1], device=device) * geo.dilation[1]
        self.tap_offsets = (dy[:, None] + dx).flatten()

    def images(self, rows: Tensor) -> Tensor:
        """The padded batch (B, Hp, Wp, C) as a view of ``rows``, which are laid out like
        :attr:`rows` (the input's, or its gradient's)."""
        return rows[:self.image_rows].view(self.padded_shape)

    def window_rows(self, pixels: Tensor) -> Tensor:
        """Rows read by output pixels ``pixels``, window by window, tap-major: (P*kh*kw,)."""
        return (self.corners[pixels.flatten()][:, None] + self.tap_offsets).flatten()

    def gather(self, window_rows: Tensor, scratch: _Scratch) -> Tensor:
        """The windows of :meth:`window_rows` as a (P, C*kh*kw) matrix, channel-major like a
        filter ``weight[b, j].view(O, -1)``, so that filters are used where they are: a copy of
        ``weight`` (B*m*O*C*kh*kw values, often more than the input) would cost more than the
        products on small maps. A band is small, so its transposition runs in cache."""
        taps, channels = len(self.tap_offsets), self.rows.shape[1]
        rows = scratch.get('rows', (window_rows.numel(), channels))
        torch.index_select(self.rows, 0, window_rows, out=rows)
        if taps == 1:
            return rows
        cols = scratch.get('cols', (window_rows.numel() // taps, channels, taps))
        return cols.copy_(rows.view(-1, taps, channels).transpose(1, 2)).view(-1, channels * taps)

    def add_windows(self, grad_rows: Tensor, window_rows: Tensor, grad_cols: Tensor,
                    scratch: _Scratch) -> None:
        """The transpose of :meth:`gather`: adds channel-major window gradients ``grad_cols``
        (P, C*kh*kw) to the rows ``window_rows`` of ``grad_rows`` (laid out like :attr:`rows`),
        in ``grad_rows``'s dtype. A pixel read by several windows gets their sum: ``index_add_``
        accumulates repeated indices."""
        taps, channels = len(self.tap_offsets), self.rows.shape[1]
        if taps > 1:
            tap_major = scratch.get('grad_rows', (grad_cols.shape[0], taps, channels))
            grad_cols = tap_major.copy_(grad_cols.view(-1, channels, taps).transpose(1, 2))
        grad_rows.index_add_(0, window_rows, grad_cols.view(-1, channels).to(grad_rows.dtype))


def _length_classes(counts: List[int], slack_rows: int) -> List[Tuple[List[int], int]]:
    """Cuts the non-empty groups, longest first, into runs padded to their first group's length.

    A run takes in the next group while the run's padding stays within ``slack_rows`` rows, i.e.
    while padding costs less than the product call a run of its own would add. Groups of equal
    length always share a run. Returns ``(group keys, length)`` per run.
    """
    keys = sorted((k for k, count in enumerate(counts) if count),
                  key=counts.__getitem__,
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


def _to_device(values: List[int], device: torch.device) -> Tensor:
    """``values`` as a long tensor on ``device``. A copy to a GPU goes through pinned memory
    without blocking: from pageable memory it would wait for the device, a second host sync."""
    tensor = torch.tensor(values, dtype=torch.long)
    if device.type != 'cuda':
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class _Band(NamedTuple):
    """Part of a length class: groups ``key_order[groups]``, whose rows of the block layout are
    ``rows`` and hold the pixels ``pixels`` (groups, rows per group)."""
    groups: slice
    rows: slice
    pixels: Tensor


class _LengthClasses:
    """Output pixels grouped by key ``b*m + region``, the groups cut into length classes.

    ``key_order`` lists the groups class by class. The *block layout* has one row per pixel of
    every group, class by class, each group padded to its class's length with the pixel id
    ``N``; ``pixels`` holds its pixel ids and ``block_row`` the row of every pixel ``n``.

    With ``in_key_order``, every group, empty or not, is padded to the longest in key order, so
    that a band's filters are a slice of ``weight`` itself (see :func:`_filters_outweigh_windows`).
    """

    def __init__(self, regions: Tensor, num_regions: int, out_channels: int, width: int,
                 in_key_order: bool) -> None:
        batch, out_pixels = regions.shape
        device = regions.device
        num_pixels = batch * out_pixels
        keys = (torch.arange(batch, device=device)[:, None] * num_regions + regions).flatten()
        sorted_keys, order = torch.sort(keys, stable=True)
        starts = torch.searchsorted(sorted_keys, torch.arange(batch * num_regions + 1,
                                                              device=device))
        starts_host = starts.tolist()  # the call's one host sync
        counts = [stop - start for start, stop in zip(starts_host, starts_host[1:])]
        self.in_key_order = in_key_order
        if in_key_order:
            classes = [(list(range(len(counts))), max(counts))]
        else:
            call_macs = PRODUCT_CALL_MACS.get(device.type, DEFAULT_PRODUCT_CALL_MACS)
            classes = _length_classes(counts, call_macs // (width * out_channels))

        key_order, group_start = [], [0] * len(counts)
        self.classes: List[Tuple[int, int, int, int]] = []  # (first group, groups, length, row)
        self.num_rows = 0
        for class_keys, length in classes:
            self.classes.append((len(key_order), len(class_keys), length, self.num_rows))
            for key in class_keys:
                group_start[key] = self.num_rows
                self.num_rows += length
            key_order.extend(class_keys)
        self.key_order, group_start = _to_device(key_order + group_start,
                                                 device).split([len(key_order),
                                                                len(group_start)])
        # The i-th pixel of the sorted order sits at its group's start plus its rank in the group.
        rank = torch.arange(num_pixels, device=device) - starts[sorted_keys]
        sorted_rows = group_start[sorted_keys] + rank
        self.pixels = torch.full((self.num_rows, ), num_pixels, dtype=torch.long, device=device)
        self.pixels.index_copy_(0, sorted_rows, order)
        self.block_row = torch.empty_like(sorted_rows).index_copy_(0, order, sorted_rows)

    def splits_groups(self, width: int) -> bool:
        """Whether some group's rows span several bands of :meth:`bands`."""
        rows = _rows_per_band(width, _band_values(self.pixels.device))
        return any(length > rows for _, _, length, _ in self.classes)

    def bands(self, width: int) -> Iterator[_Band]:
        """The classes' blocks cut into bands of :func:`_bands`."""
        for first, groups, length, offset in self.classes:
            block = self.pixels[offset:offset + groups * length].view(groups, length)
            for group_slice, row_slice in _bands(groups, length, width, _band_values(block.device)):
                rows = slice(offset + group_slice.start * length + row_slice.start,
                             offset + (group_slice.stop - 1) * length + row_slice.stop)
                yield _Band(slice(first + group_slice.start, first + group_slice.stop), rows,
                            block[group_slice, row_slice])


def _filters_outweigh_windows(weight: Tensor, num_pixels: int) -> bool:
    """Whether the filters hold more values than the windows of the output pixels (many regions
    and channels on a small map). Then moving the filters into length classes costs more than
    the products that tight classes save, and groups are padded in key order instead."""
    batch, num_regions, out_channels = weight.shape[:3]
    return batch * num_regions * out_channels > num_pixels


def _band_filters(weight: Tensor, classes: _LengthClasses, band: _Band,
                  scratch: _Scratch) -> Tensor:
    """The filters of a band's groups as (S, O, C*kh*kw) matrices: a slice of ``weight`` in key
    order, else copied into a reused buffer."""
    batch, num_regions, out_channels = weight.shape[:3]
    filters = weight.reshape(batch * num_regions, out_channels, -1)
    if classes.in_key_order:
        return filters[band.groups]
    keys = classes.key_order[band.groups]
    return torch.index_select(filters,
                              0,
                              keys,
                              out=scratch.get('filters', (len(keys), *filters.shape[1:])))


def _regions(guide: Tensor) -> Tensor:
    """The guided mask (B, Ho*Wo): the first region of highest score, like ``argmax``.

    Reducing over the last, contiguous dimension is several times faster than over dim 1.
    """
    return guide.permute(0, 2, 3, 1).contiguous().argmax(dim=-1).flatten(1)


def conv_memory_format(tensor: Tensor) -> torch.memory_format:
    """The layout nn.Conv2d gives a result computed from ``tensor``: channels-last for a
    channels-last 4-D tensor, else contiguous."""
    if (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
            and not tensor.is_contiguous()):
        return torch.channels_last
    return torch.contiguous_format


def _as_layout(x: Tensor, dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
    """``x`` in ``dtype`` and ``memory_format``: itself if it already is, else one copy."""
    if x.dtype == dtype and x.is_contiguous(memory_format=memory_format):
        return x
    return torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=memory_format).copy_(x)


def _pixel_rows(image: Tensor) -> Tensor:
    """A (B, C, H, W) batch as (B*H*W + 1, C) rows, one pixel's channels each; the last row,
    the padding pixel's, is zero."""
    batch, channels, height, width = image.shape
    rows = image.new_empty((batch * height * width + 1, channels))
    rows[:-1].view(batch, height, width, channels).copy_(image.permute(0, 2, 3, 1))
    rows[-1].zero_()
    return rows


def region_response_dots(input: Tensor, weight: Tensor, grad_output: Tensor,
                         geo: Geometry) -> Tensor:
    """``<dL/dY(p), Y_j(p)>`` for every region j and pixel p (Eq. 7), as (B, m, Ho, Wo) in the
    accumulation dtype.

    Every region's response is needed: m convolutions of work. They run per band of samples (or
    of one sample's output rows), each sample's m filters stacked as one (m*O)-channel filter:
    as one grouped convolution, where the backend avoids gathering windows and the shapes do not
    depend on the regions (cuDNN autotunes them once); for 1x1 filters as one bmm. The bmm's
    bands are those of the products, small on CPU so that the responses are still in cache for
    the dot products; the convolutions' bands (:data:`GUIDE_CONV_BAND_VALUES`) are larger.
    """
    batch, num_regions, out_channels, channels, kernel_h, kernel_w = weight.shape
    height, width = input.shape[-2:]
    out_h, out_w = geo.out_size
    pad_h, pad_w = geo.padding
    acc_dtype = _accumulation_dtype(weight.dtype)
    dots = grad_output.new_empty((batch, num_regions, out_h, out_w), dtype=acc_dtype)
    if geo.kernel == (1, 1):
        # A 1x1 convolution is a matrix product with the pixels' channels: one bmm, rather than
        # a backend whose 1x1 algorithm depends on the batch size and thread count.
        pixels = F.pad(input, (pad_w, pad_w, pad_h, pad_h)) if pad_h or pad_w else input
        pixels = pixels[:, :, ::geo.stride[0], ::geo.stride[1]][:, :, :out_h, :out_w].reshape(
            batch, channels, out_h * out_w)
        band_values, max_samples = _band_values(input.device), None
    else:
        band_values = GUIDE_CONV_BAND_VALUES.get(input.device.type, DEFAULT_BAND_VALUES)
        max_samples = GUIDE_CONV_SAMPLES.get(input.device.type)
    for samples, rows in _bands(batch, out_h, num_regions * out_channels * out_w, band_values,
                                max_samples):
        count = samples.stop - samples.start
        filters = weight[samples].reshape(-1, channels, kernel_h, kernel_w)
        if geo.kernel == (1, 1):
            responses = torch.bmm(filters.reshape(count, -1, channels),
                                  pixels[samples, :, rows.start * out_w:rows.stop * out_w])
        else:
            # Input rows the band's windows read, and the zero rows of padding among them.
            top = rows.start * geo.stride[0] - pad_h
            bottom = ((rows.stop - 1) * geo.stride[0] - pad_h + (kernel_h - 1) * geo.dilation[0] +
                      1)
            band_input = F.pad(input[samples, :, max(top, 0):min(bottom, height)],
                               (pad_w, pad_w, max(-top, 0), max(bottom - height, 0)))
            responses = F.conv2d(band_input.reshape(1, -1, *band_input.shape[-2:]),
                                 filters,
                                 stride=geo.stride,
                                 dilation=geo.dilation,
                                 groups=count)
        responses = responses.view(count, num_regions, out_channels, -1, out_w).to(acc_dtype)
        band_grads = grad_output[samples, None, :, rows].to(acc_dtype)
        dots[samples, :, rows] = (responses * band_grads).sum(dim=2)
    return dots


@quiet_under_tracing
def region_conv_forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                        geo: Geometry) -> Tensor:
    """Forward of :func:`drconv_mmdet.ops.dr_conv2d` on validated arguments of one dtype."""
    batch, num_regions, out_channels, channels = weight.shape[:4]
    memory_format = conv_memory_format(input)
    width = geo.taps * channels
    output = torch.empty((batch, out_channels, *geo.out_size),
                         dtype=input.dtype,
                         device=input.device,
                         memory_format=memory_format)
    if output.numel() == 0:
        return output
    windows = _BatchWindows(input, geo)
    classes = _LengthClasses(_regions(guide), num_regions, out_channels, width,
                             _filters_outweigh_windows(weight,
                                                       output.numel() // out_channels))
    products = input.new_empty((classes.num_rows, out_channels))
    scratch = _Scratch(input)
    for band in classes.bands(width):
        cols = windows.gather(windows.window_rows(band.pixels), scratch)
        cols = cols.view(*band.pixels.shape, width)
        filters = _band_filters(weight, classes, band, scratch).transpose(1, 2)
        band_products = products[band.rows].view(*band.pixels.shape, out_channels)
        if bias is None:
            torch.bmm(cols, filters, out=band_products)
        else:
            torch.baddbmm(bias.view(1, 1, -1), cols, filters, out=band_products)
    channels_last = output.permute(0, 2, 3, 1)
    if memory_format == torch.channels_last:
        torch.index_select(products, 0, classes.block_row, out=channels_last.view(-1, out_channels))
    else:
        channels_last.copy_(products.index_select(0, classes.block_row).view(channels_last.shape))
    return output


def region_input_weight_grads(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                              geo: Geometry, need_input: bool,
                              need_weight: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The gradients of :func:`region_conv_forward` for ``input`` and ``weight``; ``None``
    where not needed."""
    grad_input = grad_weight = None
    batch, num_regions, out_channels, channels = weight.shape[:4]
    dtype = input.dtype
    acc_dtype = _accumulation_dtype(dtype)
    width = geo.taps * channels
    grad_rows = _pixel_rows(grad_output)
    windows = _BatchWindows(input, geo)
    scratch = _Scratch(input)
    num_pixels = grad_rows.shape[0] - 1

    if num_pixels:
        classes = _LengthClasses(_regions(guide), num_regions, out_channels, width,
                                 _filters_outweigh_windows(weight, num_pixels))
        # In key order every group, empty or not, is in exactly one band unless groups are
        # split: then the bands' products are the weight gradient, written in place.
        grad_in_place = (classes.in_key_order and acc_dtype == dtype
                         and not classes.splits_groups(width))
    if need_weight:
        filters_shape = (batch * num_regions, out_channels, width)
        if num_pixels and grad_in_place:
            grad_filters = weight.new_empty(filters_shape)
        else:
            # Regions without pixels get zero gradients; bands add up the rest.
            grad_filters = weight.new_zeros(filters_shape, dtype=acc_dtype)
    if need_input:
        grad_window_rows = torch.zeros_like(windows.rows, dtype=acc_dtype)
    if num_pixels:
        for band in classes.bands(width):
            shape = band.pixels.shape
            window_rows = windows.window_rows(band.pixels)
            cols = windows.gather(window_rows, scratch).view(*shape, width)
            grads = scratch.get('grads', (*shape, out_channels))
            torch.index_select(grad_rows,
                               0,
                               band.pixels.flatten(),
                               out=grads.view(-1, out_channels))
            if need_weight:
                if grad_in_place:
                    torch.bmm(grads.transpose(1, 2), cols, out=grad_filters[band.groups])
                else:
                    band_grad = scratch.get('band_grad_filters', (shape[0], out_channels, width))
                    torch.bmm(grads.transpose(1, 2), cols, out=band_grad)
                    if classes.in_key_order:
                        grad_filters[band.groups] += band_grad
                    else:
                        grad_filters.index_add_(0, classes.key_order[band.groups],
                                                band_grad.to(acc_dtype))
            if need_input:
                filters = _band_filters(weight, classes, band, scratch)
                grad_cols = scratch.get('grad_cols', (*shape, width))
                torch.bmm(grads, filters, out=grad_cols)
                windows.add_windows(grad_window_rows, window_rows, grad_cols.view(-1, width),
                                    scratch)
    if need_weight:
        grad_weight = grad_filters.view(weight.shape).to(dtype)
    if need_input:
        pad_h, pad_w = geo.padding
        height, width_in = input.shape[-2:]
        grad_images = windows.images(grad_window_rows)[:, pad_h:pad_h + height,
                                                       pad_w:pad_w + width_in]
        grad_input = _as_layout(grad_images.permute(0, 3, 1, 2), dtype, conv_memory_format(input))
    return grad_input, grad_weight


def straight_through_guide_grad(guide: Tensor, dots: Tensor) -> Tensor:
    """The guide's straight-through gradient from the dots of :func:`region_response_dots`:
    back through the softmax that stands in for the argmax (Eq. 8). Half precision would lose
    the small probabilities, so it is done in at least float32."""
    probs_dtype = torch.promote_types(guide.dtype, torch.float32)
    probs = torch.softmax(guide.to(probs_dtype), dim=1)
    grad_probs = dots.to(probs_dtype)
    grad_logits = probs * (grad_probs - (probs * grad_probs).sum(dim=1, keepdim=True))
    return grad_logits.to(guide.dtype)


def bias_grad(grad_output: Tensor) -> Tensor:
    """The bias's gradient, summed in the accumulation dtype."""
    return grad_output.sum(dim=(0, 2, 3),
                           dtype=_accumulation_dtype(grad_output.dtype)).to(grad_output.dtype)
