"""ShuffleNetV2 and MobileNetV2, plain and with DRConvs (the DRConv paper's Table 1), in torch.

The networks of :mod:`drconv_mmdet.mmpretrain` without OpenMMLab: the same modules under the same
names, so checkpoints of mmpretrain's ``ImageClassifier`` with those backbones and a
``LinearClsHead`` (plain, DRShuffleNetV2 or DRMobileNetV2) load with ``strict=True`` and compute
the same outputs, and a plain state dict loaded into a DRConv network starts every DRConv from the
1x1 weight at its place. Needs torch alone.

Example:
    >>> import torch
    >>> from drconv_mmdet.classification import drconv_shufflenet_v2, shufflenet_v2
    >>> plain = shufflenet_v2(widen_factor=0.5, num_classes=10).eval()
    >>> model = drconv_shufflenet_v2(widen_factor=0.5, num_classes=10, region_num=4).eval()
    >>> _ = model.load_state_dict(plain.state_dict())  # warm start: equal outputs at load
    >>> x = torch.rand(2, 3, 64, 64)
    >>> torch.allclose(model(x), plain(x), atol=1e-5)
    True
"""
from .classifier import GlobalAveragePooling, ImageClassifier, LinearClsHead
from .conv_norm_act import RELU, RELU6, ConvNormAct
from .mobilenet_v2 import (InvertedResidual, MobileNetV2, drconv_mobilenet_v2, make_divisible,
                           mobilenet_v2)
from .pointwise import drconv_options, pointwise_to_drconv
from .shufflenet_v2 import (ShuffleNetV2, ShuffleNetV2Block, channel_shuffle, drconv_shufflenet_v2,
                            shufflenet_v2)

__all__ = [
    'ShuffleNetV2', 'MobileNetV2', 'ImageClassifier', 'shufflenet_v2', 'drconv_shufflenet_v2',
    'mobilenet_v2', 'drconv_mobilenet_v2', 'ShuffleNetV2Block', 'InvertedResidual', 'ConvNormAct',
    'GlobalAveragePooling', 'LinearClsHead', 'channel_shuffle', 'make_divisible', 'RELU', 'RELU6',
    'drconv_options', 'pointwise_to_drconv'
]
