"""Loading mmengine checkpoints with torch >= 2.6."""
import os.path as osp
from typing import Optional, Union

import torch
from mmengine.runner import CheckpointLoader

__all__ = ['trust_local_checkpoints']


def _load_local_checkpoint(filename: str,
                           map_location: Optional[Union[str, torch.device]] = None) -> dict:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist')
    return torch.load(filename, map_location=map_location, weights_only=False)


def trust_local_checkpoints() -> None:
    """Lets mmengine load full checkpoints from local files on torch >= 2.6.

    torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses what mmengine
    0.10 itself saves next to the weights (message hub, optimizer state, numpy scalars), so
    ``--resume``, ``load_from`` and testing a checkpoint fail. This re-registers mmengine's loader
    for local paths with ``weights_only=False``; other schemes (http, torchvision://) keep their
    loaders. Unpickling runs code: call it only in tools that load checkpoints you trust, as
    mmdet's own tools did before torch 2.6.
    """
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_local_checkpoint)
