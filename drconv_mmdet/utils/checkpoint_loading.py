"""Loading the checkpoints mmengine saves with torch's ``weights_only=True`` unpickler."""
import pickle
from typing import Any, Callable, List, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.utils import digit_version

try:
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct, scalar

__all__ = ['allow_mmengine_checkpoints', 'mmengine_checkpoint_globals']

# HistoryBuffer pickles the statistics it registers on itself as getattr(HistoryBuffer, name).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
# numpy >= 1.25 gives each dtype a class of its own (numpy.dtypes.Float64DType, ...), which
# unpickling a dtype builds. Booleans, numbers, bytes, strings and datetimes; no object or void
# dtype, whose arrays could hold anything.
_NUMPY_DTYPE_CHARS = '?bBhHiIlLqQefdgFDGSUmM'


def _history_buffer_statistic(owner: Any, name: str) -> Callable:
    """``getattr`` as a checkpoint may call it: only for HistoryBuffer's own statistics."""
    if owner is not HistoryBuffer or name not in _HISTORY_BUFFER_STATISTICS:
        raise pickle.UnpicklingError(
            f'weights_only load allows getattr only for HistoryBuffer.'
            f'{{{",".join(_HISTORY_BUFFER_STATISTICS)}}}, but the checkpoint asks for '
            f'getattr({owner!r}, {name!r})')
    return getattr(owner, name)


def mmengine_checkpoint_globals() -> List[Tuple[Any, str]]:
    """The globals an mmengine checkpoint pickles besides tensors, as ``(object, path)`` pairs.

    A Runner's checkpoint holds the message hub (:class:`~mmengine.logging.HistoryBuffer` with
    numpy arrays and scalars, and the buffer's statistics methods) next to the weights, the
    optimizer and scheduler states. numpy 2 moved ``numpy.core`` to ``numpy._core``; both paths
    are listed so that checkpoints saved with either numpy load.
    """
    dtype_classes = sorted({np.dtype, *(type(np.dtype(char)) for char in _NUMPY_DTYPE_CHARS)},
                           key=lambda cls: cls.__name__)
    return [
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_statistic, 'builtins.getattr'),
        (np.ndarray, 'numpy.ndarray'),
        *((cls, f'{cls.__module__}.{cls.__name__}') for cls in dtype_classes),
        *((fn, f'{module}.{fn.__name__}') for fn in (_reconstruct, scalar)
          for module in ('numpy.core.multiarray', 'numpy._core.multiarray')),
    ]


def allow_mmengine_checkpoints() -> None:
    """Lets ``torch.load(weights_only=True)``, torch's default since 2.6, load mmengine checkpoints.

    mmengine 0.10's ``CheckpointLoader`` calls ``torch.load`` without ``weights_only``. From
    torch 2.6 on, that unpickler refuses what a Runner saves next to the weights, so ``--resume``,
    ``load_from`` and testing a checkpoint fail. This adds the globals of
    :func:`mmengine_checkpoint_globals` to torch's allowlist (``add_safe_globals``); any other
    global still stops the load, and ``getattr`` is resolved only for HistoryBuffer's own
    statistics. Before torch 2.6 ``torch.load`` unpickles anything by default and this does
    nothing.
    """
    if digit_version(torch.__version__) >= digit_version('2.6.0'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
