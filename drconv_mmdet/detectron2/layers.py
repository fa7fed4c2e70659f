"""DRConv2d with the norm and activation that detectron2's ``Conv2d`` applies after its conv."""
from typing import Any, Callable, Optional

from torch import Tensor, nn

from drconv_mmdet.nn.drconv2d import DRConv2d, _explicit_padding

__all__ = ['NormActDRConv2d']


class NormActDRConv2d(DRConv2d):
    """A :class:`DRConv2d` followed by a norm and an activation, as ``detectron2.layers.Conv2d``.

    detectron2's ``Conv2d`` holds its norm as the submodule ``norm`` and applies it and then
    ``activation`` in ``forward``; this layer does the same after the DRConv, so the norm keeps
    its state-dict keys (``<name>.norm.*``) when a DRConv takes the conv's place.

    Args:
        *args: the arguments of :class:`DRConv2d`.
        norm (nn.Module, optional): applied to the DRConv's output. Default: None.
        activation (callable, optional): applied after the norm. Default: None.
        **kwargs: the keyword arguments of :class:`DRConv2d`.
    """

    def __init__(self,
                 *args: Any,
                 norm: Optional[nn.Module] = None,
                 activation: Optional[Callable[[Tensor], Tensor]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    @classmethod
    def like(cls, conv: nn.Conv2d, **drconv_kwargs: Any) -> 'NormActDRConv2d':
        """A freshly initialised layer with the geometry, bias, norm and activation of ``conv``."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   _explicit_padding(conv), conv.dilation, conv.groups, conv.bias is not None,
                   norm=getattr(conv, 'norm', None), activation=getattr(conv, 'activation', None),
                   **drconv_kwargs)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **drconv_kwargs: Any) -> 'NormActDRConv2d':
        """:meth:`DRConv2d.from_conv`, keeping the conv's norm and activation (if it has them)."""
        layer = super().from_conv(conv, **drconv_kwargs)
        layer.norm = getattr(conv, 'norm', None)
        layer.activation = getattr(conv, 'activation', None)
        return layer

    def forward(self, x: Tensor, guide: Optional[Tensor] = None) -> Tensor:
        x = super().forward(x, guide)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
