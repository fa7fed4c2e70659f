"""Multiply-adds (MADDs) of a model, DRConv included, on mmengine's jit FLOP counter.

MADDs are the cost measure of the DRConv paper (Table 1) and of DetNAS's FLOPs table: one fused
multiply-add of a convolution or a matrix product counts once. Norms, activations, elementwise
arithmetic, pooling, resampling and detection post-processing are not counted: they are a small
fraction of a detector's cost, and counting them would break the comparison with those tables.
"""
import contextlib
import math
import typing
from typing import Iterator, List, Tuple, Union

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import (addmm_flop_jit, bmm_flop_jit, conv_flop_jit,
                                           einsum_flop_jit, get_shape, linear_flop_jit,
                                           matmul_flop_jit)
from torch import Tensor, nn

from drconv_mmdet.ops import JIT_NODE_KIND

__all__ = ['MaddAnalyzer', 'count_madds', 'DRCONV_OP', 'DRCONV_OP_NAME']

ModelInputs = Union[Tensor, Tuple[Tensor, ...]]

# How torch.jit records the op behind every DRConv (its inputs start with input and weight).
DRCONV_OP = JIT_NODE_KIND
# The name under which MaddAnalyzer.by_operator() reports the region-wise convolution.
DRCONV_OP_NAME = 'drconv'

# mmengine's handles of these ops count one fused multiply-add as one FLOP, i.e. MADDs.
MADD_OPS = {
    'aten::_convolution': conv_flop_jit,
    'aten::addmm': addmm_flop_jit,
    'aten::bmm': bmm_flop_jit,
    'aten::einsum': einsum_flop_jit,
    'aten::linear': linear_flop_jit,
    'aten::matmul': matmul_flop_jit,
    'aten::mm': matmul_flop_jit,
}

# Traced ops with no multiply-adds under the MADD convention; marking them ignored keeps them
# out of both the count and unsupported_ops(), which then lists only ops that need a handle.
NON_MADD_OPS = (
    # normalisation
    'aten::batch_norm',
    'aten::group_norm',
    'aten::layer_norm',
    'aten::instance_norm',
    # pooling and resampling
    'aten::adaptive_avg_pool2d',
    'aten::adaptive_max_pool2d',
    'aten::avg_pool2d',
    'aten::max_pool2d',
    'aten::mean',
    'aten::upsample_nearest2d',
    'aten::upsample_bilinear2d',
    'aten::grid_sampler',
    # activations and elementwise arithmetic
    'aten::add',
    'aten::add_',
    'aten::sub',
    'aten::sub_',
    'aten::rsub',
    'aten::mul',
    'aten::mul_',
    'aten::div',
    'aten::div_',
    'aten::neg',
    'aten::pow',
    'aten::sqrt',
    'aten::exp',
    'aten::log',
    'aten::log2',
    'aten::sum',
    'aten::sigmoid',
    'aten::sigmoid_',
    'aten::softmax',
    'aten::tanh',
    'aten::hardtanh',
    'aten::hardtanh_',
    'aten::hardswish',
    'aten::hardsigmoid',
    'aten::silu',
    'aten::gelu',
    'aten::leaky_relu',
    'aten::clamp_min',
    'aten::argmax',
    'aten::where',
    # indexing (a shared guide sampled at a conv's window centres)
    'aten::index_select',
    # detection post-processing
    'aten::sort',
    'aten::topk',
    'aten::repeat',
)
# Autograd functions without multiply-adds (mmcv's RoIAlign interpolates, NMS compares). They
# need a handle that counts nothing: mmengine matches its ignore list against node.kind(),
# which is just 'prim::PythonOp' for every autograd function.
NON_MADD_PYTHON_OPS = ('prim::PythonOp.RoIAlignFunction', 'prim::PythonOp.NMSop')


def _no_madds(inputs: List[torch._C.Value], outputs: List[torch._C.Value]) -> typing.Counter[str]:
    return typing.Counter()


def _drconv_madds(inputs: List[torch._C.Value],
                  outputs: List[torch._C.Value]) -> typing.Counter[str]:
    """One ``C x kh x kw`` dot product per output value: each pixel uses one region's filter.

    The traced inputs are ``(input, weight (B, m, O, C, kh, kw), guide, bias)`` and the output is
    ``(B, O, Ho, Wo)``. The guide conv and the filter generator are ordinary ops, counted apart.
    """
    filter_size = math.prod(get_shape(inputs[1])[3:])
    return typing.Counter({DRCONV_OP_NAME: math.prod(get_shape(outputs[0])) * filter_size})


class MaddAnalyzer(FlopAnalyzer):
    """:class:`mmengine.analysis.FlopAnalyzer` counting multiply-adds only.

    Counts convolutions (``conv``), ``linear``/``addmm``/``matmul``/``mm``/``bmm``/``einsum``
    with mmengine's handles, and a DRConv as one convolution per output pixel
    (``by_operator()`` key ``'drconv'``) plus its guide conv and filter generator. The ops of
    ``NON_MADD_OPS`` and ``NON_MADD_PYTHON_OPS`` count nothing; any other op is listed by
    ``unsupported_ops()``.

    The model is traced with ``torch.jit`` on the first query, in whatever mode it is in: put it
    in eval mode first (see :func:`count_madds`) so that batch norms keep their statistics.

    Args:
        model (nn.Module): the model; its ``forward`` must take ``inputs`` and return tensors.
        inputs (Tensor or Tuple[Tensor, ...]): the positional inputs of ``model.forward``.
    """

    def __init__(self, model: nn.Module, inputs: ModelInputs) -> None:
        if not (isinstance(inputs, Tensor) or
                (isinstance(inputs, tuple) and all(isinstance(x, Tensor) for x in inputs))):
            raise ValueError(
                f'inputs must be a Tensor or a tuple of Tensors (the positional arguments of '
                f'model.forward), but got {type(inputs).__name__}')
        super().__init__(model, inputs)
        # FlopAnalyzer also counts norms, pooling and upsampling; start from no handle at all.
        self.clear_op_handles()
        self.set_op_handle(**MADD_OPS, **{op: None for op in NON_MADD_OPS})
        self.set_op_handle(**{op: _no_madds for op in NON_MADD_PYTHON_OPS})
        self.set_op_handle(DRCONV_OP, _drconv_madds)
        # Detectors in tensor mode leave their loss modules uncalled, which is expected.
        self.uncalled_modules_warnings(False)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode and restores each module's own mode afterwards.

    A blanket ``model.train(was_training)`` would also switch on the modules a model keeps in
    eval mode on purpose, such as the frozen batch norms of ``norm_eval=True`` backbones.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def count_madds(model: nn.Module, inputs: ModelInputs) -> int:
    """Multiply-adds of one forward pass of ``model`` on ``inputs``.

    A plain ``nn.Conv2d`` counts ``B * Cout * Cin / groups * kh * kw * Ho * Wo``, an
    ``nn.Linear`` ``N * in_features * out_features``, and a DRConv its guide conv, its filter
    generator and ONE convolution per output pixel, not ``region_num``. The model is traced in
    eval mode without gradients; its modes are restored afterwards.

    Args:
        model (nn.Module): the model; its ``forward`` must take ``inputs`` and return tensors.
        inputs (Tensor or Tuple[Tensor, ...]): the positional inputs of ``model.forward``.

    Returns:
        int: the multiply-adds, e.g. about 288.1e6 for DetNAS-300M on a 224 x 224 image.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        >>> count_madds(model, torch.randn(1, 3, 16, 16)) == 8 * 3 * 3 * 3 * 16 * 16
        True
    """
    analyzer = MaddAnalyzer(model, inputs)
    with _eval_mode(model), torch.no_grad():
        return int(analyzer.total())
