"""The DRConv layer (:class:`drconv_mmdet.nn.DRConv2d`) in mmdet's registry, so that configs build
it with ``type='DRConv'``."""
from mmdet.registry import MODELS
from mmengine.registry import MODELS as MMENGINE_MODELS

from drconv_mmdet.nn import DRConv2d

MODELS.register_module(name=['DRConv', 'DRConv2d'], module=DRConv2d)
# Also in mmengine's root registry, as mmcv does for DCN, so that `build_conv_layer` finds it when
# no default scope is set (a bare script or test); mmdet's registry searches its own first.
MMENGINE_MODELS.register_module(name=['DRConv', 'DRConv2d'], module=DRConv2d)
