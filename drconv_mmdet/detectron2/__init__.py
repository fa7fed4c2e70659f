"""DRConv in detectron2: the ``MODEL.DRCONV`` config, a ResNet-FPN backbone with DRConvs, warm
start from plain detectron2 checkpoints and the toy COCO set.

Importing this subpackage imports detectron2 and registers ``build_resnet_drfpn_backbone`` in
its ``BACKBONE_REGISTRY``; ``import drconv_mmdet`` alone does neither. Usage::

    from detectron2.config import get_cfg
    from drconv_mmdet.detectron2 import add_drconv_config

    cfg = get_cfg()
    add_drconv_config(cfg)
    cfg.merge_from_file('configs/detectron2/mask_rcnn_R_50_DRFPN_8R_180k.yaml')
"""
from .backbone import build_resnet_drfpn_backbone, put_drconvs_in_fpn
from .checkpoint import DRConvCheckpointer, start_drconvs_from_plain
from .config import add_drconv_config
from .datasets import register_toy_coco
from .layers import NormActDRConv2d

__all__ = [
    'add_drconv_config', 'build_resnet_drfpn_backbone', 'put_drconvs_in_fpn', 'DRConvCheckpointer',
    'start_drconvs_from_plain', 'register_toy_coco', 'NormActDRConv2d'
]
