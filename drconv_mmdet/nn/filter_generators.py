"""Filter generators of DRConv: per-sample, per-region filters predicted from the input.

Both hold raw parameters and call the functional ops instead of owning ``nn.Conv2d`` modules: an
outer ``init_cfg`` such as FPN's ``dict(type='Xavier', layer='Conv2d')`` matches modules by class
name and would otherwise overwrite their carefully scaled initialisation.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['PaperFilterGenerator', 'BasisFilterGenerator']


def _target_std(in_channels: int, kernel_size: Tuple[int, int]) -> float:
    """Std of a variance-preserving filter for a conv with this fan-in."""
    return 1.0 / math.sqrt(in_channels * kernel_size[0] * kernel_size[1])


class PaperFilterGenerator(nn.Module):
    """The filter generator of the paper (Sec. 3.3, Fig. 2b).

    Adaptive average pooling of the input to ``kh x kw``, a 1x1 conv ``C -> hidden`` with sigmoid,
    then a 1x1 conv ``hidden -> m*O*C`` with ``groups=m`` and no activation: each of the ``kh*kw``
    pooled positions gives one tap of the ``m`` filters.

    Args:
        in_channels (int): C, input channels of the DRConv.
        out_channels (int): O, output channels of the DRConv.
        kernel_size (Tuple[int, int]): (kh, kw) of the generated filters.
        region_num (int): m, number of regions (filters per sample).
        hidden_channels (int): width of the hidden layer, a multiple of ``region_num``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int, hidden_channels: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        filter_numel = out_channels * in_channels
        self.shape = (region_num, out_channels, in_channels)
        self.reduce_weight = nn.Parameter(torch.empty(hidden_channels, in_channels, 1, 1))
        self.reduce_bias = nn.Parameter(torch.empty(hidden_channels))
        self.expand_weight = nn.Parameter(
            torch.empty(region_num * filter_numel, hidden_channels // region_num, 1, 1))
        self.expand_bias = nn.Parameter(torch.empty(region_num * filter_numel))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.reduce_weight, a=math.sqrt(5))
        nn.init.zeros_(self.reduce_bias)
        # The sigmoid outputs start near 0.5, so a filter is ~0.5 * sqrt(hidden/m) * std(expand):
        # scale expand so that the generated filters start at a variance-preserving size.
        group_width = self.expand_weight.shape[1]
        std = _target_std(self.shape[2], self.kernel_size) / (0.5 * math.sqrt(group_width))
        nn.init.normal_(self.expand_weight, std=std)
        nn.init.zeros_(self.expand_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Generates the filters.

        Args:
            x (Tensor[B, C, H, W]): input of the DRConv.

        Returns:
            Tensor[B, m, O, C, kh, kw]: one filter per sample and region.
        """
        pooled = F.adaptive_avg_pool2d(x, self.kernel_size)
        hidden = torch.sigmoid(F.conv2d(pooled, self.reduce_weight, self.reduce_bias))
        filters = F.conv2d(hidden, self.expand_weight, self.expand_bias, groups=self.region_num)
        return filters.view(x.shape[0], *self.shape, *self.kernel_size)


class BasisFilterGenerator(nn.Module):
    """The filter generator of the official DRConv code: a mixture of shared basis kernels.

    ``num_bases`` kernels are shared by all samples and regions; sample ``b`` and region ``j`` mix
    them with coefficients ``2 * sigmoid(fc(GAP(x)))[b, j] / num_bases``. It adds ``num_bases``
    times the parameters of a plain conv, where the paper's generator adds ``hidden`` times.

    Args:
        in_channels (int): C, input channels of the DRConv.
        out_channels (int): O, output channels of the DRConv.
        kernel_size (Tuple[int, int]): (kh, kw) of the generated filters.
        region_num (int): m, number of regions (filters per sample).
        num_bases (int): number of shared basis kernels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int, num_bases: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        self.num_bases = num_bases
        self.shape = (region_num, out_channels, in_channels, *kernel_size)
        self.bases = nn.Parameter(torch.empty(num_bases, out_channels, in_channels, *kernel_size))
        self.routing_weight = nn.Parameter(torch.empty(region_num * num_bases, in_channels))
        self.routing_bias = nn.Parameter(torch.empty(region_num * num_bases))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The coefficients start near 1/num_bases, so a filter starts as the mean of the bases;
        # scale the bases so that this mean has a variance-preserving size.
        std = _target_std(self.shape[2], self.kernel_size) * math.sqrt(self.num_bases)
        bound = math.sqrt(3.0) * std
        nn.init.uniform_(self.bases, -bound, bound)
        # Small routing weights, as the official code, keep the mixtures close at the start.
        nn.init.normal_(self.routing_weight, std=0.01)
        nn.init.zeros_(self.routing_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Generates the filters.

        Args:
            x (Tensor[B, C, H, W]): input of the DRConv.

        Returns:
            Tensor[B, m, O, C, kh, kw]: one filter per sample and region.
        """
        logits = F.linear(x.mean(dim=(2, 3)), self.routing_weight, self.routing_bias)
        coefficients = 2.0 * torch.sigmoid(logits) / self.num_bases
        filters = coefficients.view(-1, self.num_bases) @ self.bases.view(self.num_bases, -1)
        return filters.view(x.shape[0], *self.shape)
