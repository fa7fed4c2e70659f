"""Region-wise dynamic convolution, the operator behind DRConv.

Chen et al., "Dynamic Region-Aware Convolution", CVPR 2021 (arXiv 2003.12243), Eq. 3-8.

Every output pixel is computed with ONE of ``m`` per-sample filters, the one picked by the argmax of
the guided feature at that pixel. The forward pass therefore does the work of a single convolution:
output pixels are bucketed by region and each bucket is one matrix product with its region's filter.
The guided feature gets the paper's straight-through gradient (softmax in place of the argmax).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .geometry import Geometry, IntPair, as_pair, conv_output_size
from .region_products import region_conv_forward, region_conv_backward

__all__ = ['dr_conv2d', 'dr_conv2d_reference', 'DRConv2dFunction', 'conv_output_size']


class DRConv2dFunction(torch.autograd.Function):
    """Autograd function of :func:`dr_conv2d`: hard-assignment forward, straight-through
    backward."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                geo: Geometry) -> Tensor:
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.save_for_backward(input, weight, guide)
        return region_conv_forward(input, weight, guide, bias, geo)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, weight, guide = ctx.saved_tensors
        need_input, need_weight, need_guide, need_bias = ctx.needs_input_grad[:4]
        grads = region_conv_backward(grad_output, input, weight, guide, ctx.geo, need_input,
                                     need_weight, need_guide, need_bias and ctx.has_bias)
        return (*grads, None)


def _check_args(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                stride: IntPair, padding: IntPair, dilation: IntPair) -> Geometry:
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
            f'weight must have shape (B={batch}, m, O, C={channels}, kh, kw) to match input, but '
            f'got {tuple(weight.shape)}')
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
    return Geometry(*geo_args, out_size)


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
    cols = F.unfold(input, geo.kernel, dilation=geo.dilation, padding=geo.padding,
                    stride=geo.stride)
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
