"""drconv-mmdet: Dynamic Region-Aware Convolution (DRConv) for PyTorch and MMDetection 3.x.

The core (the ``dr_conv2d`` op, the ``DRConv2d`` layer, ``convert_to_drconv``, which puts
DRConvs into any PyTorch model, and the DRConv ShuffleNetV2 and MobileNetV2 classifiers of
``drconv_mmdet.classification``) needs only torch. Where mmdet is installed, importing the package
also registers the layer, the models and the datasets in mmdet's registries; configs do it with
``custom_imports = dict(imports=['drconv_mmdet'], allow_failed_imports=False)``.
"""
import importlib.util

from .nn import BasisFilterGenerator, DRConv2d, PaperFilterGenerator, convert_to_drconv
from .ops import dr_conv2d, dr_conv2d_reference
from .version import __version__

# Decided by whether mmdet is installed, not by catching its import errors: a broken mmdet
# install must fail loudly here rather than leave configs with unregistered types.
if importlib.util.find_spec('mmdet') is not None:
    from . import datasets, models  # noqa: F401

__all__ = [
    '__version__', 'dr_conv2d', 'dr_conv2d_reference', 'DRConv2d', 'PaperFilterGenerator',
    'BasisFilterGenerator', 'convert_to_drconv'
]
