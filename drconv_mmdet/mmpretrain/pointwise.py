"""The 1x1 convs of an mmpretrain backbone as DRConvs, with a guide shared along a branch.

mmpretrain's ShuffleNetV2 and MobileNetV2 build every conv as an mmcv ``ConvModule`` (conv, norm,
activation). The DRConv versions keep those modules, their norms and activations and their
names, and put a :class:`~drconv_mmdet.nn.DRConv2d` in place of each 1x1 conv, so a plain
checkpoint's keys still name the same layers (see ``tools/model_converters/plain_to_drconv.py``).
"""
import logging
from functools import partial
from typing import Any, Dict, List, Optional

from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d, replace_conv2d, sample_guide
from drconv_mmdet.torch_compat import register_load_state_dict_pre_hook

__all__ = [
    'PointwiseDRConvs', 'SharedGuideSequential', 'drconv_kwargs', 'pointwise_to_drconv',
    'start_drconvs_from_plain'
]

# Arguments that the backbones set themselves and a drconv_cfg must leave out.
OWN_ARGS = ('region_num', 'generator', 'with_guide_conv')


def drconv_kwargs(region_num: int, generator: str, drconv_cfg: Optional[dict]) -> Dict[str, Any]:
    """The keyword arguments of every DRConv2d of a backbone.

    Args:
        region_num (int): regions per DRConv.
        generator (str): filter generator, ``'basis'`` or ``'paper'``.
        drconv_cfg (dict, optional): further :class:`DRConv2d` arguments (``num_bases``,
            ``hidden_channels``, ...), without those above.

    Raises:
        ValueError: ``drconv_cfg`` is not a dict or sets an argument the backbone sets.
    """
    drconv_cfg = {} if drconv_cfg is None else drconv_cfg
    if not isinstance(drconv_cfg, dict):
        raise ValueError(f'drconv_cfg must be a dict of DRConv2d arguments or None, but got '
                         f'{drconv_cfg!r}')
    taken = sorted(set(drconv_cfg) & set(OWN_ARGS))
    if taken:
        raise ValueError(f'drconv_cfg must not set {", ".join(taken)}: the backbone sets them '
                         f'(region_num and generator are its own arguments, shared_guide decides '
                         f'with_guide_conv), but got drconv_cfg={drconv_cfg!r}')
    return dict(drconv_cfg, region_num=region_num, generator=generator)


def _is_pointwise(module: nn.Module) -> bool:
    conv = getattr(module, 'conv', None) if isinstance(module, ConvModule) else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1)


def _guided(module: nn.Module) -> bool:
    """Whether ``module`` is a Sequential of ConvModules with more than one 1x1 conv."""
    return (isinstance(module, nn.Sequential) and len(module) > 0
            and all(isinstance(unit, ConvModule) for unit in module)
            and sum(map(_is_pointwise, module)) > 1)


def pointwise_to_drconv(model: nn.Module, kwargs: Dict[str, Any], shared_guide: bool) -> List[str]:
    """Makes the conv of every 1x1 ``ConvModule`` of ``model`` a new DRConv2d.

    Each DRConv takes its conv's channels, stride and bias and is initialised fresh; a plain
    state dict loaded into ``model`` later starts them from its 1x1 weights
    (:func:`start_drconvs_from_plain`, registered as a load-state-dict pre-hook).

    With ``shared_guide``, the DRConvs of one ``nn.Sequential`` of ConvModules (a ShuffleNetV2
    branch, a MobileNetV2 block) share the guide of the first of them, as the official DRConv
    ShuffleNetV2 shares one guide per block: the first keeps its guide conv, the others are built
    without one and that Sequential becomes a :class:`SharedGuideSequential` (same children, same
    state-dict keys).

    Args:
        model (nn.Module): the plain backbone; changed in place.
        kwargs (dict): arguments of every :class:`DRConv2d` (:func:`drconv_kwargs`).
        shared_guide (bool): share one guide along each Sequential of ConvModules.

    Returns:
        list[str]: names of the new DRConv2d modules, in model order.
    """
    names = [f'{name}.conv' for name, module in model.named_modules() if _is_pointwise(module)]
    for name in names:
        order = model.get_submodule(name.rpartition('.')[0]).order
        if order != ('conv', 'norm', 'act'):
            raise ValueError(f'{name}: a ConvModule of order {order} is not supported; expected '
                             "('conv', 'norm', 'act')")
    guided_sequences = [
        name for name, module in model.named_modules() if shared_guide and _guided(module)
    ]
    # Every DRConv of a guided Sequential but its first takes the shared guide.
    followers = set()
    for name in guided_sequences:
        pointwise = [unit for unit in model.get_submodule(name) if _is_pointwise(unit)]
        followers.update(id(unit.conv) for unit in pointwise[1:])

    def build(conv: nn.Conv2d) -> DRConv2d:
        return DRConv2d(conv.in_channels,
                        conv.out_channels,
                        1,
                        conv.stride,
                        bias=conv.bias is not None,
                        with_guide_conv=id(conv) not in followers,
                        **kwargs)

    replace_conv2d(model, names, build)
    for name in guided_sequences:
        parent, _, child = name.rpartition('.')
        owner = model.get_submodule(parent)
        setattr(owner, child, SharedGuideSequential(*getattr(owner, child)))
    register_load_state_dict_pre_hook(model, partial(start_drconvs_from_plain, names=names))
    return names


class PointwiseDRConvs:
    """Builds the mmpretrain network it precedes in the bases, then turns every 1x1 conv into a
    DRConv with :func:`pointwise_to_drconv`; the DRConv networks' shared arguments."""

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


def start_drconvs_from_plain(model: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any,
                             names: List[str]) -> None:
    """Load-state-dict pre-hook: the plain 1x1 weights at DRConv positions start the DRConvs.

    A plain checkpoint (mmpretrain's pretrained ShuffleNetV2 or MobileNetV2, through
    ``init_cfg=dict(type='Pretrained', ...)``, ``load_from`` or the checkpoint converter) holds a
    conv ``weight`` where the network has a DRConv. Each such weight is put in as
    :meth:`~drconv_mmdet.nn.DRConv2d.init_from_conv` does (every region's filter is the plain
    weight, the guide conv keeps its initialisation) and the DRConv's other entries are taken
    from the layer, so the network computes what the plain one computes. A checkpoint with DRConv
    weights loads as it is.

    Args:
        model (nn.Module): the backbone.
        state_dict (dict[str, Any]): the state dict being loaded; changed in place.
        prefix (str): prefix of the backbone's keys in ``state_dict``.
        *args: the other arguments of a load-state-dict pre-hook, unused.
        names (list[str]): names of the backbone's DRConvs.

    Raises:
        ValueError: a plain weight at a DRConv position has another shape.
    """
    started = []
    for name in names:
        key = f'{prefix}{name}.weight'
        if key not in state_dict:
            continue
        layer = model.get_submodule(name)
        expected = (layer.out_channels, layer.in_channels, *layer.kernel_size)
        if tuple(state_dict[key].shape) != expected:
            raise ValueError(f'{key} has shape {tuple(state_dict[key].shape)}, but the DRConv at '
                             f'{name} starts from a conv weight of shape {expected}: the '
                             f'checkpoint is of another architecture or width')
        layer.init_from_conv(state_dict.pop(key), state_dict.pop(f'{prefix}{name}.bias', None))
        started.append(name)
    if not started:
        return
    for name in started:
        for key, value in model.get_submodule(name).state_dict(prefix=f'{prefix}{name}.').items():
            state_dict.setdefault(key, value)
    print_log(
        f'{len(started)} DRConv layers start from the plain 1x1 weights at their '
        'positions (each region\'s filter is the plain weight)',
        logger='current',
        level=logging.INFO)


class SharedGuideSequential(nn.Sequential):
    """ConvModules whose DRConvs share the guide of the first DRConv among them.

    The first DRConv computes its guide logits from its input; each later DRConv takes them where
    its own conv samples its input: every plain conv between them (a depthwise 3x3, with or
    without stride) passes the guide on through :func:`~drconv_mmdet.nn.sample_guide`,
    so an output pixel keeps the region of the input pixel at its window's centre.
    """

    def forward(self, x: Tensor) -> Tensor:
        guide = None
        for unit in self:
            conv = unit.conv
            if isinstance(conv, DRConv2d):
                if guide is None:
                    guide = conv.guide_logits(x)
                # ConvModule.forward takes no guide: its conv, norm and activation in order.
                x = conv(x, guide)
                if unit.with_norm:
                    x = unit.norm(x)
                if unit.with_activation:
                    x = unit.activate(x)
            else:
                x = unit(x)
                if guide is not None:
                    guide = sample_guide(guide, conv.kernel_size, conv.stride, conv.padding,
                                         conv.dilation)
        return x
