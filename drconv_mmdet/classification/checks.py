"""Argument checks shared by the classification networks: a ValueError naming the argument."""
import numbers
from typing import Any, Sequence, Tuple

__all__ = ['check_positive_int', 'check_out_indices', 'is_real']


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (an int, a float, ...) and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive int (not a bool), else a ValueError naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, but got {value!r}')
    return value


def check_out_indices(out_indices: Sequence[int], num_outputs: int) -> Tuple[int, ...]:
    """``out_indices`` as a tuple of distinct ints in ``range(num_outputs)``, in ascending order.

    The networks return their outputs in layer order whatever the order of ``out_indices``.

    Raises:
        ValueError: ``out_indices`` is not a non-empty sequence of such ints.
    """
    expected = (f'out_indices must be a non-empty sequence of distinct ints in '
                f'range(0, {num_outputs}), but got {out_indices!r}')
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
        raise ValueError(expected)
    indices = tuple(out_indices)
    if (not indices or len(set(indices)) != len(indices) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_outputs
            for i in indices)):
        raise ValueError(expected)
    return tuple(sorted(indices))
