"""DRConv-ShuffleNetV2 and DRConv-MobileNetV2 (the DRConv paper's Table 1) for MMPretrain.

Importing this subpackage registers the backbones and the digits dataset in mmpretrain's
registries; it needs mmpretrain (and so torchvision), which ``import drconv_mmdet`` does not.
Configs load it with ``custom_imports = dict(imports=['drconv_mmdet.mmpretrain'],
allow_failed_imports=False)``; mmdet configs take the backbones by scope, e.g.
``backbone=dict(type='mmpretrain.DRShuffleNetV2', ...)``.
"""
from .digits import DigitsDataset
from .mobilenet_v2 import DRMobileNetV2
from .pointwise import SharedGuideSequential, pointwise_to_drconv
from .shufflenet_v2 import DRShuffleNetV2

__all__ = [
    'DRShuffleNetV2', 'DRMobileNetV2', 'DigitsDataset', 'SharedGuideSequential',
    'pointwise_to_drconv'
]
