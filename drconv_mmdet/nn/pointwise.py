"""The 1x1 convs of a conv-norm-activation network as DRConvs, with a guide shared along a branch.

ShuffleNetV2 and MobileNetV2 build every conv as a unit of a conv, a norm and an activation (mmcv's
``ConvModule`` in mmpretrain, :class:`drconv_mmdet.classification.ConvNormAct` without OpenMMLab).
Their DRConv versions keep those units, their norms and activations and their names, and put a
:class:`DRConv2d` in place of each 1x1 conv, so a plain checkpoint's keys still name the same
layers and start the DRConvs (:func:`start_drconvs_from_plain`). Needs torch alone.
"""
import inspect
import logging
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from torch import Tensor, nn

from drconv_mmdet.torch_compat import register_load_state_dict_pre_hook
from .convert import replace_conv2d
from .drconv2d import GENERATORS, DRConv2d
from .guide_sampling import sample_guide

__all__ = [
    'SharedGuideSequential', 'drconv_kwargs', 'pointwise_to_drconv', 'start_drconvs_from_plain'
]

logger = logging.getLogger(__name__)

# Arguments that the networks set themselves and a drconv_cfg must leave out.
OWN_ARGS = ('region_num', 'generator', 'with_guide_conv')
# The DRConv2d options a drconv_cfg may set: its keyword-only arguments but those above. The
# positional ones (channels, geometry, bias) come from the conv that the DRConv replaces.
DRCONV_CFG_KEYS = tuple(
    name for name, parameter in inspect.signature(DRConv2d.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in OWN_ARGS)
# The order of a unit's layers that SharedGuideSequential reproduces.
UNIT_ORDER = ('conv', 'norm', 'act')


def drconv_kwargs(region_num: int, generator: str, drconv_cfg: Optional[dict]) -> Dict[str, Any]:
    """The keyword arguments of every DRConv2d of a network.

    Args:
        region_num (int): regions per DRConv.
        generator (str): filter generator, ``'basis'`` or ``'paper'``.
        drconv_cfg (dict, optional): further :class:`DRConv2d` arguments (``num_bases``,
            ``hidden_channels``, ...), without those above.

    Raises:
        ValueError: ``region_num`` is not a positive int, ``generator`` is unknown, or
            ``drconv_cfg`` is not a dict, sets an argument the network sets or one that
            DRConv2d does not take.
    """
    # Checked here as DRConv2d checks them, so that a network fails before it is built.
    if not isinstance(region_num, int) or isinstance(region_num, bool) or region_num < 1:
        raise ValueError(f'region_num must be a positive int, but got {region_num!r}')
    if generator not in GENERATORS:
        raise ValueError(f'generator must be one of {GENERATORS}, but got {generator!r}')
    drconv_cfg = {} if drconv_cfg is None else drconv_cfg
    if not isinstance(drconv_cfg, dict):
        raise ValueError(f'drconv_cfg must be a dict of DRConv2d arguments or None, but got '
                         f'{drconv_cfg!r}')
    taken = sorted(set(drconv_cfg) & set(OWN_ARGS))
    if taken:
        raise ValueError(f'drconv_cfg must not set {", ".join(taken)}: the backbone sets them '
                         f'(region_num and generator are its own arguments, shared_guide decides '
                         f'with_guide_conv), but got drconv_cfg={drconv_cfg!r}')
    unknown = sorted(str(key) for key in set(drconv_cfg) - set(DRCONV_CFG_KEYS))
    if unknown:
        raise ValueError(f'drconv_cfg sets {", ".join(unknown)}, which DRConv2d does not '
                         f'take; expected some of {DRCONV_CFG_KEYS}, but got '
                         f'drconv_cfg={drconv_cfg!r}')
    return dict(drconv_cfg, region_num=region_num, generator=generator)


def _is_pointwise(module: nn.Module, unit_types: Tuple[Type[nn.Module], ...]) -> bool:
    conv = getattr(module, 'conv', None) if isinstance(module, unit_types) else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1)


def _guided(module: nn.Module, unit_types: Tuple[Type[nn.Module], ...]) -> bool:
    """Whether ``module`` is a Sequential of units with more than one 1x1 conv."""
    return (isinstance(module, nn.Sequential) and len(module) > 0
            and all(isinstance(unit, unit_types) for unit in module)
            and sum(_is_pointwise(unit, unit_types) for unit in module) > 1)


def pointwise_to_drconv(model: nn.Module,
                        kwargs: Dict[str, Any],
                        shared_guide: bool,
                        *,
                        unit_types: Tuple[Type[nn.Module], ...],
                        log: Optional[Callable[[str], Any]] = None) -> List[str]:
    """Makes the conv of every 1x1 conv-norm-activation unit of ``model`` a new DRConv2d.

    A unit is an instance of ``unit_types`` with the attributes of mmcv's ``ConvModule``:
    ``conv``, ``norm``, ``with_norm``, ``activate``, ``with_activation`` and ``order``; its conv
    is 1x1 when it is an ``nn.Conv2d`` of kernel 1 and ``groups=1``. Each DRConv takes its conv's
    channels, stride and bias and is initialised fresh; a plain state dict loaded into ``model``
    later starts them from its 1x1 weights (:func:`start_drconvs_from_plain`, registered as a
    load-state-dict pre-hook).

    With ``shared_guide``, the DRConvs of one ``nn.Sequential`` of units (a ShuffleNetV2 branch, a
    MobileNetV2 block) share the guide of the first of them, as the official DRConv ShuffleNetV2
    shares one guide per block: the first keeps its guide conv, the others are built without one
    and that Sequential becomes a :class:`SharedGuideSequential` (same children, same state-dict
    keys).

    Args:
        model (nn.Module): the plain network; changed in place.
        kwargs (dict): arguments of every :class:`DRConv2d` (:func:`drconv_kwargs`).
        shared_guide (bool): share one guide along each Sequential of units.
        unit_types (Tuple[type, ...]): the classes of the conv-norm-activation units.
        log (Callable[[str], Any], optional): reports how many DRConvs a plain state dict
            started. Default: None, this module's ``logging`` logger at level INFO.

    Returns:
        list[str]: names of the new DRConv2d modules, in model order.

    Raises:
        ValueError: a 1x1 unit applies its layers in another order than conv, norm, activation.
    """
    names = [
        f'{name}.conv' for name, module in model.named_modules()
        if _is_pointwise(module, unit_types)
    ]
    for name in names:
        order = tuple(getattr(model.get_submodule(name.rpartition('.')[0]), 'order', UNIT_ORDER))
        if order != UNIT_ORDER:
            raise ValueError(f'{name}: a ConvModule of order {order} is not supported; expected '
                             f'{UNIT_ORDER}')
    guided_sequences = [
        name for name, module in model.named_modules()
        if shared_guide and _guided(module, unit_types)
    ]
    # Every DRConv of a guided Sequential but its first takes the shared guide.
    followers = set()
    for name in guided_sequences:
        pointwise = [unit for unit in model.get_submodule(name) if _is_pointwise(unit, unit_types)]
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
    hook = partial(start_drconvs_from_plain, names=names, log=log)
    register_load_state_dict_pre_hook(model, hook)
    return names


def start_drconvs_from_plain(model: nn.Module,
                             state_dict: Dict[str, Any],
                             prefix: str,
                             *args: Any,
                             names: List[str],
                             log: Optional[Callable[[str], Any]] = None) -> List[str]:
    """Load-state-dict pre-hook: the plain 1x1 weights at DRConv positions start the DRConvs.

    A plain checkpoint (mmpretrain's pretrained ShuffleNetV2 or MobileNetV2, through
    ``init_cfg=dict(type='Pretrained', ...)``, ``load_from``, the checkpoint converter or
    ``load_state_dict``) holds a conv ``weight`` where the network has a DRConv. Each such weight
    is put in as :meth:`~drconv_mmdet.nn.DRConv2d.init_from_conv` does (every region's filter is
    the plain weight, the guide conv keeps its initialisation) and the DRConv's other entries are
    taken from the layer, so the network computes what the plain one computes. A checkpoint with
    DRConv weights loads as it is.

    Args:
        model (nn.Module): the network.
        state_dict (dict[str, Any]): the state dict being loaded; changed in place.
        prefix (str): prefix of the network's keys in ``state_dict``.
        *args: the other arguments of a load-state-dict pre-hook, unused.
        names (list[str]): names of the network's DRConvs.
        log (Callable[[str], Any], optional): reports how many DRConvs started. Default: None,
            this module's ``logging`` logger at level INFO.

    Returns:
        list[str]: the names of the DRConvs that started from plain weights.

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
        return started
    for name in started:
        for key, value in model.get_submodule(name).state_dict(prefix=f'{prefix}{name}.').items():
            state_dict.setdefault(key, value)
    (logger.info if log is None else log)(
        f'{len(started)} DRConv layers start from the plain 1x1 weights at their '
        'positions (each region\'s filter is the plain weight)')
    return started


class SharedGuideSequential(nn.Sequential):
    """Conv-norm-activation units whose DRConvs share the guide of the first DRConv among them.

    The first DRConv computes its guide logits from its input; each later DRConv takes them where
    its own conv samples its input: every plain conv between them (a depthwise 3x3, with or
    without stride) passes the guide on through :func:`~drconv_mmdet.nn.sample_guide`,
    so an output pixel keeps the region of the input pixel at its window's centre. The units are
    mmcv ``ConvModule``\\ s or anything with their ``conv``, ``norm``, ``with_norm``,
    ``activate`` and ``with_activation`` attributes.
    """

    def forward(self, x: Tensor) -> Tensor:
        guide = None
        for unit in self:
            conv = unit.conv
            if isinstance(conv, DRConv2d):
                if guide is None:
                    guide = conv.guide_logits(x)
                # A unit's forward takes no guide: its conv, norm and activation in order.
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
