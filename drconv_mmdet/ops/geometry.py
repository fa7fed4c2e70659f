"""Convolution geometry shared by the DRConv op's entry point and its kernels."""
from typing import NamedTuple, Tuple, Union

IntPair = Union[int, Tuple[int, int]]

__all__ = ['IntPair', 'Geometry', 'as_pair', 'conv_output_size']


def as_pair(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(
            f'{name} must be an int or a pair of ints >= {minimum}, but got {value!r}')
    return pair


def conv_output_size(in_size: Tuple[int, int], kernel_size: Tuple[int, int],
                     stride: Tuple[int, int], padding: Tuple[int, int],
                     dilation: Tuple[int, int]) -> Tuple[int, int]:
    """Spatial size of a convolution's output, per dimension ``(H, W)``."""
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // s + 1
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
