"""The DRConv op's Triton kernels: routing, forward and gradients without a host sync.

Output pixel ``p`` of sample ``b`` belongs to group ``g = b*m + r``, ``r`` the first region of
highest guide score. A call routes pixels on the device and then computes by group:

- :func:`_route_count_kernel` takes the argmax by an explicit compare (the first maximum and the
  first NaN win, as ``torch.argmax``; ``tl.argmax``'s combine leaves NaNs to the reduction
  order) and counts the pixels of every (sample, region, tile of pixels); one ``cumsum`` of the
  counts in (sample, region, tile) order gives every group a contiguous run of rows, and
  :func:`_route_place_kernel` places each pixel at its group's offset, in raster order within
  the group, so that every sum over a group's pixels has a fixed order;
- :func:`_forward_kernel` is an implicit GEMM per tile of routed rows: it gathers the windows of
  the tile's pixels (any kernel size, stride, padding and dilation) and loops over the groups
  present in the tile; each output value is written once;
- :func:`_weight_grad_kernel` runs one program per (group, output-channel tile, tap x channel
  block) over the group's rows; an empty group writes zeros;
- :func:`_guide_input_grad_kernel` computes ``Z_j = W_j^T dY`` for every region j of a tile of
  pixels: the guide's straight-through gradient needs the dots ``<Z_j, window>`` (Eq. 7, then
  the softmax's backward, Eq. 8) and the input gradient is the pixel's own ``Z_r`` added onto
  its window, so it comes with the m responses. The adds are float32 atomics; under
  ``torch.use_deterministic_algorithms(True)`` the kernel runs once per tap instead, where no two
  pixels of a launch share an input value, and adds without atomics in tap order.

Grids depend on shapes only and nothing is read back, so calls can be captured in CUDA graphs.
Kernels read the input channels-last (one copy for other layouts) and the filters along input
channels (one copy of the filter bank), and accumulate in float32. Block sizes come from a
fixed table: autotuning would time kernels, which syncs and cannot be captured.

With ``TRITON_INTERPRET=1`` set before this module is imported, the kernels run on CPU tensors
in Triton's interpreter, which is how they are tested without a GPU. The interpreter computes
bfloat16 on raw bits, so there the kernels convert bfloat16 to float32 before products.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .geometry import Geometry

__all__ = ['INTERPRETED', 'DTYPES', 'supports', 'region_conv_forward', 'region_conv_backward']

# Floating dtypes the kernels take; float64 stays with the PyTorch kernels (GPU tensor cores
# have no float64 products worth a Triton path).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _window_offsets(ho, wo, tap, in_h, in_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, sx_h,
                    sx_w, KW: tl.constexpr):
    """Offsets (without the sample's and channel's) of the input pixels that tap ``tap`` of the
    windows of output pixels ``(ho, wo)`` reads, and whether they lie inside the input."""
    ih = ho * stride_h - pad_h + (tap // KW) * dil_h
    iw = wo * stride_w - pad_w + (tap % KW) * dil_w
    inside = (ih >= 0) & (ih < in_h) & (iw >= 0) & (iw < in_w)
    return ih.to(tl.int64) * sx_h + iw.to(tl.int64) * sx_w, inside


@triton.jit
def _route_count_kernel(guide_ptr, region_ptr, counts_ptr, num_regions, out_pixels, out_w, sg_b,
                        sg_m, sg_h, sg_w, tiles, GUIDE_F64: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0)
    tile = tl.program_id(1)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = p < out_pixels
    offsets = b.to(tl.int64) * sg_b + (p // out_w).to(tl.int64) * sg_h + (p % out_w) * sg_w
    # Scores are compared in float32 (float64 for a float64 guide): half types convert exactly,
    # so no new ties appear.
    if GUIDE_F64:
        best = tl.load(guide_ptr + offsets, mask=valid, other=0.0).to(tl.float64)
    else:
        best = tl.load(guide_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    region = tl.zeros([BLOCK_P], dtype=tl.int32)
    for j in range(1, num_regions):
        score = tl.load(guide_ptr + offsets + j * sg_m, mask=valid, other=0.0).to(best.dtype)
        # A NaN beats any number and no later NaN beats it: torch.argmax's first NaN.
        better = (score > best) | ((score != score) & (best == best))
        best = tl.where(better, score, best)
        region = tl.where(better, j, region)
    tl.store(region_ptr + b.to(tl.int64) * out_pixels + p, region, mask=valid)
    for j in range(num_regions):
        count = tl.sum((valid & (region == j)).to(tl.int32), axis=0)
        tl.store(counts_ptr + (b * num_regions + j) * tiles + tile, count)


@triton.jit
def _route_place_kernel(region_ptr, starts_ptr, rows_ptr, num_regions, out_pixels, tiles,
                        BLOCK_P: tl.constexpr):
    b = tl.program_id(0)
    tile = tl.program_id(1)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = p < out_pixels
    pixel = b.to(tl.int64) * out_pixels + p
    region = tl.load(region_ptr + pixel, mask=valid, other=-1)
    for j in range(num_regions):
        mine = region == j
        rank = tl.cumsum(mine.to(tl.int32), axis=0) - 1
        start = tl.load(starts_ptr + (b * num_regions + j) * tiles + tile)
        tl.store(rows_ptr + start + rank, pixel, mask=mine)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, rows_ptr, region_ptr, num_pixels, num_regions,
                    channels, out_channels, in_h, in_w, out_pixels, out_w, stride_h, stride_w,
                    pad_h, pad_w, dil_h, dil_w, sx_b, sx_c, sx_h, sx_w, sw_b, sw_m, sw_o, sw_t,
                    sw_c, sy_b, sy_o, sy_h, sy_w, HAS_BIAS: tl.constexpr, KH: tl.constexpr,
                    KW: tl.constexpr, TO_FLOAT32: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_valid = rows < num_pixels
    pixel = tl.load(rows_ptr + rows, mask=row_valid, other=0)
    region = tl.load(region_ptr + pixel, mask=row_valid, other=0)
    b = pixel // out_pixels
    p = pixel % out_pixels
    ho = p // out_w
    wo = p % out_w
    key = tl.where(row_valid, b * num_regions + region, -1).to(tl.int32)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_valid = o < out_channels
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Rows come sorted by key: the tile's groups are the keys between its first and last row.
    first = tl.min(tl.where(row_valid, key, 2147483647), axis=0)
    last = tl.max(key, axis=0)
    for group in range(first, last + 1):
        member = key == group
        if tl.sum(member.to(tl.int32), axis=0) > 0:
            filters = (w_ptr + (group // num_regions).to(tl.int64) * sw_b +
                       (group % num_regions) * sw_m + o[None, :] * sw_o)
            for tap in tl.static_range(KH * KW):
                offsets, inside = _window_offsets(ho, wo, tap, in_h, in_w, stride_h, stride_w,
                                                  pad_h, pad_w, dil_h, dil_w, sx_h, sx_w, KW)
                pixels = x_ptr + b.to(tl.int64) * sx_b + offsets
                read = member & inside
                for c0 in range(0, channels, BLOCK_C):
                    c = c0 + tl.arange(0, BLOCK_C)
                    c_valid = c < channels
                    # Rows of other groups read zeros, so one accumulator serves every group.
                    a = tl.load(pixels[:, None] + c[None, :] * sx_c,
                                mask=read[:, None] & c_valid[None, :],
                                other=0.0)
                    w = tl.load(filters + tap * sw_t + c[:, None] * sw_c,
                                mask=c_valid[:, None] & o_valid[None, :],
                                other=0.0)
                    if TO_FLOAT32:
                        a = a.to(tl.float32)
                        w = w.to(tl.float32)
                    acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_valid, other=0.0).to(tl.float32)[None, :]
    out = (y_ptr + b.to(tl.int64)[:, None] * sy_b + o[None, :] * sy_o +
           ho.to(tl.int64)[:, None] * sy_h + wo.to(tl.int64)[:, None] * sy_w)
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_valid[:, None] & o_valid[None, :])


@triton.jit
def _weight_grad_kernel(x_ptr, gy_ptr, gw_ptr, rows_ptr, group_start_ptr, group_end_ptr,
                        num_regions, channels, out_channels, in_h, in_w, out_pixels, out_w,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, sx_b, sx_c, sx_h, sx_w,
                        sgy_b, sgy_o, sgy_h, sgy_w, sgw_b, sgw_m, sgw_o, sgw_c, sgw_t,
                        KH: tl.constexpr, KW: tl.constexpr, TO_FLOAT32: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    group = tl.program_id(0)
    channel_blocks = tl.cdiv(channels, BLOCK_C)
    tap = tl.program_id(2) // channel_blocks
    c = (tl.program_id(2) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = c < channels
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_valid = o < out_channels
    b = group // num_regions
    start = tl.load(group_start_ptr + group).to(tl.int32)
    end = tl.load(group_end_ptr + group).to(tl.int32)
    acc = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)
    for row0 in range(start, end, BLOCK_P):
        rows = row0 + tl.arange(0, BLOCK_P)
        row_valid = rows < end
        p = tl.load(rows_ptr + rows, mask=row_valid, other=0) - b.to(tl.int64) * out_pixels
        ho = p // out_w
        wo = p % out_w
        gy = tl.load(gy_ptr + b.to(tl.int64) * sgy_b + ho[:, None] * sgy_h + wo[:, None] * sgy_w +
                     o[None, :] * sgy_o,
                     mask=row_valid[:, None] & o_valid[None, :],
                     other=0.0)
        offsets, inside = _window_offsets(ho, wo, tap, in_h, in_w, stride_h, stride_w, pad_h, pad_w,
                                          dil_h, dil_w, sx_h, sx_w, KW)
        a = tl.load(x_ptr + b.to(tl.int64) * sx_b + offsets[:, None] + c[None, :] * sx_c,
                    mask=(row_valid & inside)[:, None] & c_valid[None, :],
                    other=0.0)
        if TO_FLOAT32:
            gy = gy.to(tl.float32)
            a = a.to(tl.float32)
        acc = tl.dot(tl.trans(gy), a, acc, input_precision=PRECISION)
    out = (gw_ptr + b.to(tl.int64) * sgw_b + (group % num_regions) * sgw_m + o[:, None] * sgw_o +
           c[None, :] * sgw_c + tap * sgw_t)
    tl.store(out, acc.to(gw_ptr.dtype.element_ty), mask=o_valid[:, None] & c_valid[None, :])


@triton.jit
def _guide_input_grad_kernel(
        x_ptr, w_ptr, gy_ptr, guide_ptr, region_ptr, gx_ptr, dots_ptr, gg_ptr, num_regions,
        channels, out_channels, in_h, in_w, out_pixels, out_w, stride_h, stride_w, pad_h, pad_w,
        dil_h, dil_w, sx_b, sx_c, sx_h, sx_w, sw_b, sw_m, sw_o, sw_t, sw_c, sgy_b, sgy_o, sgy_h,
        sgy_w, sg_b, sg_m, sg_h, sg_w, KH: tl.constexpr, KW: tl.constexpr, TAP_START: tl.constexpr,
        TAP_STOP: tl.constexpr, ATOMIC: tl.constexpr, NEED_INPUT: tl.constexpr,
        NEED_GUIDE: tl.constexpr, LOAD_DOTS: tl.constexpr, SOFTMAX: tl.constexpr,
        GUIDE_F64: tl.constexpr, TO_FLOAT32: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = p < out_pixels
    ho = p // out_w
    wo = p % out_w
    region = tl.load(region_ptr + b.to(tl.int64) * out_pixels + p, mask=valid, other=-1)
    if NEED_GUIDE:
        first = 0
        last = num_regions - 1
    else:
        # Only the pixels' own regions: the input gradient alone does one product per pixel.
        first = tl.min(tl.where(valid, region, 2147483647), axis=0)
        last = tl.max(region, axis=0)
    js = tl.arange(0, BLOCK_R)
    dots = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    dots_at = (dots_ptr + (b.to(tl.int64) * num_regions + js[None, :]) * out_pixels + p[:, None])
    dots_mask = valid[:, None] & (js[None, :] < num_regions)
    if LOAD_DOTS:
        dots = tl.load(dots_at, mask=dots_mask, other=0.0)
    gy_at = (gy_ptr + b.to(tl.int64) * sgy_b + ho.to(tl.int64)[:, None] * sgy_h +
             wo.to(tl.int64)[:, None] * sgy_w)
    sample_filters = w_ptr + b.to(tl.int64) * sw_b
    for tap in tl.static_range(TAP_START, TAP_STOP):
        offsets, inside = _window_offsets(ho, wo, tap, in_h, in_w, stride_h, stride_w, pad_h, pad_w,
                                          dil_h, dil_w, sx_h, sx_w, KW)
        read = valid & inside
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_valid = c < channels
            window_mask = read[:, None] & c_valid[None, :]
            if NEED_GUIDE:
                a = tl.load(x_ptr + b.to(tl.int64) * sx_b + offsets[:, None] + c[None, :] * sx_c,
                            mask=window_mask,
                            other=0.0).to(tl.float32)
            own = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
            for o0 in range(0, out_channels, BLOCK_O):
                o = o0 + tl.arange(0, BLOCK_O)
                o_valid = o < out_channels
                gy = tl.load(gy_at + o[None, :] * sgy_o,
                             mask=valid[:, None] & o_valid[None, :],
                             other=0.0)
                if TO_FLOAT32:
                    gy = gy.to(tl.float32)
                for j in range(first, last + 1):
                    w = tl.load(sample_filters + j * sw_m + o[:, None] * sw_o + tap * sw_t +
                                c[None, :] * sw_c,
                                mask=o_valid[:, None] & c_valid[None, :],
                                other=0.0)
                    if TO_FLOAT32:
                        w = w.to(tl.float32)
                    # Z_j over this block of output channels: the sums over blocks are linear,
                    # so both uses take the blocks one by one.
                    z = tl.dot(gy, w, input_precision=PRECISION)
                    if NEED_GUIDE:
                        dots += tl.where(js[None, :] == j, tl.sum(z * a, axis=1)[:, None], 0.0)
                    if NEED_INPUT:
                        own += tl.where((region == j)[:, None], z, 0.0)
            if NEED_INPUT:
                # The input gradient has the input's (channels-last) strides.
                grads = gx_ptr + b.to(tl.int64) * sx_b + offsets[:, None] + c[None, :] * sx_c
                if ATOMIC:
                    tl.atomic_add(grads, own, mask=window_mask, sem='relaxed')
                else:
                    # One tap per launch: no two pixels of the launch read one input value.
                    own += tl.load(grads, mask=window_mask, other=0.0)
                    tl.store(grads, own, mask=window_mask)
    if NEED_GUIDE:
        if SOFTMAX:
            # Eq. 8: back through the softmax that stands in for the argmax, in float32 (float64
            # for a float64 guide), whatever the input's dtype.
            logits_at = (guide_ptr + b.to(tl.int64) * sg_b + js[None, :] * sg_m +
                         ho.to(tl.int64)[:, None] * sg_h + wo.to(tl.int64)[:, None] * sg_w)
            if GUIDE_F64:
                logits = tl.load(logits_at, mask=dots_mask, other=0.0).to(tl.float64)
                dots = dots.to(tl.float64)
            else:
                logits = tl.load(logits_at, mask=dots_mask, other=0.0).to(tl.float32)
            # Padding columns take no probability; padding rows stay finite.
            logits = tl.where(js[None, :] < num_regions, logits, float('-inf'))
            logits = logits - tl.max(logits, axis=1)[:, None]
            probs = tl.exp(logits)
            probs = probs / tl.sum(probs, axis=1)[:, None]
            grad = probs * (dots - tl.sum(probs * dots, axis=1)[:, None])
            grad_at = (gg_ptr + b.to(tl.int64) * sg_b + js[None, :] * sg_m +
                       ho.to(tl.int64)[:, None] * sg_h + wo.to(tl.int64)[:, None] * sg_w)
            tl.store(grad_at, grad.to(gg_ptr.dtype.element_ty), mask=dots_mask)
        else:
            tl.store(dots_at, dots, mask=dots_mask)


# Whether the kernels run in Triton's interpreter (TRITON_INTERPRET=1 when they were defined).
INTERPRETED = not isinstance(_forward_kernel, triton.runtime.JITFunction)

# Output pixels per program of the routing kernels.
_ROUTE_BLOCK = 512


class _Blocks(NamedTuple):
    """Block sizes of one call: output pixels, output channels and input channels per program
    step. ``tl.dot`` takes blocks of at least 16 along each dimension."""
    pixels: int
    out_channels: int
    channels: int


def _blocks(dtype: torch.dtype, out_channels: int, channels: int) -> _Blocks:
    """The fixed table: half types take blocks twice as wide along channels as float32, which
    holds twice the bytes per value in registers."""
    half = dtype != torch.float32
    return _Blocks(pixels=64,
                   out_channels=min(max(triton.next_power_of_2(out_channels), 16),
                                    128 if half else 64),
                   channels=min(max(triton.next_power_of_2(channels), 16), 64 if half else 32))


def supports(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernels run tensors of ``dtype`` on ``device``: CUDA tensors when compiled,
    CPU tensors in the interpreter."""
    return dtype in DTYPES and device.type == ('cpu' if INTERPRETED else 'cuda')


def _check(input: Tensor) -> None:
    if not supports(input.dtype, input.device):
        where = 'CPU tensors in the interpreter' if INTERPRETED else (
            'CUDA tensors (CPU tensors only in the interpreter: TRITON_INTERPRET=1 set before '
            'triton is imported)')
        raise ValueError(f'the Triton kernels take {", ".join(map(str, DTYPES))} {where}, but '
                         f'got {input.dtype} on {input.device}')


def _channels_last(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) with channels-last strides: itself if it has them, else one copy."""
    return x.contiguous(memory_format=torch.channels_last)


def _filters_along_channels(weight: Tensor) -> Tensor:
    """The filter bank (B, m, O, C, kh, kw) as (B, m, O, kh*kw, C), C contiguous: one copy."""
    batch, num_regions, out_channels, channels = weight.shape[:4]
    return weight.permute(0, 1, 2, 4, 5, 3).reshape(batch, num_regions, out_channels, -1, channels)


def _to_float32(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype == torch.bfloat16


def _precision(dtype: torch.dtype) -> str:
    """TF32 products for float32 where cuDNN's convolutions take them."""
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRETED
    return 'tf32' if tf32 else 'ieee'


def _geometry_args(input: Tensor, geo: Geometry) -> Tuple[int, ...]:
    """in_h, in_w, out_pixels, out_w, stride, padding and dilation, as the kernels take them."""
    out_h, out_w = geo.out_size
    return (*input.shape[-2:], out_h * out_w, out_w, *geo.stride, *geo.padding, *geo.dilation)


class _Routing(NamedTuple):
    """Output pixels routed to groups ``b*m + r``: ``regions`` (B*Ho*Wo,) the region of every
    pixel; ``rows`` (B*Ho*Wo,) the pixel ids in group order, raster order within a group;
    ``group_start`` and ``group_end`` (B*m,) each group's rows."""
    regions: Tensor
    rows: Tensor
    group_start: Tensor
    group_end: Tensor


def _route(guide: Tensor) -> _Routing:
    batch, num_regions, out_h, out_w = guide.shape
    out_pixels = out_h * out_w
    tiles = triton.cdiv(out_pixels, _ROUTE_BLOCK)
    device = guide.device
    regions = torch.empty(batch * out_pixels, dtype=torch.int32, device=device)
    counts = torch.empty((batch, num_regions, tiles), dtype=torch.int32, device=device)
    _route_count_kernel[(batch, tiles)](guide,
                                        regions,
                                        counts,
                                        num_regions,
                                        out_pixels,
                                        out_w,
                                        *guide.stride(),
                                        tiles,
                                        GUIDE_F64=guide.dtype == torch.float64,
                                        BLOCK_P=_ROUTE_BLOCK)
    ends = counts.view(-1).cumsum(0)
    starts = ends - counts.view(-1)
    rows = torch.empty(batch * out_pixels, dtype=torch.int64, device=device)
    _route_place_kernel[(batch, tiles)](regions,
                                        starts,
                                        rows,
                                        num_regions,
                                        out_pixels,
                                        tiles,
                                        BLOCK_P=_ROUTE_BLOCK)
    return _Routing(regions, rows, starts.view(-1, tiles)[:, 0], ends.view(-1, tiles)[:, -1])


def region_conv_forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                        geo: Geometry, memory_format: torch.memory_format) -> Tensor:
    """Forward of :func:`drconv_mmdet.ops.dr_conv2d` on validated arguments of one dtype of
    :data:`DTYPES`; the output in ``memory_format``."""
    _check(input)
    batch, num_regions, out_channels, channels = weight.shape[:4]
    output = torch.empty((batch, out_channels, *geo.out_size),
                         dtype=input.dtype,
                         device=input.device,
                         memory_format=memory_format)
    if output.numel() == 0:
        return output
    routing = _route(guide)
    x = _channels_last(input)
    filters = _filters_along_channels(weight)
    blocks = _blocks(input.dtype, out_channels, channels)
    num_pixels = routing.rows.numel()
    grid = (triton.cdiv(num_pixels, blocks.pixels), triton.cdiv(out_channels, blocks.out_channels))
    _forward_kernel[grid](x,
                          filters,
                          output if bias is None else bias,
                          output,
                          routing.rows,
                          routing.regions,
                          num_pixels,
                          num_regions,
                          channels,
                          out_channels,
                          *_geometry_args(input, geo),
                          *x.stride(),
                          *filters.stride(),
                          *output.stride(),
                          HAS_BIAS=bias is not None,
                          KH=geo.kernel[0],
                          KW=geo.kernel[1],
                          TO_FLOAT32=_to_float32(input.dtype),
                          PRECISION=_precision(input.dtype),
                          BLOCK_M=blocks.pixels,
                          BLOCK_N=blocks.out_channels,
                          BLOCK_C=blocks.channels)
    return output


def region_conv_backward(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                         geo: Geometry, need_input: bool, need_weight: bool, need_guide: bool,
                         input_format: torch.memory_format) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`region_conv_forward` for ``(input, weight, guide)``; ``None`` where
    not needed. The input gradient in ``input_format``, the others contiguous; the guide gets
    the straight-through gradient (Eq. 7-8)."""
    _check(input)
    grad_input = grad_weight = grad_guide = None
    batch, num_regions, out_channels, channels = weight.shape[:4]
    if grad_output.numel() == 0:
        if need_input:
            grad_input = torch.zeros_like(input, memory_format=input_format)
        if need_weight:
            grad_weight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        if need_guide:
            grad_guide = torch.zeros_like(guide, memory_format=torch.contiguous_format)
        return grad_input, grad_weight, grad_guide
    routing = _route(guide)
    x = _channels_last(input)
    blocks = _blocks(input.dtype, out_channels, channels)
    geometry = _geometry_args(input, geo)
    flags = dict(KH=geo.kernel[0],
                 KW=geo.kernel[1],
                 TO_FLOAT32=_to_float32(input.dtype),
                 PRECISION=_precision(input.dtype))
    if need_weight:
        grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
        # Viewed as (B, m, O, C, kh*kw): the kernel's tap is one index.
        grad_filters = grad_weight.view(*weight.shape[:4], -1)
        grid = (batch * num_regions, triton.cdiv(out_channels, blocks.out_channels),
                geo.taps * triton.cdiv(channels, blocks.channels))
        _weight_grad_kernel[grid](x,
                                  grad_output,
                                  grad_filters,
                                  routing.rows,
                                  routing.group_start,
                                  routing.group_end,
                                  num_regions,
                                  channels,
                                  out_channels,
                                  *geometry,
                                  *x.stride(),
                                  *grad_output.stride(),
                                  *grad_filters.stride(),
                                  **flags,
                                  BLOCK_P=blocks.pixels,
                                  BLOCK_O=blocks.out_channels,
                                  BLOCK_C=blocks.channels)
    if need_input or need_guide:
        grad_input, grad_guide = _guide_input_grads(grad_output, x, weight, guide, routing, geo,
                                                    need_input, need_guide, blocks, geometry, flags)
        if need_input:
            grad_input = grad_input.to(input.dtype, memory_format=input_format)
    return grad_input, grad_weight, grad_guide


def _guide_input_grads(grad_output: Tensor, x: Tensor, weight: Tensor, guide: Tensor,
                       routing: _Routing, geo: Geometry, need_input: bool, need_guide: bool,
                       blocks: _Blocks, geometry: Tuple[int, ...],
                       flags: dict) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The guide's and the input's gradients, by :func:`_guide_input_grad_kernel`; the input's
    in float32 with the strides of ``x``."""
    batch, num_regions, out_channels, channels = weight.shape[:4]
    out_pixels = guide.shape[-1] * guide.shape[-2]
    filters = _filters_along_channels(weight)
    # With the strides of x (dense), which the kernel uses for both.
    grad_x = torch.zeros_like(x, dtype=torch.float32) if need_input else None
    # The guide's gradient takes the guide's strides, which a contiguous guide makes dense.
    guide = guide.contiguous()
    grad_guide = torch.empty_like(guide) if need_guide else None
    # Atomic adds, unless a deterministic result is asked for and windows overlap (one tap
    # never adds twice to one input value): then one launch per tap, the guide's dots kept
    # between launches in float32.
    per_tap = (need_input and geo.taps > 1 and torch.are_deterministic_algorithms_enabled())
    launches = [(tap, tap + 1) for tap in range(geo.taps)] if per_tap else [(0, geo.taps)]
    dots = (torch.empty((batch, num_regions, out_pixels), dtype=torch.float32, device=x.device)
            if per_tap and need_guide else routing.regions)
    grid = (batch, triton.cdiv(out_pixels, blocks.pixels))
    for i, (tap_start, tap_stop) in enumerate(launches):
        last = i == len(launches) - 1
        _guide_input_grad_kernel[grid](x,
                                       filters,
                                       grad_output,
                                       guide,
                                       routing.regions,
                                       routing.regions if grad_x is None else grad_x,
                                       dots,
                                       routing.regions if grad_guide is None else grad_guide,
                                       num_regions,
                                       channels,
                                       out_channels,
                                       *geometry,
                                       *x.stride(),
                                       *filters.stride(),
                                       *grad_output.stride(),
                                       *guide.stride(),
                                       **flags,
                                       TAP_START=tap_start,
                                       TAP_STOP=tap_stop,
                                       ATOMIC=geo.taps > 1 and not per_tap,
                                       NEED_INPUT=need_input,
                                       NEED_GUIDE=need_guide,
                                       LOAD_DOTS=need_guide and i > 0,
                                       SOFTMAX=last,
                                       GUIDE_F64=guide.dtype == torch.float64,
                                       BLOCK_M=blocks.pixels,
                                       BLOCK_O=blocks.out_channels,
                                       BLOCK_C=blocks.channels,
                                       BLOCK_R=max(triton.next_power_of_2(num_regions), 2))
    return grad_x, grad_guide
