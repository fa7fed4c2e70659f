"""Conversion of the official DetNAS ImageNet checkpoints into :class:`DetNAS` state dicts."""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor

from .detnas import DetNAS
from .detnas_blocks import BLOCK_OPS

# Searched for VOC and not buildable here, but their ImageNet checkpoints have the same key layout
# as the 300M COCO ones (the first ShuffleNet-Series release shipped VOC-FPN-300M as "300M"), so
# they must be recognised to be refused.
VOC_ARCH_OPS = {
    'VOC-FPN-300M': (2, 1, 0, 3, 1, 3, 0, 3, 2, 0, 1, 1, 3, 3, 3, 3, 3, 3, 3, 1),
    'VOC-RetinaNet-300M': (1, 3, 0, 0, 2, 3, 3, 3, 2, 3, 3, 3, 3, 2, 2, 0, 2, 3, 1, 1),
}
VOC_STEM_CHANNELS = 16

CLASSIFIER_PREFIXES = ('last_conv.', 'fc.')
# Every block writes its op into the name of its first 1x1 conv.
BLOCK_OP_KEY = re.compile(
    r'features\.(\d+)\.conv\.0\.interstellar\d[a-z]_([a-z]+_\dx\d)_branch2a\.weight')

Signature = Tuple[Tuple[str, ...], Optional[int]]


def _known_signatures() -> Dict[str, Signature]:
    """Block ops and stem channels of every released DetNAS architecture."""
    known = {
        name: (tuple(BLOCK_OPS[op] for op in setting['ops']), setting['channels'][0])
        for name, setting in DetNAS.arch_settings.items()
    }
    known.update({
        name: (tuple(BLOCK_OPS[op] for op in ops), VOC_STEM_CHANNELS)
        for name, ops in VOC_ARCH_OPS.items()
    })
    return known


def _signature(state_dict: Mapping[str, Tensor]) -> Signature:
    """Block ops (in block order) and stem channels that the keys of ``state_dict`` describe."""
    ops = {}
    for key in state_dict:
        match = BLOCK_OP_KEY.fullmatch(key)
        if match is not None:
            ops[int(match.group(1))] = match.group(2)
    stem = state_dict.get('first_conv.conv.weight')
    return tuple(ops[i] for i in sorted(ops)), None if stem is None else stem.shape[0]


def _abridge(keys: List[str]) -> str:
    """Count and first few of ``keys``, for error messages."""
    return f'{len(keys)} ({", ".join(keys[:3])}{", ..." if len(keys) > 3 else ""})'


def convert_detnas_checkpoint(checkpoint: Mapping[str, Any],
                              arch: str = 'COCO-FPN-300M') -> 'OrderedDict[str, Tensor]':
    """Turn an official DetNAS ImageNet checkpoint into a :class:`DetNAS` state dict.

    The key names need no renaming; the classifier (``last_conv.*``, ``fc.*``) is dropped, and
    the architecture written in the keys (``...interstellar1a_shufflenet_7x7_branch2a...``) and
    every shape are checked against ``DetNAS(arch=arch)``.

    Args:
        checkpoint (Mapping[str, Any]): The loaded official file: a flat state dict, or a dict
            holding one under ``'state_dict'``; keys may all start with ``'module.'``.
        arch (str): Expected architecture, a key of :attr:`DetNAS.arch_settings`.
            Defaults to ``'COCO-FPN-300M'``.

    Returns:
        OrderedDict[str, Tensor]: State dict that ``DetNAS(arch=arch)`` loads with no missing or
        unexpected keys.

    Raises:
        ValueError: If ``arch`` is unknown, if the checkpoint is of another architecture (the
            message names the one it looks like) or if its keys or shapes differ from those of
            ``DetNAS(arch=arch)``.
    """
    if arch not in DetNAS.arch_settings:
        raise ValueError(f'arch must be one of {tuple(DetNAS.arch_settings)}, got {arch!r}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    # DataParallel prefixes every key; a partial match would be a real key name.
    if state_dict and all(key.startswith('module.') for key in state_dict):
        state_dict = {key[len('module.'):]: value for key, value in state_dict.items()}
    state_dict = OrderedDict((key, value) for key, value in state_dict.items()
                             if not key.startswith(CLASSIFIER_PREFIXES))

    known = _known_signatures()
    found = _signature(state_dict)
    if found != known[arch]:
        matches = [name for name, signature in known.items() if signature == found]
        ops, stem_channels = found
        if matches:
            reason = f'it looks like {" or ".join(matches)}'
        elif not ops:
            reason = ('it has no DetNAS block keys like features.0.conv.0.interstellar1a_'
                      'shufflenet_7x7_branch2a.weight (a supernet or another network?)')
        else:
            reason = (f'its blocks {ops} with a {stem_channels}-channel stem match no known '
                      'DetNAS architecture')
        raise ValueError(f'checkpoint is not a DetNAS {arch} checkpoint: {reason}')

    expected = DetNAS(arch=arch).state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f'{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}' for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(f'checkpoint does not match DetNAS {arch}: missing keys '
                         f'{_abridge(missing)}, unexpected keys {_abridge(unexpected)}, '
                         f'shape mismatches {_abridge(mismatched)}')
    return state_dict
