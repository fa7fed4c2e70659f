"""The toy COCO set as an mmdet dataset."""
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from .toy_coco import TOY_COCO_CLASSES

__all__ = ['ToyCocoDataset']


@DATASETS.register_module()
class ToyCocoDataset(CocoDataset):
    """The toy COCO set written by :func:`~drconv_mmdet.datasets.generate_toy_coco`.

    Only the metainfo differs from :class:`mmdet.datasets.CocoDataset`: the three shape
    classes, which the loader matches against the category names of the annotation file.
    """

    METAINFO = {
        'classes': TOY_COCO_CLASSES,
        'palette': [(220, 20, 60), (0, 130, 200), (60, 180, 75)],
    }
