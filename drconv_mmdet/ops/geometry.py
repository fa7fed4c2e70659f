"""Convolution geometry shared by the DRConv op's entry point and its kernels."""
import numbers
from typing import NamedTuple, Sequence, Tuple, Union

IntPair = Union[int, Tuple[int, int]]

__all__ = ['IntPair', 'Geometry', 'as_pair', 'conv_output_size', 'make_geometry']


def _is_int(value: object) -> bool:
    # numbers.Integral takes numpy integers, as nn.Conv2d does; bool is an Integral too, but
    # True is no size.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    """``value`` as a pair of plain ints ``>= minimum``: an int is used for both dimensions.

    Raises:
        ValueError: naming ``name``, when ``value`` is not an int (a bool is not) or a pair of
            ints, or is below ``minimum``.
    """
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v) and v >= minimum for v in pair):
        raise ValueError(f'{name} must be an int or a pair of ints >= {minimum}, but got {value!r}')
    return int(pair[0]), int(pair[1])


def conv_output_size(
    in_size: Tuple[int, int],
    kernel_size: Tuple[int, int],
    stride: Tuple[int, int],
    padding: Tuple[int, int],
    dilation: Tuple[int, int],
) -> Tuple[int, int]:
    """Spatial size of a convolution's output, per dimension ``(H, W)``."""
    return tuple((size + 2 * pad - dil * (k - 1) - 1) // s + 1
                 for size, k, s, pad, dil in zip(in_size, kernel_size, stride, padding, dilation))


class Geometry(NamedTuple):
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    out_size: Tuple[int, int]

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


def make_geometry(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int]) -> Geometry:
    """The :class:`Geometry` of a convolution of ``in_size`` (H, W) with ``kernel`` (kh, kw).

    Sizes may be symbolic (torch.compile), so they are not converted to ``int`` here.
    """
    geo_args = (tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
    return Geometry(*geo_args, conv_output_size(tuple(in_size), *geo_args))
