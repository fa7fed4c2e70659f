"""The ``MODEL.DRCONV`` config node and its checks."""
from typing import List, Sequence

from detectron2.config import CfgNode as CN

from drconv_mmdet.nn.drconv2d import GENERATORS

__all__ = ['add_drconv_config', 'CONV_KINDS', 'drconv_layer_names']

# The FPN convs a DRConv can take: detectron2 names them fpn_lateral<stage> (1x1, on the
# bottom-up feature) and fpn_output<stage> (3x3, on the merged feature).
CONV_KINDS = ('lateral', 'output')


def add_drconv_config(cfg: CN) -> None:
    """Adds ``MODEL.DRCONV``, read by the ``build_resnet_drfpn_backbone`` backbone, to ``cfg``.

    The defaults are the 8R model of the DRConv paper's Table 3 as the MMDetection configs build
    it (``configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py``): 8 regions, the ``'basis'``
    filter generator, DRConvs in the 3x3 output convs of P2 and P3, each with its own guide.

    Keys:
        REGION_NUM (int): regions per DRConv.
        GENERATOR (str): filter generator of :class:`~drconv_mmdet.nn.DRConv2d`, ``'basis'`` or
            ``'paper'``.
        NUM_BASES (int): shared kernels of the ``'basis'`` generator.
        STATIC_KERNEL (bool): the ``'paper'`` generator's static kernel, which a warm start of a
            3x3 conv needs.
        LEVELS (list[str]): FPN levels whose convs become DRConvs, ``'p2'`` to ``'p5'`` for a
            ResNet-FPN on ``res2``-``res5``.
        CONVS (list[str]): which convs of those levels: ``'output'`` (3x3) and/or ``'lateral'``
            (1x1).
        SHARED_GUIDE (bool): at each level, the output conv's DRConv takes the guided feature of
            the lateral conv's DRConv (both at the level's size) instead of owning a guide conv:
            one guide per level. Needs both kinds in ``CONVS``.
        RECORD_MASK (bool): each DRConv keeps its last guided mask in ``last_mask``.
    """
    cfg.MODEL.DRCONV = CN()
    cfg.MODEL.DRCONV.REGION_NUM = 8
    cfg.MODEL.DRCONV.GENERATOR = 'basis'
    cfg.MODEL.DRCONV.NUM_BASES = 8
    cfg.MODEL.DRCONV.STATIC_KERNEL = False
    cfg.MODEL.DRCONV.LEVELS = ['p2', 'p3']
    cfg.MODEL.DRCONV.CONVS = ['output']
    cfg.MODEL.DRCONV.SHARED_GUIDE = False
    cfg.MODEL.DRCONV.RECORD_MASK = False


def drconv_layer_names(cfg: CN, levels: Sequence[str]) -> List[str]:
    """The FPN conv names the config turns into DRConvs, after checking every key.

    Args:
        cfg (CfgNode): a config with ``MODEL.DRCONV``.
        levels (Sequence[str]): the FPN's levels that have a lateral and an output conv, e.g.
            ``['p2', 'p3', 'p4', 'p5']``.

    Returns:
        list[str]: e.g. ``['fpn_output2', 'fpn_output3']``.

    Raises:
        ValueError: a key with a value it cannot take, naming the key.
    """
    if 'DRCONV' not in cfg.MODEL:
        raise ValueError('MODEL.DRCONV is missing: call drconv_mmdet.detectron2.'
                         'add_drconv_config(cfg) before merging a config that uses it')
    node = cfg.MODEL.DRCONV
    for key in ('REGION_NUM', 'NUM_BASES'):
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'MODEL.DRCONV.{key} must be an int >= 1, but got {value!r}')
    if node.GENERATOR not in GENERATORS:
        raise ValueError(f'MODEL.DRCONV.GENERATOR must be one of {list(GENERATORS)}, but got '
                         f'{node.GENERATOR!r}')
    if node.STATIC_KERNEL and node.GENERATOR != 'paper':
        raise ValueError(f'MODEL.DRCONV.STATIC_KERNEL: True needs GENERATOR \'paper\', but got '
                         f'{node.GENERATOR!r}')
    for key, valid in (('LEVELS', list(levels)), ('CONVS', list(CONV_KINDS))):
        values = list(node[key])
        if not values:
            raise ValueError(f'MODEL.DRCONV.{key} is empty; expected some of {valid}')
        unknown = [value for value in values if value not in valid]
        if unknown:
            raise ValueError(f'MODEL.DRCONV.{key} has {unknown}, which this FPN has no DRConv '
                             f'place for; expected some of {valid}')
        if len(set(values)) != len(values):
            raise ValueError(f'MODEL.DRCONV.{key} names an entry more than once: {values}')
    if node.SHARED_GUIDE and set(node.CONVS) != set(CONV_KINDS):
        raise ValueError(f'MODEL.DRCONV.SHARED_GUIDE: True shares the lateral DRConv\'s guide with '
                         f'the output DRConv of each level and needs CONVS {list(CONV_KINDS)}, '
                         f'but got CONVS {list(node.CONVS)}')
    return [f'fpn_{kind}{level[1:]}' for kind in node.CONVS for level in node.LEVELS]
