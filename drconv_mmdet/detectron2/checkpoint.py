"""Warm start from plain detectron2 checkpoints: every DRConv starts as the conv at its place."""
from typing import Any, Dict, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from drconv_mmdet.nn import DRConv2d

__all__ = ['DRConvCheckpointer', 'start_drconvs_from_plain']

# Keys detectron2's own loading forgives (DetectionCheckpointer._load_model): the pixel
# statistics come from the config, and old checkpoints still have the anchors as buffers.
_FORGIVEN_MISSING = ('pixel_mean', 'pixel_std')
_FORGIVEN_UNEXPECTED = 'anchor_generator.cell_anchors'


def _abridge(keys: List[str]) -> str:
    return f'{len(keys)} ({", ".join(keys[:4])}{", ..." if len(keys) > 4 else ""})'


def start_drconvs_from_plain(model: nn.Module, state: Dict[str, Any]) -> Dict[str, Any]:
    """The state dict that loads ``state`` into ``model``, each DRConv starting as its plain conv.

    Where ``state`` holds a plain conv at a DRConv's place (``<name>.weight``, and
    ``<name>.bias`` if the conv has one), the DRConv is set up to compute that conv
    (:meth:`DRConv2d.init_from_conv`: every region's filter is the plain weight, the bias is
    copied) and its parameters replace the conv's in the returned dict; its guide conv keeps its
    initialisation. A norm after the conv (detectron2's ``Conv2d``) keeps its keys. Where
    ``state`` holds the DRConv itself (a DRConv checkpoint, e.g. for ``--resume``), it is left
    as it is.

    A checkpoint with nothing at any DRConv's place (ImageNet weights of the bottom-up network)
    is returned unchanged, for detectron2 to load as usual. Any other must fit the whole model.

    Args:
        model (nn.Module): the DRConv model; its DRConvs are changed in place.
        state (dict[str, Tensor or np.ndarray]): the checkpoint's model state, numpy arrays (the
            ``.pkl`` model-zoo format) or tensors, keys without a ``module.`` prefix.

    Returns:
        dict[str, Tensor]: ``state`` with tensors and the DRConvs' parameters in place of the
        plain convs'.

    Raises:
        ValueError: a DRConv's place without a conv, a conv weight of another shape than the
            DRConv's, or any other missing, unexpected or mis-shaped key.
    """
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    own_keys = {name: list(layer.state_dict()) for name, layer in drconvs.items()}
    plain = [name for name in drconvs if f'{name}.weight' in state]
    resumed = [
        name for name in drconvs
        if name not in plain and all(f'{name}.{key}' in state for key in own_keys[name])
    ]
    if not plain and not resumed:
        return state
    absent = [name for name in drconvs if name not in plain and name not in resumed]
    if absent:
        raise ValueError(f'the checkpoint has no conv and no DRConv at the DRConv place(s) '
                         f'{absent}: expected {absent[0]}.weight of a plain conv or the DRConv\'s '
                         f'own keys')
    state = {
        key: torch.as_tensor(value) if isinstance(value, np.ndarray) else value
        for key, value in state.items()
    }
    for name in plain:
        layer = drconvs[name]
        weight, bias = state.pop(f'{name}.weight'), state.get(f'{name}.bias')
        expected = (layer.out_channels, layer.in_channels, *layer.kernel_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f'{name}.weight has shape {tuple(weight.shape)} in the checkpoint, '
                             f'but the DRConv at {name} needs a conv weight of shape {expected}')
        try:
            layer.init_from_conv(weight, bias)
        except ValueError as e:
            raise ValueError(f'the DRConv at {name} cannot start from the plain conv: {e}') from e
        for key, value in layer.state_dict().items():
            state.setdefault(f'{name}.{key}', value)
    expected_state = model.state_dict()
    missing = [
        key for key in expected_state
        if key not in state and key.rpartition('.')[2] not in _FORGIVEN_MISSING
    ]
    unexpected = [
        key for key in state if key not in expected_state and _FORGIVEN_UNEXPECTED not in key
    ]
    misshaped = [
        f'{key} {tuple(state[key].shape)} != {tuple(value.shape)}'
        for key, value in expected_state.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    if missing or unexpected or misshaped:
        raise ValueError(f'the checkpoint does not fit the model apart from its DRConvs: missing '
                         f'keys {_abridge(missing)}, unexpected keys {_abridge(unexpected)}, '
                         f'mis-shaped keys (checkpoint != model) {_abridge(misshaped)}')
    return state


class DRConvCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that starts DRConvs from plain checkpoints.

    A plain detectron2 checkpoint (``.pkl`` of its model zoo or ``.pth``) of the same model
    without DRConvs loads with every DRConv computing the plain conv at its place
    (:func:`start_drconvs_from_plain`), so the model's outputs equal the plain model's at load.
    Such a checkpoint, and a DRConv checkpoint, must fit the whole model: a missing, unexpected
    or mis-shaped key raises a ValueError instead of detectron2's warning. Checkpoints loaded by
    name-matching heuristics (Caffe2 ImageNet weights such as ``R-50.pkl``) and ones with nothing
    at a DRConv's place load as detectron2 loads them.
    """

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        if not checkpoint.get('matching_heuristics', False):
            state = checkpoint['model']
            # DataParallel prefixes every key; a partial match would be a real key name.
            if state and all(key.startswith('module.') for key in state):
                state = {key[len('module.'):]: value for key, value in state.items()}
            checkpoint['model'] = start_drconvs_from_plain(self.model, state)
        return super()._load_model(checkpoint)
