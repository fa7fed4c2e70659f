"""Region-wise dynamic convolution, the operator behind DRConv.

Chen et al., "Dynamic Region-Aware Convolution", CVPR 2021 (arXiv 2003.12243), Eq. 3-8.

Every output pixel is computed with ONE of ``m`` per-sample filters, the one picked by the argmax of
the guided feature at that pixel. The forward pass therefore does the multiply-adds of a single
convolution: output pixels are bucketed by region and each bucket is one matrix product with its
region's filter (docs/kernels.md says which kernels do it on which device).
The guided feature gets the paper's straight-through gradient (softmax in place of the argmax).
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..torch_compat import get_autocast_dtype, is_autocast_enabled
from .geometry import Geometry, IntPair, as_pair, conv_output_size, make_geometry
from .implementations import (DEVICE_DEFAULTS, backward, chosen_kernels, forward, kernels_for,
                              use_kernels)
from .onnx_lowering import dr_conv2d_lowered
from .region_products import conv_memory_format, quiet_under_tracing

__all__ = [
    'dr_conv2d', 'dr_conv2d_reference', 'DRConv2dFunction', 'conv_output_size', 'JIT_NODE_KIND'
]

# torch >= 2.4 registers the op with torch.library (``torch.ops.drconv.dr_conv2d``), which
# torch.compile, fake tensors and opcheck understand; older torch runs the same kernels through
# DRConv2dFunction. Either way the kernels are those of the call's device (see
# .implementations), and a backward pass runs the kernels its forward pass chose.
USE_CUSTOM_OP = hasattr(torch.library, 'custom_op')
# What torch.jit.trace records for a DRConv (mmengine's FLOP counter matches ops by this name).
JIT_NODE_KIND = 'drconv::dr_conv2d' if USE_CUSTOM_OP else 'prim::PythonOp.DRConv2dFunction'


class DRConv2dFunction(torch.autograd.Function):
    """Autograd function of :func:`dr_conv2d` on torch < 2.4: hard-assignment forward,
    straight-through backward."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                geo: Geometry) -> Tensor:
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.kernels = kernels_for(input)
        ctx.save_for_backward(input, weight, guide)
        return forward(input, weight, guide, bias, geo, ctx.kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, weight, guide = ctx.saved_tensors
        need_input, need_weight, need_guide, need_bias = ctx.needs_input_grad[:4]
        grads = backward(grad_output, input, weight, guide, ctx.geo, need_input, need_weight,
                         need_guide, need_bias and ctx.has_bias, ctx.kernels)
        return (*grads, None)


def _op_geometry(input: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                 dilation: List[int]) -> Geometry:
    return make_geometry(input.shape[-2:], weight.shape[-2:], stride, padding, dilation)


# The registered op. Its arguments are validated by dr_conv2d; the geometry travels as int
# lists, which the op schema can hold. Outputs get fixed layouts (the fake kernels promise them
# to torch.compile): the op's output and the gradients of 4-D tensors follow
# conv_memory_format, the other gradients are contiguous. Each device type of DEVICE_DEFAULTS
# gets kernels of its own, which run its default implementation; other devices run the PyTorch
# kernels.

DefaultKernels = Callable[[Tensor], str]


def _pytorch_kernels(input: Tensor) -> str:
    return 'pytorch'


def _op_forward_with(default: DefaultKernels) -> Callable:
    """The op's forward kernel for a device type whose default implementation is
    ``default``."""

    def op_forward(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                   stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
        geo = _op_geometry(input, weight, stride, padding, dilation)
        output = forward(input, weight, guide, bias, geo, kernels_for(input, default))
        return output.contiguous(memory_format=conv_memory_format(input))

    return op_forward


def _op_forward_fake(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                     stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    geo = _op_geometry(input, weight, stride, padding, dilation)
    return torch.empty((input.shape[0], weight.shape[2], *geo.out_size),
                       dtype=input.dtype,
                       device=input.device,
                       memory_format=conv_memory_format(input))


def _op_backward_with(default: DefaultKernels) -> Callable:
    """The op's backward kernel for a device type whose default implementation is
    ``default``."""

    def op_backward(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                    stride: List[int], padding: List[int], dilation: List[int],
                    output_mask: List[bool]) -> List[Tensor]:
        """The gradients for ``(input, weight, guide, bias)`` that ``output_mask`` asks for, in
        that order (a schema cannot return None)."""
        geo = _op_geometry(input, weight, stride, padding, dilation)
        grads = backward(grad_output, input, weight, guide, geo, *output_mask,
                         kernels_for(input, default))
        likes = _gradient_likes(grad_output, input, weight, guide)
        return [
            grad.contiguous(memory_format=conv_memory_format(like))
            for grad, like, needed in zip(grads, likes, output_mask) if needed
        ]

    return op_backward


def _op_backward_fake(grad_output: Tensor, input: Tensor, weight: Tensor, guide: Tensor,
                      stride: List[int], padding: List[int], dilation: List[int],
                      output_mask: List[bool]) -> List[Tensor]:
    likes = _gradient_likes(grad_output, input, weight, guide)
    return [
        torch.empty_like(like, memory_format=conv_memory_format(like))
        for like, needed in zip(likes, output_mask) if needed
    ]


def _gradient_likes(grad_output: Tensor, input: Tensor, weight: Tensor,
                    guide: Tensor) -> Tuple[Tensor, ...]:
    """Tensors with the shape and dtype of the gradients of ``(input, weight, guide, bias)``;
    the bias (O,) has the dtype of the output."""
    return input, weight, guide, grad_output.new_empty((weight.shape[2], ))


def _op_setup_context(ctx, inputs: Tuple, output: Tensor) -> None:
    input, weight, guide, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, weight, guide)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None
    ctx.kernels = chosen_kernels()


def _op_autograd_backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
    input, weight, guide = ctx.saved_tensors
    need_input, need_weight, need_guide, need_bias = ctx.needs_input_grad[:4]
    output_mask = [need_input, need_weight, need_guide, need_bias and ctx.has_bias]
    with use_kernels(ctx.kernels):
        grads = iter(
            torch.ops.drconv.dr_conv2d_backward(grad_output, input, weight, guide, *ctx.geometry,
                                                output_mask))
    return (*(next(grads) if needed else None for needed in output_mask), None, None, None)


if USE_CUSTOM_OP:
    _forward_op = torch.library.custom_op('drconv::dr_conv2d',
                                          _op_forward_with(_pytorch_kernels),
                                          mutates_args=())
    _forward_op.register_fake(_op_forward_fake)
    _backward_op = torch.library.custom_op('drconv::dr_conv2d_backward',
                                           _op_backward_with(_pytorch_kernels),
                                           mutates_args=())
    _backward_op.register_fake(_op_backward_fake)
    for _device_type, _default in DEVICE_DEFAULTS.items():
        _forward_op.register_kernel(_device_type, _op_forward_with(_default))
        _backward_op.register_kernel(_device_type, _op_backward_with(_default))
    torch.library.register_autograd('drconv::dr_conv2d',
                                    _op_autograd_backward,
                                    setup_context=_op_setup_context)


def _region_conv(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                 geo: Geometry) -> Tensor:
    if USE_CUSTOM_OP:
        return torch.ops.drconv.dr_conv2d(input, weight, guide, bias, list(geo.stride),
                                          list(geo.padding), list(geo.dilation))
    return DRConv2dFunction.apply(input, weight, guide, bias, geo)


@quiet_under_tracing
def _sizes(tensor: Tensor) -> Tuple[int, ...]:
    # Under torch.jit.trace (FLOP counting) sizes are traced tensors; the checks only need their
    # values and the recorded op takes no size. Otherwise sizes stay as they are, so that
    # torch.compile keeps dynamic sizes symbolic.
    if torch.jit.is_tracing():
        return tuple(int(s) for s in tensor.shape)
    return tuple(tensor.shape)


def _check_args(input: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor],
                stride: IntPair, padding: IntPair, dilation: IntPair) -> Geometry:
    if input.dim() != 4:
        raise ValueError(f'input must be 4-D (B, C, H, W), but got shape {tuple(input.shape)}')
    if weight.dim() != 6:
        raise ValueError('weight must be 6-D (B, m, O, C, kh, kw), but got shape '
                         f'{tuple(weight.shape)}')
    if guide.dim() != 4:
        raise ValueError(f'guide must be 4-D (B, m, Ho, Wo), but got shape {tuple(guide.shape)}')
    input_shape, weight_shape, guide_shape = _sizes(input), _sizes(weight), _sizes(guide)
    batch, channels = input_shape[:2]
    if weight_shape[0] != batch or weight_shape[3] != channels:
        raise ValueError(
            f'weight must have shape (B={batch}, m, O, C={channels}, kh, kw) to match input, but '
            f'got {weight_shape}')
    num_regions, out_channels = weight_shape[1:3]
    if num_regions < 1 or out_channels < 1:
        raise ValueError(f'weight must have at least one region and one output channel, but got '
                         f'shape {weight_shape}')
    if bias is not None and _sizes(bias) != (out_channels, ):
        raise ValueError(f'bias must have shape ({out_channels},), but got {tuple(bias.shape)}')
    named = {'input': input, 'weight': weight, 'guide': guide, 'bias': bias}
    devices = {name: tensor.device for name, tensor in named.items() if tensor is not None}
    if len(set(devices.values())) > 1:
        names = list(devices)
        raise ValueError(f'{", ".join(names[:-1])} and {names[-1]} must be on one device, but '
                         'got ' + ', '.join(f'{name} on {device}'
                                            for name, device in devices.items()))
    if not input.is_floating_point():
        raise ValueError(f'input must be a floating point tensor, but got {input.dtype}')
    for name, tensor in (('weight', weight), ('bias', bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise ValueError(f'{name} must have the dtype of input ({input.dtype}), but got '
                             f'{tensor.dtype}')
    if not guide.is_floating_point():
        raise ValueError(f'guide must be a floating point tensor of logits, but got {guide.dtype}')
    geo = make_geometry(input_shape[-2:], weight_shape[-2:], as_pair(stride, 'stride', 1),
                        as_pair(padding, 'padding', 0), as_pair(dilation, 'dilation', 1))
    if min(geo.out_size) < 1:
        raise ValueError(f'input of spatial size {input_shape[-2:]} is too small for kernel '
                         f'{geo.kernel} with stride {geo.stride}, padding {geo.padding} and '
                         f'dilation {geo.dilation}')
    expected_guide = (batch, num_regions, *geo.out_size)
    if guide_shape != expected_guide:
        raise ValueError(f'guide must have shape (B, m, Ho, Wo) = {expected_guide}, but got '
                         f'{guide_shape}')
    return geo


def _autocast(tensor: Optional[Tensor], device_type: str, dtype: torch.dtype) -> Optional[Tensor]:
    """``tensor`` as autocast casts an argument of nn.Conv2d: floating point tensors of the
    autocast device go to ``dtype``; float64 is never cast down."""
    if (tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64
            or tensor.device.type != device_type):
        return tensor
    return tensor.to(dtype)


def _cast_for_autocast(input: Tensor, weight: Tensor,
                       bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], bool]:
    """``input``, ``weight`` and ``bias`` cast by :func:`_autocast` where autocast is on for
    ``input``'s device, and whether it is."""
    device_type = input.device.type
    if not is_autocast_enabled(device_type):
        return input, weight, bias, False
    dtype = get_autocast_dtype(device_type)
    input, weight, bias = (_autocast(t, device_type, dtype) for t in (input, weight, bias))
    return input, weight, bias, True


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
    one matrix product, so the forward pass has the FLOPs of one convolution, never ``m``.

    Gradients: ``input`` and ``weight`` get the exact gradients of that hard assignment. ``guide``
    gets the paper's straight-through gradient: with ``P = softmax(guide, dim=1)`` and
    ``Y_j = conv(input, weight[:, j])``, ``dL/dP_j(p) = <dL/dY(p), Y_j(p)>`` (Eq. 7), then back
    through the softmax (Eq. 8). It equals autograd of ``sum_j P_j * Y_j`` with ``input`` and
    ``weight`` detached, and costs ``m`` convolutions of work, done one region at a time.

    Under autocast, ``input``, ``weight`` and ``bias`` are cast to the autocast dtype before
    they are checked, as :func:`torch.nn.functional.conv2d` casts them (float64 stays float64);
    ``guide`` keeps its dtype, since its argmax and softmax decide the regions. Outside
    autocast, ``weight`` and ``bias`` must have the dtype of ``input``.

    On torch >= 2.4 this calls the registered op ``torch.ops.drconv.dr_conv2d`` (with
    ``torch.ops.drconv.dr_conv2d_backward`` for the gradients), so that it works with
    ``torch.compile`` and fake tensors. The kernels are chosen by device and dtype (compiled CPU
    kernels, Triton kernels on CUDA, else PyTorch kernels; see
    :mod:`drconv_mmdet.ops.implementations` and docs/kernels.md);
    :func:`drconv_mmdet.ops.use_kernels` picks one implementation for a block.

    Args:
        input (Tensor[B, C, H, W]): input features.
        weight (Tensor[B, m, O, C, kh, kw]): for each sample, one filter per region.
        guide (Tensor[B, m, Ho, Wo]): guided feature (logits, before any softmax) at the output
            resolution; its argmax over dim 1 is the guided mask.
        bias (Tensor[O], optional): bias added to every output pixel. Default: None.
        stride (int or Tuple[int, int]): stride of the convolution (ints, numpy ints
            included; not bools). Default: 1.
        padding (int or Tuple[int, int]): zero padding on both sides. Default: 0.
        dilation (int or Tuple[int, int]): spacing between kernel elements. Default: 1.

    Returns:
        Tensor[B, O, Ho, Wo]: the region-wise convolution, channels-last when ``input`` is.

    Raises:
        ValueError: for a wrong shape, dtype, device or geometry, naming the argument.

    Examples::
        >>> x = torch.randn(2, 4, 9, 8)
        >>> weight = torch.randn(2, 3, 5, 4, 3, 3)  # 3 regions, 4 -> 5 channels, 3x3 filters
        >>> # Ho = (9 + 2*1 - 3) // 2 + 1 = 5 and Wo = (8 + 2*1 - 3) // 2 + 1 = 4
        >>> guide = torch.randn(2, 3, 5, 4)
        >>> dr_conv2d(x, weight, guide, stride=2, padding=1).shape
        torch.Size([2, 5, 5, 4])
    """
    if torch.onnx.is_in_onnx_export():
        # Either ONNX exporter: standard ONNX ops with dynamic sizes (forward only).
        return dr_conv2d_lowered(input, weight, guide, bias, stride, padding, dilation)
    input, weight, bias, autocast = _cast_for_autocast(input, weight, bias)
    geo = _check_args(input, weight, guide, bias, stride, padding, dilation)
    if not autocast:
        return _region_conv(input, weight, guide, bias, geo)
    # The kernels run in the dtype chosen above, with the guide in its own.
    with torch.autocast(input.device.type, enabled=False):
        return _region_conv(input, weight, guide, bias, geo)


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
    Same arguments, shapes, gradients and autocast casts as :func:`dr_conv2d`.
    """
    input, weight, bias, _ = _cast_for_autocast(input, weight, bias)
    geo = _check_args(input, weight, guide, bias, stride, padding, dilation)
    batch, num_regions, out_channels = weight.shape[:3]
    cols = F.unfold(input,
                    geo.kernel,
                    dilation=geo.dilation,
                    padding=geo.padding,
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
