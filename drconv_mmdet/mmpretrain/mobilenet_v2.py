"""DRConv-MobileNetV2: mmpretrain's MobileNetV2 with every 1x1 conv a DRConv (Table 1)."""
from mmpretrain.models.backbones import MobileNetV2
from mmpretrain.registry import MODELS

from drconv_mmdet.classification.mobilenet_v2 import plain_pointwise_std
from .pointwise import PointwiseDRConvs

__all__ = ['DRMobileNetV2']


@MODELS.register_module()
class DRMobileNetV2(PointwiseDRConvs, MobileNetV2):
    """MobileNetV2 whose 1x1 convs are DRConvs, as in the DRConv paper's Table 1.

    Every 1x1 conv (the expansion and projection convs of each inverted residual block and the
    last conv before pooling) becomes a :class:`~drconv_mmdet.nn.DRConv2d` with ``region_num``
    regions; the first conv (3x3) and the depthwise 3x3 convs stay plain. Module names and the
    norms and activations are those of :class:`mmpretrain.models.MobileNetV2`, so a plain
    checkpoint of the same width starts the network
    (``tools/model_converters/plain_to_drconv.py``). Any width; the paper's Fig. 4 uses 0.25x,
    0.5x, 0.75x and 1x.

    Args:
        widen_factor (float): width multiplier. Default: 1.0.
        region_num (int): regions of every DRConv. Default: 8, the paper's.
        generator (str): filter generator of every DRConv, ``'basis'`` or ``'paper'`` (see
            :class:`~drconv_mmdet.nn.DRConv2d`). Default: ``'basis'``.
        drconv_cfg (dict, optional): further DRConv2d arguments (``num_bases``,
            ``hidden_channels``, ...). Default: None.
        shared_guide (bool): the expansion and projection DRConvs of a block share one guide,
            computed by the expansion conv from the block's input and sampled through the
            depthwise conv for the projection conv, as the official DRConv ShuffleNetV2 shares
            one per block; False gives every DRConv its own guide conv. Default: False.
        **kwargs: the other arguments of :class:`mmpretrain.models.MobileNetV2`
            (``out_indices``, ``frozen_stages``, ``norm_eval``, ...).
    """

    plain_pointwise_std = staticmethod(plain_pointwise_std)
