"""Model analysis: multiply-adds counted as the DRConv paper counts them."""
from .complexity import DRCONV_OP, DRCONV_OP_NAME, MaddAnalyzer, count_madds

__all__ = ['DRCONV_OP', 'DRCONV_OP_NAME', 'MaddAnalyzer', 'count_madds']
