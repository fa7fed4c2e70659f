"""The project's toy COCO set in detectron2's DatasetCatalog."""
import os.path as osp
from typing import Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ['TOY_COCO_SPLITS', 'register_toy_coco']

# Dataset names for DATASETS.TRAIN / DATASETS.TEST, and the split folder each one reads.
TOY_COCO_SPLITS = {'toy_coco_train': 'train', 'toy_coco_val': 'val'}


def register_toy_coco(root: str = 'data/toy_coco') -> Tuple[str, ...]:
    """Registers the toy COCO set under ``root`` as ``toy_coco_train`` and ``toy_coco_val``.

    The set is the one ``tools/misc/make_toy_coco.py`` writes (``<root>/<split>/`` images and
    ``<root>/annotations/instances_<split>.json``); registration only records the paths, so the
    files may be generated afterwards. Names already registered are registered again with the new
    root, so a process can switch between sets (tests do).

    Returns:
        tuple[str, ...]: the registered names.
    """
    for name, split in TOY_COCO_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            # The metadata keeps the old paths and refuses to change them otherwise.
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, osp.join(root, 'annotations', f'instances_{split}.json'),
                                osp.join(root, split))
    return tuple(TOY_COCO_SPLITS)
