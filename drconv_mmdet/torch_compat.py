"""The few torch APIs that changed between torch 2.1 and the newest release, behind one signature.

The package supports torch 2.1 to 2.15. Each helper uses the current API where it exists and
falls back to the torch 2.1 one.
"""
from typing import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ['is_autocast_enabled', 'get_autocast_dtype', 'register_load_state_dict_pre_hook']

# torch 2.4 added the device-type argument to ``torch.is_autocast_enabled`` together with
# ``torch.get_autocast_dtype``; torch 2.1 has one pair of functions per device type instead.
_HAS_DEVICE_AUTOCAST_API = hasattr(torch, 'get_autocast_dtype')
# The torch 2.1 functions, for the device types whose autocast torch 2.1 already had.
_LEGACY_AUTOCAST_API = {
    'cpu': ('is_autocast_cpu_enabled', 'get_autocast_cpu_dtype'),
    'cuda': ('is_autocast_enabled', 'get_autocast_gpu_dtype'),
}


def is_autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``'cpu'``, ``'cuda'``, ...).

    Before torch 2.4 only ``'cpu'`` and ``'cuda'`` are known; any other device type gives
    ``False``.
    """
    if _HAS_DEVICE_AUTOCAST_API:
        return torch.is_autocast_enabled(device_type)
    names = _LEGACY_AUTOCAST_API.get(device_type)
    return names is not None and getattr(torch, names[0])()


def get_autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts to on ``device_type``, e.g. ``torch.bfloat16`` on CPU.

    Raises:
        NotImplementedError: before torch 2.4, for a device type other than ``'cpu'`` and
            ``'cuda'``.
    """
    if _HAS_DEVICE_AUTOCAST_API:
        return torch.get_autocast_dtype(device_type)
    names = _LEGACY_AUTOCAST_API.get(device_type)
    if names is None:
        raise NotImplementedError(
            f'the autocast dtype of device type {device_type!r} needs torch >= 2.4 (this is torch '
            f'{torch.__version__}); only {sorted(_LEGACY_AUTOCAST_API)} are supported before')
    return getattr(torch, names[1])()


def register_load_state_dict_pre_hook(module: nn.Module, hook: Callable) -> RemovableHandle:
    """Registers ``hook`` to run before ``module.load_state_dict`` reads the state dict.

    The hook is called as ``hook(module, state_dict, prefix, local_metadata, strict,
    missing_keys, unexpected_keys, error_msgs)`` and may rename or convert the entries of
    ``state_dict`` under ``prefix`` in place. ``nn.Module.register_load_state_dict_pre_hook``
    is public from torch 2.5; before, the private method with ``with_module=True`` calls the hook
    the same way.

    Returns:
        RemovableHandle: ``handle.remove()`` unregisters the hook.
    """
    register = getattr(module, 'register_load_state_dict_pre_hook', None)
    if register is not None:
        return register(hook)
    return module._register_load_state_dict_pre_hook(hook, with_module=True)
