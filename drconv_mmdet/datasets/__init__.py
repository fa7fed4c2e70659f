import importlib.util

from .toy_coco import TOY_COCO_CLASSES, ensure_toy_coco, generate_toy_coco

__all__ = ['TOY_COCO_CLASSES', 'ensure_toy_coco', 'generate_toy_coco']

# The generator needs no OpenMMLab (detectron2 users make the same set); the dataset class does.
if importlib.util.find_spec('mmdet') is not None:
    from .toy_coco_dataset import ToyCocoDataset  # noqa: F401
    __all__.append('ToyCocoDataset')
