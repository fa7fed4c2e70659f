"""DRConv-ShuffleNetV2: mmpretrain's ShuffleNetV2 with every 1x1 conv a DRConv (Table 1)."""
from mmpretrain.models.backbones import ShuffleNetV2
from mmpretrain.registry import MODELS

from drconv_mmdet.classification.shufflenet_v2 import plain_pointwise_std
from .pointwise import PointwiseDRConvs

__all__ = ['DRShuffleNetV2']


@MODELS.register_module()
class DRShuffleNetV2(PointwiseDRConvs, ShuffleNetV2):
    """ShuffleNetV2 whose 1x1 convs are DRConvs, as in the DRConv paper's Table 1.

    Every 1x1 conv (both of each block's main branch, the one of each stride-2 block's
    projection branch and the last conv before pooling) becomes a
    :class:`~drconv_mmdet.nn.DRConv2d` with ``region_num`` regions; the first conv (3x3) and the
    depthwise 3x3 convs stay plain. Module names and the norms and activations are those of
    :class:`mmpretrain.models.ShuffleNetV2`, so a plain checkpoint of the same width starts the
    network (``tools/model_converters/plain_to_drconv.py``). Widths 0.5x, 1x, 1.5x and 2x (the
    paper's Fig. 4).

    Args:
        widen_factor (float): 0.5, 1.0, 1.5 or 2.0. Default: 1.0.
        region_num (int): regions of every DRConv. Default: 8, the paper's.
        generator (str): filter generator of every DRConv, ``'basis'`` or ``'paper'`` (see
            :class:`~drconv_mmdet.nn.DRConv2d`). Default: ``'basis'``.
        drconv_cfg (dict, optional): further DRConv2d arguments (``num_bases``,
            ``hidden_channels``, ...). Default: None.
        shared_guide (bool): the two DRConvs of a block's main branch share one guide, computed by
            the first from the branch's input and sampled through the depthwise conv for the
            second, as in the official DRConv ShuffleNetV2; False gives every DRConv its own guide
            conv. Default: False.
        **kwargs: the other arguments of :class:`mmpretrain.models.ShuffleNetV2`
            (``out_indices``, ``frozen_stages``, ``norm_eval``, ...).
    """

    plain_pointwise_std = staticmethod(plain_pointwise_std)
