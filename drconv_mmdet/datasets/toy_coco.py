"""A deterministic toy COCO instance-segmentation dataset.

Tests and the CPU demo need a small instance-segmentation set that exists without a download.
:func:`generate_toy_coco` draws filled circles, rectangles and triangles on textured backgrounds
and writes them in COCO format; :func:`ensure_toy_coco` regenerates the set only when the
arguments changed. Needs no OpenMMLab, so that detectron2 users generate the same set;
:class:`~drconv_mmdet.datasets.ToyCocoDataset` loads it in mmdet.
"""
import inspect
import json
import math
import os
import os.path as osp
import shutil
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from drconv_mmdet.version import __version__

TOY_COCO_CLASSES = ('circle', 'rectangle', 'triangle')
MANIFEST_NAME = 'toy_coco.json'

_SPLITS = ('train', 'val')
_ANNOTATION_DIR = 'annotations'
# PNG rather than JPEG: lossless, so the pixels read back are exactly the generated ones (mask
# edges carry no compression ringing) and the files do not depend on the JPEG encoder version.
_IMAGE_SUFFIX = '.png'

_MAX_OBJECTS = 6
# Placement is rejection sampling; a crowded image simply keeps fewer objects.
_PLACEMENT_TRIES = 30
# Diameter of an object's circumscribed circle, relative to the image's short side.
_MIN_EXTENT = 0.2
_MAX_EXTENT = 0.45
# Keeps circumscribed circles, and with them the rasterised masks, from touching, so every mask
# is the whole visible object and no occlusion has to be resolved.
_GAP = 2.0
_CIRCLE_VERTICES = 32
# Rectangles are built from their half-diagonal: this angle range bounds the aspect ratio to
# about 1:2.1 either way, so no rectangle degenerates into a line.
_RECT_DIAGONAL_ANGLES = (math.radians(25), math.radians(65))
_TRIANGLE_JITTER = math.radians(20)
_PIXEL_NOISE_STD = 6.0


def _check_int(name: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, but got {value!r}')


def _check_args(num_train: int, num_val: int, min_size: int, max_size: int, seed: int) -> None:
    """Validate the arguments of :func:`generate_toy_coco`."""
    _check_int('num_train', num_train, 1)
    _check_int('num_val', num_val, 1)
    _check_int('min_size', min_size, 16)
    _check_int('max_size', max_size, min_size)
    _check_int('seed', seed, 0)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A greyish BGR colour: backgrounds stay unsaturated so the objects stand out."""
    grey = rng.uniform(40, 215)
    return np.clip(grey + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated BGR colour of random hue, independent of the object's class."""
    hsv = np.array([[[rng.integers(0, 180),
                      rng.integers(150, 256),
                      rng.integers(120, 256)]]],
                   dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _projection(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Pixel coordinates projected on a random direction, shape (H, W)."""
    angle = rng.uniform(0, math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    return xs * math.cos(angle) + ys * math.sin(angle)


def _blend(weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-pixel mix of two colours, ``weight`` of shape (H, W) in [0, 1]."""
    return first + weight[..., None] * (second - first)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Linear gradient between two muted colours along a random direction."""
    proj = _projection(rng, height, width)
    weight = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    return _blend(weight, _muted_colour(rng), _muted_colour(rng))


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Soft sinusoidal stripes of random period, phase and direction."""
    proj = _projection(rng, height, width)
    period = rng.uniform(6, 24)
    weight = 0.5 + 0.5 * np.sin(2 * math.pi * proj / period + rng.uniform(0, 2 * math.pi))
    return _blend(weight, _muted_colour(rng), _muted_colour(rng))


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth low-frequency noise: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(0, 1, size=(rng.integers(3, 9), rng.integers(3, 9))).astype(np.float32)
    weight = np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    return _blend(weight, _muted_colour(rng), _muted_colour(rng))


_BACKGROUNDS: Tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _gradient,
    _stripes,
    _blobs,
)


def _shape_polygon(rng: np.random.Generator, shape: str, cx: float, cy: float,
                   radius: float) -> List[float]:
    """Vertices ``[x0, y0, x1, y1, ...]`` of a shape inscribed in the given circle.

    Coordinates are rounded to 2 decimals here, before rasterisation, so that the polygon
    written to the annotation file is exactly the one whose pixels were painted.
    """
    start = rng.uniform(0, 2 * math.pi)
    if shape == 'circle':
        angles = start + 2 * math.pi * np.arange(_CIRCLE_VERTICES) / _CIRCLE_VERTICES
    elif shape == 'rectangle':
        half = rng.uniform(*_RECT_DIAGONAL_ANGLES)
        angles = start + np.array([half, math.pi - half, math.pi + half, -half])
    else:
        jitter = rng.uniform(-_TRIANGLE_JITTER, _TRIANGLE_JITTER, size=3)
        angles = start + 2 * math.pi * np.arange(3) / 3 + jitter
    xy = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in xy.ravel()]


def _render_image(rng: np.random.Generator, height: int,
                  width: int) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image and return it (BGR uint8) with its objects' annotation fields."""
    image = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))](rng, height, width)
    short_side = min(height, width)
    placed: List[Tuple[float, float, float]] = []
    objects = []
    for _ in range(rng.integers(1, _MAX_OBJECTS + 1)):
        for _ in range(_PLACEMENT_TRIES):
            radius = rng.uniform(_MIN_EXTENT, _MAX_EXTENT) * short_side / 2
            # One pixel of margin keeps every vertex strictly inside the image.
            cx = rng.uniform(radius + 1, width - radius - 1)
            cy = rng.uniform(radius + 1, height - radius - 1)
            if all(math.hypot(cx - x, cy - y) >= radius + r + _GAP for x, y, r in placed):
                break
        else:
            continue
        label = int(rng.integers(len(TOY_COCO_CLASSES)))
        polygon = _shape_polygon(rng, TOY_COCO_CLASSES[label], cx, cy, radius)
        # Painting the mask that pycocotools decodes from the polygon makes the annotation and
        # the visible object agree pixel for pixel.
        rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
        placed.append((cx, cy, radius))
        image[mask_utils.decode(rle).astype(bool)] = _vivid_colour(rng)
        objects.append(
            dict(
                category_id=label + 1,
                segmentation=[polygon],
                area=int(mask_utils.area(rle)),
                # The box of the painted pixels, not of the polygon: a sharp vertex can end more
                # than a pixel beyond the last pixel it covers.
                bbox=[float(v) for v in mask_utils.toBbox(rle)],
                iscrowd=0))
    image += rng.normal(0, _PIXEL_NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _image_file_name(image_id: int) -> str:
    """File name of an image; zero padding keeps the names sorted by id."""
    return f'{image_id:06d}{_IMAGE_SUFFIX}'


def _write_split(out_dir: str, split_index: int, num_images: int, min_size: int, max_size: int,
                 seed: int) -> Dict[str, int]:
    """Write the images and the annotation file of one split; return its counts."""
    name = _SPLITS[split_index]
    os.makedirs(osp.join(out_dir, name), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        # One generator per image, keyed by split and index: images do not depend on the split
        # sizes, and train and val never share an image.
        rng = np.random.default_rng([seed, split_index, image_id])
        width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image, objects = _render_image(rng, height, width)
        file_name = _image_file_name(image_id)
        path = osp.join(out_dir, name, file_name)
        # cv2.imwrite reports failure through its return value only.
        if not cv2.imwrite(path, image):
            raise OSError(f'could not write image {path}')
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, **obj))
    categories = [
        dict(id=i + 1, name=class_name, supercategory='shape')
        for i, class_name in enumerate(TOY_COCO_CLASSES)
    ]
    coco = dict(info=dict(description=f'drconv_mmdet toy COCO, {name} split'),
                images=images,
                annotations=annotations,
                categories=categories)
    with open(osp.join(out_dir, _ANNOTATION_DIR, f'instances_{name}.json'), 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return dict(images=len(images), instances=len(annotations))


def generate_toy_coco(out_dir: str,
                      num_train: int = 200,
                      num_val: int = 50,
                      min_size: int = 128,
                      max_size: int = 256,
                      seed: int = 0) -> Dict[str, Dict[str, int]]:
    """Generate the toy COCO instance-segmentation set.

    Layout::

        out_dir/
          train/000001.png ...
          val/000001.png ...
          annotations/instances_train.json
          annotations/instances_val.json

    Each image has a random width and height in ``[min_size, max_size]``, a gradient, stripe
    or smooth-noise background and 1 to 6 non-overlapping filled shapes whose circumscribed
    diameter is 20 to 45 % of the short image side. With the same numpy, OpenCV and pycocotools
    versions, the same arguments give byte-identical annotation files and identical pixels.
    Across versions they may not: numpy does not promise the same random stream from one
    version to the next, and OpenCV's colour conversion and pycocotools' rasterisation may round
    differently.

    Args:
        out_dir (str): Folder to write into; created if missing. Existing files of the same
            names are overwritten, other files are left alone.
        num_train (int): Number of training images. Defaults to 200.
        num_val (int): Number of validation images. Defaults to 50.
        min_size (int): Smallest image side in pixels, at least 16. Defaults to 128.
        max_size (int): Largest image side in pixels, at least ``min_size``. Defaults to 256.
        seed (int): Non-negative seed of the whole set. Defaults to 0.

    Returns:
        dict: ``{'train': {'images': n, 'instances': m}, 'val': {...}}``.
    """
    _check_args(num_train, num_val, min_size, max_size, seed)
    os.makedirs(osp.join(out_dir, _ANNOTATION_DIR), exist_ok=True)
    return {
        name: _write_split(out_dir, split_index, num_images, min_size, max_size, seed)
        for split_index, (name, num_images) in enumerate(zip(_SPLITS, (num_train, num_val)))
    }


def _expected_files(num_images: int) -> List[str]:
    """Sorted image file names of a split holding ``num_images`` images."""
    return [_image_file_name(image_id) for image_id in range(1, num_images + 1)]


def _is_up_to_date(out_dir: str, manifest: dict) -> bool:
    """Whether ``out_dir`` holds a complete set described by ``manifest``."""
    manifest_path = osp.join(out_dir, MANIFEST_NAME)
    if not osp.isfile(manifest_path):
        return False
    with open(manifest_path) as f:
        found = json.load(f)
    if {k: found.get(k) for k in ('version', 'args')} != manifest:
        return False
    for name in _SPLITS:
        split_dir = osp.join(out_dir, name)
        if not osp.isfile(osp.join(out_dir, _ANNOTATION_DIR, f'instances_{name}.json')):
            return False
        if not osp.isdir(split_dir) or sorted(os.listdir(split_dir)) != _expected_files(
                manifest['args'][f'num_{name}']):
            return False
    return True


def ensure_toy_coco(out_dir: str, force: bool = False, **kwargs: int) -> bool:
    """Generate the toy COCO set unless ``out_dir`` already holds the same one.

    A manifest ``out_dir/toy_coco.json`` records the generator version and the arguments. It
    is written last, so an interrupted generation is redone on the next call. Regenerating
    first removes the split and annotation folders, so no stale image survives.

    Args:
        out_dir (str): Folder of the set.
        force (bool): Regenerate even if the set is up to date. Defaults to False.
        **kwargs (int): Arguments of :func:`generate_toy_coco` other than ``out_dir``.

    Returns:
        bool: True if the set was (re)generated, False if it was already up to date.
    """
    # Binding fills in the defaults, so the manifest records every argument, and rejects
    # unknown names with a TypeError.
    bound = inspect.signature(generate_toy_coco).bind(out_dir, **kwargs)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k != 'out_dir'}
    # Validate before anything is deleted, so bad arguments leave an existing set intact.
    _check_args(**args)
    manifest = dict(version=__version__, args=args)
    if not force and _is_up_to_date(out_dir, manifest):
        return False
    manifest_path = osp.join(out_dir, MANIFEST_NAME)
    if osp.isfile(manifest_path):
        os.remove(manifest_path)
    for name in (*_SPLITS, _ANNOTATION_DIR):
        if osp.isdir(osp.join(out_dir, name)):
            shutil.rmtree(osp.join(out_dir, name))
    summary = generate_toy_coco(out_dir, **args)
    with open(manifest_path, 'w') as f:
        json.dump(dict(manifest, summary=summary), f, indent=2)
    return True
