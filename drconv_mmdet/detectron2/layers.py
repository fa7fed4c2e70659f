"""DRConv2d with the norm and activation that detectron2's ``Conv2d`` applies after its conv."""
from typing import Any, Callable, List, Optional

import torch.nn.functional as F
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

    A layer built with ``with_guide_conv=False`` can read its guided feature from another one
    that computes it on the same maps just before (:meth:`share_guide_from`), as the lateral and
    output convs of one FPN level do: the two then share one guide conv.
    """

    def __init__(self,
                 *args: Any,
                 norm: Optional[nn.Module] = None,
                 activation: Optional[Callable[[Tensor], Tensor]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        # A list, not an attribute: the source is a module of its own and must not be registered
        # here a second time.
        self.guide_sources: List[NormActDRConv2d] = []
        self.keep_guide = False
        self.last_guide: Optional[Tensor] = None

    def share_guide_from(self, source: 'NormActDRConv2d') -> None:
        """Uses the guided feature that ``source`` computed in its last forward.

        ``source`` must run right before this layer, on maps of this layer's output size, and
        own a guide conv with this layer's region count; its guide conv then learns from both.

        Raises:
            ValueError: this layer has a guide conv of its own, ``source`` has none, or the
                region counts differ.
        """
        if self.with_guide_conv or not source.with_guide_conv:
            raise ValueError('share_guide_from needs a layer built with with_guide_conv=False and '
                             'a source with its own guide conv')
        if source.region_num != self.region_num:
            raise ValueError(f'the source has {source.region_num} regions, this layer '
                             f'{self.region_num}')
        source.keep_guide = True
        self.guide_sources = [source]

    @classmethod
    def like(cls, conv: nn.Conv2d, **drconv_kwargs: Any) -> 'NormActDRConv2d':
        """A freshly initialised layer with the geometry, bias, norm and activation of ``conv``."""
        return cls(conv.in_channels,
                   conv.out_channels,
                   conv.kernel_size,
                   conv.stride,
                   _explicit_padding(conv),
                   conv.dilation,
                   conv.groups,
                   conv.bias is not None,
                   norm=getattr(conv, 'norm', None),
                   activation=getattr(conv, 'activation', None),
                   **drconv_kwargs)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **drconv_kwargs: Any) -> 'NormActDRConv2d':
        """:meth:`DRConv2d.from_conv`, keeping the conv's norm and activation (if it has them)."""
        layer = super().from_conv(conv, **drconv_kwargs)
        layer.norm = getattr(conv, 'norm', None)
        layer.activation = getattr(conv, 'activation', None)
        return layer

    def forward(self, x: Tensor, guide: Optional[Tensor] = None) -> Tensor:
        if guide is None and self.guide_sources:
            source = self.guide_sources[0]
            if source.last_guide is None:
                raise RuntimeError('the layer this one shares its guide with has not run since '
                                   'this layer last ran')
            # Taken, not read: a guide from an earlier batch is never used.
            guide, source.last_guide = source.last_guide, None
        elif guide is None and self.keep_guide:
            guide = F.conv2d(x, self.guide.weight, self.guide.bias, self.stride, self.padding,
                             self.dilation)
            self.last_guide = guide
        x = super().forward(x, guide)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
