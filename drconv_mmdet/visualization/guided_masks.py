"""Pictures of DRConv guided masks: an image beside its region map, as in Fig. 3 of the paper."""
import math
from typing import Sequence, Tuple

import numpy as np

__all__ = ['REGION_PALETTE', 'colorize_regions', 'crop_to_image', 'draw_guided_mask']

# Kelly's colours of maximum contrast without white and black, in his order: the first ones are
# the most distinct, so models with few regions get the clearest pictures. RGB.
REGION_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0xF3, 0xC3, 0x00),
    (0x87, 0x56, 0x92),
    (0xF3, 0x84, 0x00),
    (0xA1, 0xCA, 0xF1),
    (0xBE, 0x00, 0x32),
    (0xC2, 0xB2, 0x80),
    (0x84, 0x84, 0x82),
    (0x00, 0x88, 0x56),
    (0xE6, 0x8F, 0xAC),
    (0x00, 0x67, 0xA5),
    (0xF9, 0x93, 0x79),
    (0x60, 0x4E, 0x97),
    (0xF6, 0xA6, 0x00),
    (0xB3, 0x44, 0x6C),
    (0xDC, 0xD3, 0x00),
    (0x88, 0x2D, 0x17),
    (0x8D, 0xB6, 0x00),
    (0x65, 0x45, 0x22),
    (0xE2, 0x58, 0x22),
    (0x2B, 0x3D, 0x26),
)


def colorize_regions(mask: np.ndarray,
                     palette: Sequence[Tuple[int, int, int]] = REGION_PALETTE) -> np.ndarray:
    """Paints region ``j`` of a guided mask with ``palette[j]``.

    Args:
        mask (np.ndarray[H, W]): region ids, ints in ``[0, len(palette))``.
        palette (Sequence[Tuple[int, int, int]]): one RGB colour per region id.
            Default: :data:`REGION_PALETTE` (20 colours).

    Returns:
        np.ndarray[H, W, 3]: uint8 RGB picture.
    """
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f'mask must be a 2-D array of integer region ids, but got a '
                         f'{mask.ndim}-D {mask.dtype} array')
    if mask.size and (mask.min() < 0 or mask.max() >= len(palette)):
        raise ValueError(f'mask must hold region ids in [0, {len(palette)}) to be painted with a '
                         f'palette of {len(palette)} colours, but got ids in '
                         f'[{mask.min()}, {mask.max()}]')
    return np.asarray(palette, dtype=np.uint8)[mask]


def crop_to_image(mask: np.ndarray, img_shape: Tuple[int, int],
                  batch_input_shape: Tuple[int, int]) -> np.ndarray:
    """The part of a layer's region map that covers the image and not the batch padding.

    A detector pads the resized image (``img_shape``) at the bottom and right to the batch
    shape; a layer's map spans the padded input, so the image is its top-left fraction
    ``img_shape / batch_input_shape``, rounded up to whole mask pixels.

    Args:
        mask (np.ndarray[h, w]): region ids over the padded input.
        img_shape (Tuple[int, int]): (H, W) of the resized image before padding.
        batch_input_shape (Tuple[int, int]): (H, W) of the padded input.

    Returns:
        np.ndarray: the top-left ``(ceil(h * H / Hp), ceil(w * W / Wp))`` part of ``mask``.
    """
    if any(not 0 < size <= padded for size, padded in zip(img_shape, batch_input_shape)):
        raise ValueError(f'img_shape must be positive and fit in batch_input_shape='
                         f'{tuple(batch_input_shape)}, but got {tuple(img_shape)}')
    rows, cols = (math.ceil(length * size / padded)
                  for length, size, padded in zip(mask.shape, img_shape, batch_input_shape))
    return mask[:rows, :cols]


def draw_guided_mask(image: np.ndarray,
                     mask: np.ndarray,
                     palette: Sequence[Tuple[int, int, int]] = REGION_PALETTE) -> np.ndarray:
    """An image beside its colourised region map, nearest-upsampled to the image size.

    There is no gap between the two halves: the picture is exactly ``2 W`` wide and ``H`` high,
    the image on the left and the map on the right.

    Args:
        image (np.ndarray[H, W, 3]): uint8 image, in the channel order of ``palette`` (RGB).
        mask (np.ndarray[h, w]): region ids covering the image (see :func:`crop_to_image`).
        palette (Sequence[Tuple[int, int, int]]): one colour per region id.
            Default: :data:`REGION_PALETTE`.

    Returns:
        np.ndarray[H, 2 W, 3]: uint8 picture.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be a uint8 array of shape (H, W, 3), but got a '
                         f'{image.dtype} array of shape {image.shape}')
    colours = colorize_regions(mask, palette)
    height, width = image.shape[:2]
    # Source pixel of each target pixel, floor(i * h / H): nearest-neighbour resizing that keeps
    # every region a block of whole mask pixels, as F.interpolate(mode='nearest') does.
    rows = np.arange(height) * mask.shape[0] // height
    cols = np.arange(width) * mask.shape[1] // width
    return np.concatenate([image, colours[rows][:, cols]], axis=1)
