from .toy_coco import TOY_COCO_CLASSES, ToyCocoDataset, ensure_toy_coco, generate_toy_coco

__all__ = ['TOY_COCO_CLASSES', 'ToyCocoDataset', 'ensure_toy_coco', 'generate_toy_coco']
