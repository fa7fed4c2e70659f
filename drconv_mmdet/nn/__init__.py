from .convert import convert_to_drconv, replace_conv2d
from .drconv2d import DRConv2d
from .filter_generators import BasisFilterGenerator, PaperFilterGenerator
from .guide_sampling import sample_guide
from .pointwise import SharedGuideSequential, pointwise_to_drconv, start_drconvs_from_plain

__all__ = [
    'DRConv2d', 'PaperFilterGenerator', 'BasisFilterGenerator', 'convert_to_drconv',
    'replace_conv2d', 'sample_guide', 'SharedGuideSequential', 'pointwise_to_drconv',
    'start_drconvs_from_plain'
]
