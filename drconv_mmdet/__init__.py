"""drconv-mmdet: Dynamic Region-Aware Convolution (DRConv) for MMDetection 3.x.

Importing the package registers its layers, models and datasets in mmdet's registries; configs do
it with ``custom_imports = dict(imports=['drconv_mmdet'], allow_failed_imports=False)``.
"""
from . import datasets, models  # noqa: F401
from .ops import dr_conv2d, dr_conv2d_reference
from .version import __version__

__all__ = ['__version__', 'dr_conv2d', 'dr_conv2d_reference']
