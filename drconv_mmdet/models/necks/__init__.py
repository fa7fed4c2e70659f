from .drfpn import DRFPN

__all__ = ['DRFPN']
