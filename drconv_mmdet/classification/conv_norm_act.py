"""A conv, a batch norm and an activation: mmcv's ``ConvModule`` as the classification nets use it.
"""
from functools import partial
from typing import Callable, Optional

from torch import Tensor, nn

__all__ = ['ConvNormAct', 'RELU', 'RELU6']

# mmcv's ConvModule builds ReLU-family activations in place.
RELU = partial(nn.ReLU, inplace=True)
RELU6 = partial(nn.ReLU6, inplace=True)


class ConvNormAct(nn.Module):
    """A bias-free conv, a ``BatchNorm2d`` and an optional activation, applied in that order.

    The attribute names, and so the state-dict keys (``conv.weight``, ``bn.weight``,
    ``bn.running_mean``, ...), are those of mmcv's ``ConvModule`` with ``norm_cfg=dict(type='BN')``
    and ``order=('conv', 'norm', 'act')``, so that mmpretrain checkpoints load and compute the same
    outputs; ``norm``, ``with_norm``, ``with_activation`` and ``order`` are there for the code
    that handles both (:func:`drconv_mmdet.nn.pointwise_to_drconv`,
    :class:`~drconv_mmdet.nn.SharedGuideSequential`). The conv may be replaced by a
    :class:`~drconv_mmdet.nn.DRConv2d`.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        kernel_size (int): square kernel size.
        stride (int): Default: 1.
        padding (int): zero padding. Default: 0.
        groups (int): conv groups (``in_channels`` for a depthwise conv). Default: 1.
        activation (Callable[[], nn.Module], optional): builds the activation, e.g.
            :data:`RELU` or :data:`RELU6`; None for none. Default: :data:`RELU`.
    """

    order = ('conv', 'norm', 'act')
    norm_name = 'bn'
    with_norm = True

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 stride: int = 1,
                 padding: int = 0,
                 groups: int = 1,
                 activation: Optional[Callable[[], nn.Module]] = RELU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels,
                              out_channels,
                              kernel_size,
                              stride,
                              padding,
                              groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.with_activation = activation is not None
        if self.with_activation:
            self.activate = activation()

    @property
    def norm(self) -> nn.BatchNorm2d:
        return self.bn

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.activate(x) if self.with_activation else x
