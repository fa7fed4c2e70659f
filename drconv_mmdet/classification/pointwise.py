"""The DRConv options of the classification networks: every 1x1 :class:`ConvNormAct` a DRConv."""
from typing import Any, Dict, List, Optional

from torch import nn

from drconv_mmdet.nn import pointwise as core
from drconv_mmdet.nn.drconv2d import GENERATORS
from .conv_norm_act import ConvNormAct

__all__ = ['drconv_options', 'pointwise_to_drconv']


def drconv_options(region_num: Optional[int], generator: str, drconv_cfg: Optional[dict],
                   shared_guide: bool) -> Optional[Dict[str, Any]]:
    """Checks a network's DRConv arguments; the keyword arguments of its DRConvs.

    Args:
        region_num (int, optional): regions of every DRConv; None for the plain network.
        generator (str): filter generator, ``'basis'`` or ``'paper'``; checked even for the plain
            network, where it is unused, so that a misspelt name fails.
        drconv_cfg (dict, optional): further :class:`~drconv_mmdet.nn.DRConv2d` arguments.
        shared_guide (bool): share one guide along each branch.

    Returns:
        dict or None: the arguments of every DRConv2d, or None for the plain network.

    Raises:
        ValueError: an argument of the wrong type or value, or DRConv arguments (``drconv_cfg``,
            ``shared_guide=True``) for the plain network.
    """
    if not isinstance(shared_guide, bool):
        raise ValueError(f'shared_guide must be a bool, but got {shared_guide!r}')
    if region_num is None:
        if generator not in GENERATORS:
            raise ValueError(f'generator must be one of {GENERATORS}, but got {generator!r}')
        unused = (('drconv_cfg', drconv_cfg, None), ('shared_guide', shared_guide, False))
        for name, value, default in unused:
            if value:
                raise ValueError(f'{name}={value!r} needs DRConvs, but region_num=None builds the '
                                 f'plain network; expected {name}={default!r} or a region_num')
        return None
    if not isinstance(region_num, int) or isinstance(region_num, bool) or region_num < 1:
        raise ValueError(f'region_num must be None (the plain network) or a positive int, but '
                         f'got {region_num!r}')
    return core.drconv_kwargs(region_num, generator, drconv_cfg)


def pointwise_to_drconv(model: nn.Module, kwargs: Optional[Dict[str, Any]],
                        shared_guide: bool) -> List[str]:
    """Makes the conv of every 1x1 :class:`ConvNormAct` of ``model`` a new DRConv2d.

    :func:`drconv_mmdet.nn.pointwise_to_drconv` with :class:`ConvNormAct` as the unit: a plain
    state dict loaded later starts the DRConvs from its 1x1 weights.

    Args:
        model (nn.Module): the plain network; changed in place.
        kwargs (dict, optional): arguments of every DRConv2d (:func:`drconv_options`); None
            leaves the network plain.
        shared_guide (bool): share one guide along each Sequential of units.

    Returns:
        list[str]: names of the new DRConv2d modules, in model order; empty for a plain network.
    """
    if kwargs is None:
        return []
    return core.pointwise_to_drconv(model, kwargs, shared_guide, unit_types=(ConvNormAct, ))
