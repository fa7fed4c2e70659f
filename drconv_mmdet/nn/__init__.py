from .drconv2d import DRConv2d
from .filter_generators import BasisFilterGenerator, PaperFilterGenerator

__all__ = ['DRConv2d', 'PaperFilterGenerator', 'BasisFilterGenerator']
