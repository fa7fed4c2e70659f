"""Put DRConvs into any PyTorch model: named ``nn.Conv2d`` modules are replaced in place."""
import difflib
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

from torch import nn

from .drconv2d import DRConv2d, _explicit_padding

__all__ = ['convert_to_drconv', 'replace_conv2d']

# Error messages list at most this many layer names; a detector has over a hundred convs.
MAX_LISTED = 12
# Where detectron2 defines its Conv2d (a conv that applies a norm and an activation in forward).
DETECTRON2_CONV_MODULE = 'detectron2.layers.wrappers'

# A plain attribute that holds a conv: the owner's name, the owner and the attribute's name.
Holder = Tuple[str, nn.Module, str]


def convert_to_drconv(model: nn.Module, layer_names: Sequence[str], **drconv_kwargs) -> List[str]:
    """Replaces the named convolutions of ``model`` by DRConvs that start as those convolutions.

    Each named ``nn.Conv2d`` becomes ``DRConv2d.from_conv(conv, **drconv_kwargs)``: at conversion
    the model computes what it computed before (up to float rounding), and training then lets each
    region's filter depart from the pretrained one. The new layer takes the conv's device, dtype
    and train/eval mode; an optimizer built before the conversion does not see its parameters.

    A ``detectron2.layers.Conv2d`` becomes a
    :class:`~drconv_mmdet.detectron2.layers.NormActDRConv2d`, which applies the conv's norm and
    activation after the DRConv as that conv did. A conv that a module also keeps in a plain
    list or dict, as detectron2's ``FPN`` keeps its convs in the lists its ``forward`` iterates, is
    replaced there too.

    Args:
        model (nn.Module): any model; changed in place.
        layer_names (Sequence[str]): dotted names of the convs as ``model.named_modules()`` gives
            them, e.g. ``['backbone.fpn.layer_blocks.0.0']``.
        **drconv_kwargs: keyword arguments of :class:`DRConv2d` (``region_num``, ``generator``,
            ``static_kernel``, ...); see :meth:`DRConv2d.from_conv` for what fits which conv.

    Returns:
        List[str]: the replaced names, in the order given.

    Raises:
        ValueError: a name that is not a submodule, a module that is not an ``nn.Conv2d`` (or
            detectron2's ``Conv2d``) with ``groups=1`` and zero padding, a conv shared under
            several names or also held in a plain attribute that cannot be updated (a tuple, a
            set, the attribute itself), or ``drconv_kwargs`` that do not fit the conv. Nothing is
            replaced then.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> x = torch.rand(1, 3, 10, 12)
        >>> before = model(x)
        >>> convert_to_drconv(model, ['0', '2'], region_num=4, generator='basis')
        ['0', '2']
        >>> type(model[0]).__name__, torch.allclose(model(x), before, atol=1e-5)
        ('DRConv2d', True)
    """
    return replace_conv2d(model, layer_names,
                          lambda conv: _drconv_class(conv).from_conv(conv, **drconv_kwargs))


def replace_conv2d(model: nn.Module, layer_names: Sequence[str],
                   build: Callable[[nn.Conv2d], nn.Module]) -> List[str]:
    """Replaces the named convolutions of ``model`` by ``build(conv)``, checking every name first.

    The replacement path of :func:`convert_to_drconv`, for callers that build the DRConv otherwise
    (e.g. fresh from a config, as :class:`drconv_mmdet.models.DRFPN` does). Same arguments,
    checks and return value; ``build`` gets each conv and returns its replacement, which is moved
    to the conv's device and dtype and set to its train/eval mode. The replacement of a
    detectron2 ``Conv2d`` must apply that conv's ``norm`` and ``activation`` (a
    :class:`~drconv_mmdet.detectron2.layers.NormActDRConv2d` does).
    """
    if isinstance(layer_names, str):
        raise ValueError(f'layer_names must be a sequence of layer names, but got the string '
                         f'{layer_names!r}')
    names = list(layer_names)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f'layer_names names {repeated} more than once')
    # Every path to every module, shared ones included, to catch a conv reachable twice.
    modules = dict(model.named_modules(remove_duplicate=False))
    convs = {name: _convertible_conv(model, modules, name) for name in names}
    holders = {name: _plain_attribute_holders(modules, conv) for name, conv in convs.items()}
    replacements = {name: build(conv) for name, conv in convs.items()}
    for name, new in replacements.items():
        conv = convs[name]
        if (_is_detectron2_conv(conv)
                and (getattr(new, 'norm', None) is not conv.norm
                     or getattr(new, 'activation', None) is not conv.activation)):
            raise ValueError(f'layer_names: {name!r} is a detectron2 Conv2d, whose norm and '
                             f'activation its replacement must apply, but build returned a '
                             f'{type(new).__name__} without them; build a NormActDRConv2d')
    for name, new in replacements.items():
        conv = convs[name]
        new.to(device=conv.weight.device, dtype=conv.weight.dtype).train(conv.training)
        parent, _, child = name.rpartition('.')
        setattr(modules[parent], child, new)
        for _, owner, attr in holders[name]:
            container = vars(owner)[attr]
            keys = container.keys() if isinstance(container, dict) else range(len(container))
            for key in [key for key in keys if container[key] is conv]:
                container[key] = new
    return names


def _detectron2_conv2d() -> Optional[Type[nn.Conv2d]]:
    """detectron2's Conv2d class, or None where detectron2's layers are not imported.

    A model can hold that class only once its module is imported, so this never imports
    detectron2 itself.
    """
    module = sys.modules.get(DETECTRON2_CONV_MODULE)
    return getattr(module, 'Conv2d', None)


def _is_detectron2_conv(module: nn.Module) -> bool:
    """Whether ``module`` is detectron2's Conv2d itself (not a subclass with another forward)."""
    cls = _detectron2_conv2d()
    return cls is not None and isinstance(module, cls) and type(module).forward is cls.forward


def _drconv_class(conv: nn.Conv2d) -> Type[DRConv2d]:
    """The DRConv that takes the place of ``conv``: one with its norm and activation if needed."""
    if _is_detectron2_conv(conv):
        from drconv_mmdet.detectron2.layers import NormActDRConv2d
        return NormActDRConv2d
    return DRConv2d


def _convertible_conv(model: nn.Module, modules: Dict[str, nn.Module], name: str) -> nn.Conv2d:
    """The conv called ``name``, or a ValueError saying why it cannot be replaced."""
    module = modules.get(name) if name else None
    if module is None:
        raise ValueError(f'layer_names: {name!r} is not a submodule of this '
                         f'{type(model).__name__}. {_choices(modules, name)}')
    reason = _unsupported_reason(module)
    if reason is not None:
        raise ValueError(f'layer_names: {name!r} cannot become a DRConv2d: it is {reason}. '
                         f'{_choices(modules, name)}')
    aliases = [other for other, m in modules.items() if m is module and other != name]
    if aliases:
        raise ValueError(f'layer_names: {name!r} is the same module as {aliases}; replacing it '
                         f'under one name would untie the others')
    fixed = [
        label for label, owner, attr in _plain_attribute_holders(modules, module)
        if not isinstance(vars(owner)[attr], (list, dict))
    ]
    if fixed:
        raise ValueError(f'layer_names: {name!r} is also held in the plain attribute(s) '
                         f'{fixed}, which cannot be updated in place (only lists and dicts can): '
                         f'forward would keep calling the old conv there. Build the layer with '
                         f'DRConv2d.from_conv and update those attributes too')
    return module


def _unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be replaced by a DRConv that computes the same, or None if it can."""
    if isinstance(module, nn.ConvTranspose2d):
        return 'a transposed convolution, which DRConv2d does not implement'
    if not isinstance(module, nn.Conv2d):
        return f'a {type(module).__name__}, not an nn.Conv2d'
    cls = type(module)
    if cls.forward is not nn.Conv2d.forward and not _is_detectron2_conv(module):
        # E.g. detectron2's Conv2d also applies its norm and activation in forward.
        return (f'a {cls.__module__}.{cls.__qualname__}, whose forward is not nn.Conv2d.forward '
                f'and would be lost')
    if module.groups != 1:
        return f'an nn.Conv2d with groups={module.groups}; DRConv2d supports groups=1 only'
    if module.padding_mode != 'zeros':
        return (f'an nn.Conv2d with padding_mode={module.padding_mode!r}; DRConv2d pads with '
                f'zeros only')
    try:
        _explicit_padding(module)
    except NotImplementedError as error:
        return f'an nn.Conv2d whose padding DRConv2d cannot reproduce ({error})'
    if module._forward_hooks or module._forward_pre_hooks:
        return 'an nn.Conv2d with forward hooks, which would be lost'
    return None


def _plain_attribute_holders(modules: Dict[str, nn.Module], conv: nn.Module) -> List[Holder]:
    """Attributes outside the module tree that hold ``conv``: itself, or in a list/tuple/dict.

    detectron2's FPN keeps its lateral and output convs in plain lists that its forward
    iterates. A module reachable under several names is listed once.
    """
    holders: Dict[Tuple[int, str], Holder] = {}
    for owner_name, owner in modules.items():
        for attr, value in vars(owner).items():
            if attr == '_modules':
                continue
            if isinstance(value, dict):
                items = value.values()
            else:
                items = value if isinstance(value, (list, tuple, set)) else [value]
            if any(item is conv for item in items) and (id(owner), attr) not in holders:
                label = f'{owner_name}.{attr}' if owner_name else attr
                holders[(id(owner), attr)] = (label, owner, attr)
    return sorted(holders.values(), key=lambda holder: holder[0])


def _choices(modules: Dict[str, nn.Module], name: str) -> str:
    """The convertible convs of the model, closest to ``name`` first, for error messages."""
    valid = [n for n, m in modules.items() if n and _unsupported_reason(m) is None]
    if not valid:
        return 'This model has no convertible nn.Conv2d'
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    listed = close + [n for n in valid if n not in close]
    more = f' and {len(listed) - MAX_LISTED} more' if len(listed) > MAX_LISTED else ''
    return f'Convertible nn.Conv2d layers: {listed[:MAX_LISTED]}{more}'
