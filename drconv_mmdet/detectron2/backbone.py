"""detectron2's ResNet-FPN with DRConvs in the FPN convs that ``MODEL.DRCONV`` names."""
import re

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, build_resnet_fpn_backbone

from drconv_mmdet.nn import replace_conv2d
from .config import drconv_layer_names
from .layers import NormActDRConv2d

__all__ = ['build_resnet_drfpn_backbone', 'put_drconvs_in_fpn']

_LEVEL_CONV = re.compile(r'fpn_output(\d+)')


def put_drconvs_in_fpn(fpn: FPN, cfg: CN) -> FPN:
    """Replaces the FPN convs that ``cfg.MODEL.DRCONV`` names by fresh DRConvs, in place.

    Each chosen ``fpn_lateral<n>``/``fpn_output<n>`` becomes a :class:`NormActDRConv2d` with the
    conv's geometry, bias, norm and activation, trained from scratch as the rest of the FPN is;
    a plain detectron2 checkpoint starts it as the plain conv instead
    (:class:`~drconv_mmdet.detectron2.DRConvCheckpointer`). ``FPN.forward`` reads the convs from
    the lists ``lateral_convs`` and ``output_convs``, which are updated too. With
    ``SHARED_GUIDE`` each level's output DRConv reads the guided feature of its lateral DRConv.

    Returns:
        FPN: ``fpn`` itself.

    Raises:
        ValueError: a ``MODEL.DRCONV`` key with a value it cannot take, naming the key.
    """
    matches = map(_LEVEL_CONV.fullmatch, dict(fpn.named_children()))
    levels = sorted((f'p{match.group(1)}' for match in matches if match),
                    key=lambda level: int(level[1:]))
    names = drconv_layer_names(cfg, levels)
    node = cfg.MODEL.DRCONV
    kwargs = dict(region_num=node.REGION_NUM,
                  generator=node.GENERATOR,
                  num_bases=node.NUM_BASES,
                  static_kernel=node.STATIC_KERNEL,
                  record_mask=node.RECORD_MASK)
    if not node.SHARED_GUIDE:
        replace_conv2d(fpn, names, lambda conv: NormActDRConv2d.like(conv, **kwargs))
        return fpn
    # FPN.forward runs each level's lateral conv and then its output conv, on maps of one size.
    laterals = [name for name in names if name.startswith('fpn_lateral')]
    replace_conv2d(fpn, laterals, lambda conv: NormActDRConv2d.like(conv, **kwargs))
    outputs = [name for name in names if name.startswith('fpn_output')]
    replace_conv2d(fpn, outputs,
                   lambda conv: NormActDRConv2d.like(conv, with_guide_conv=False, **kwargs))
    for name in outputs:
        getattr(fpn, name).share_guide_from(getattr(fpn, name.replace('output', 'lateral')))
    return fpn


@BACKBONE_REGISTRY.register()
def build_resnet_drfpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """detectron2's ``build_resnet_fpn_backbone`` with the DRConvs of ``MODEL.DRCONV``.

    Select it with ``MODEL.BACKBONE.NAME: "build_resnet_drfpn_backbone"`` after
    :func:`~drconv_mmdet.detectron2.add_drconv_config`. Every other key (``MODEL.RESNETS``,
    ``MODEL.FPN``) means what it means for detectron2's ResNet-FPN.
    """
    return put_drconvs_in_fpn(build_resnet_fpn_backbone(cfg, input_shape), cfg)
