"""FPN with some of its convolutions replaced by DRConv."""
from typing import Sequence

from mmcv.cnn import build_conv_layer
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import nn

from drconv_mmdet.nn import replace_conv2d

__all__ = ['DRFPN']


@MODELS.register_module()
class DRFPN(FPN):
    """Feature Pyramid Network whose chosen convolutions are DRConvs.

    The DRConv paper replaces "only two layers in FPN" of Mask R-CNN without naming them; the
    default takes the two 3x3 output convs of the highest-resolution levels (P2, P3), where the
    maps are largest and the spatial variation a region-wise filter models is richest. To put a
    DRConv in every FPN conv instead, use mmdet's ``FPN`` with ``conv_cfg=dict(type='DRConv')``.

    Args:
        *args: the arguments of :class:`mmdet.models.necks.FPN`.
        drconv_cfg (dict): config of the DRConv layer. Default: ``dict(type='DRConv',
            region_num=8)``.
        drconv_layers (Sequence[str]): names of the FPN convs to replace, ``'lateral_convs.i'``
            (1x1) or ``'fpn_convs.i'`` (3x3). Default: ``('fpn_convs.0', 'fpn_convs.1')``.
        **kwargs: the keyword arguments of :class:`mmdet.models.necks.FPN`.

    Example:
        >>> import torch
        >>> in_channels = [2, 3, 5, 7]
        >>> scales = [34, 17, 9, 5]
        >>> inputs = [torch.rand(1, c, s, s) for c, s in zip(in_channels, scales)]
        >>> self = DRFPN(in_channels, 11, len(in_channels),
        ...              drconv_cfg=dict(type='DRConv', region_num=4)).eval()
        >>> for out in self.forward(inputs):
        ...     print(tuple(out.shape))
        (1, 11, 34, 34)
        (1, 11, 17, 17)
        (1, 11, 9, 9)
        (1, 11, 5, 5)
    """

    def __init__(self,
                 *args,
                 drconv_cfg: ConfigType = dict(type='DRConv', region_num=8),
                 drconv_layers: Sequence[str] = ('fpn_convs.0', 'fpn_convs.1'),
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(drconv_cfg, dict) or 'type' not in drconv_cfg:
            raise ValueError(f'drconv_cfg must be a dict with a type, e.g. dict(type=\'DRConv\', '
                             f'region_num=8), but got {drconv_cfg!r}')
        if isinstance(drconv_layers, str):
            raise ValueError(f'drconv_layers must be a sequence of layer names, but got the string '
                             f'{drconv_layers!r}')
        valid = [f'lateral_convs.{i}' for i in range(len(self.lateral_convs))]
        valid += [f'fpn_convs.{i}' for i in range(len(self.fpn_convs))]
        unknown = [name for name in drconv_layers if name not in valid]
        if unknown:
            raise ValueError(f'drconv_layers has unknown layer name(s) {unknown}; the valid names '
                             f'of this FPN are {valid}')
        if len(set(drconv_layers)) != len(drconv_layers):
            raise ValueError(f'drconv_layers names a layer more than once: {list(drconv_layers)}')
        self.drconv_layers = tuple(drconv_layers)

        def build_drconv(conv: nn.Conv2d) -> nn.Module:
            return build_conv_layer(drconv_cfg,
                                    conv.in_channels,
                                    conv.out_channels,
                                    conv.kernel_size,
                                    stride=conv.stride,
                                    padding=conv.padding,
                                    dilation=conv.dilation,
                                    groups=conv.groups,
                                    bias=conv.bias is not None)

        # A fresh DRConv, trained from scratch as the FPN is; convert_to_drconv would instead
        # start it as the randomly initialised conv.
        replace_conv2d(self, [f'{name}.conv' for name in self.drconv_layers], build_drconv)
