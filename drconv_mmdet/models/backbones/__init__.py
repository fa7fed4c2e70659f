from .detnas import DetNAS
from .detnas_blocks import BLOCK_OPS, DetNASBlock, SpatialPointwiseUnit, split_even_odd
from .detnas_checkpoint import convert_detnas_checkpoint

__all__ = [
    'BLOCK_OPS', 'DetNAS', 'DetNASBlock', 'SpatialPointwiseUnit', 'convert_detnas_checkpoint',
    'split_even_odd'
]
