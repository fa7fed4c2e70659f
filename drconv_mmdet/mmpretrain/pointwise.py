"""The 1x1 convs of an mmpretrain backbone as DRConvs, with a guide shared along a branch.

mmpretrain's ShuffleNetV2 and MobileNetV2 build every conv as an mmcv ``ConvModule`` (conv, norm,
activation). The DRConv versions keep those modules, their norms and activations and their
names, and put a :class:`~drconv_mmdet.nn.DRConv2d` in place of each 1x1 conv, so a plain
checkpoint's keys still name the same layers (see ``tools/model_converters/plain_to_drconv.py``).
The torch-only parts live in :mod:`drconv_mmdet.nn.pointwise`, which the plain-torch networks of
:mod:`drconv_mmdet.classification` share; this module binds them to ``ConvModule`` and mmengine's
logger.
"""
import logging
from functools import partial
from typing import Any, Callable, Dict, List, Optional

from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from torch import nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.nn import pointwise as core
from drconv_mmdet.nn.pointwise import SharedGuideSequential, drconv_kwargs, start_drconvs_from_plain

__all__ = [
    'PointwiseDRConvs', 'SharedGuideSequential', 'drconv_kwargs', 'pointwise_to_drconv',
    'start_drconvs_from_plain'
]

# The init_cfg types of mmengine that load a checkpoint.
PRETRAINED = ('Pretrained', 'PretrainedInit')


def pointwise_to_drconv(model: nn.Module, kwargs: Dict[str, Any], shared_guide: bool) -> List[str]:
    """Makes the conv of every 1x1 ``ConvModule`` of ``model`` a new DRConv2d.

    :func:`drconv_mmdet.nn.pointwise_to_drconv` with mmcv's ``ConvModule`` as the unit; a plain
    state dict that starts the DRConvs says so in mmengine's current logger.

    Args:
        model (nn.Module): the plain backbone; changed in place.
        kwargs (dict): arguments of every :class:`~drconv_mmdet.nn.DRConv2d`
            (:func:`drconv_kwargs`).
        shared_guide (bool): share one guide along each Sequential of ConvModules.

    Returns:
        list[str]: names of the new DRConv2d modules, in model order.
    """
    return core.pointwise_to_drconv(model,
                                    kwargs,
                                    shared_guide,
                                    unit_types=(ConvModule, ),
                                    log=partial(print_log, logger='current', level=logging.INFO))


class PointwiseDRConvs:
    """Builds the mmpretrain network it precedes in the bases, then turns every 1x1 conv into a
    DRConv with :func:`pointwise_to_drconv`; the DRConv networks' shared arguments and init.

    A subclass names, as ``plain_pointwise_std``, the std its plain network's init gives a 1x1
    conv weight, from the conv's input and output channels.
    """

    plain_pointwise_std: Callable[[int, int], float]

    def __init__(self,
                 widen_factor: float = 1.0,
                 region_num: int = 8,
                 generator: str = 'basis',
                 drconv_cfg: Optional[dict] = None,
                 shared_guide: bool = False,
                 **kwargs) -> None:
        # Checked before the base network is built, so that a bad argument fails at once.
        kwargs_of_drconv = drconv_kwargs(region_num, generator, drconv_cfg)
        super().__init__(widen_factor=widen_factor, **kwargs)
        self.region_num = region_num
        self.shared_guide = shared_guide
        self.drconv_names = pointwise_to_drconv(self, kwargs_of_drconv, shared_guide)

    def init_weights(self) -> None:
        """The plain network's init, and every DRConv's filters at the size that init gives the
        1x1 conv it replaces (``plain_pointwise_std``); a ``Pretrained`` ``init_cfg`` loads its
        checkpoint instead, as in mmpretrain."""
        super().init_weights()
        init_cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        if any(isinstance(cfg, dict) and cfg.get('type') in PRETRAINED for cfg in init_cfgs):
            return
        for module in self.modules():
            if isinstance(module, DRConv2d):
                module.init_weights(
                    self.plain_pointwise_std(module.in_channels, module.out_channels))
