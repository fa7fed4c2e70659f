"""Filter generators of DRConv: per-sample, per-region filters predicted from the input.

Their layers are :class:`WeightAndBias` holders applied with the functional ops, not ``nn.Conv2d``
or ``nn.Linear`` modules: an outer ``init_cfg`` such as FPN's ``dict(type='Xavier',
layer='Conv2d')`` matches modules by class name and would otherwise overwrite their carefully
scaled initialisation. Every bias is a parameter named ``bias`` of its own small module, which is
what mmengine's ``paramwise_cfg`` (``bias_lr_mult``, ``bias_decay_mult``) looks for.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adaptive_pooling import adaptive_avg_pool2d

__all__ = ['WeightAndBias', 'PaperFilterGenerator', 'BasisFilterGenerator']


class WeightAndBias(nn.Module):
    """The ``weight`` and ``bias`` of one layer that its owner applies with a functional op.

    Args:
        weight_shape (Sequence[int]): shape of ``weight``; its first dimension is the number of
            outputs.
        bias (bool): hold a ``bias`` of shape ``(weight_shape[0],)``. Default: True.
    """

    def __init__(self, weight_shape: Sequence[int], bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0])) if bias else None

    def extra_repr(self) -> str:
        return f'weight_shape={tuple(self.weight.shape)}, bias={self.bias is not None}'


def _filter_std(filter_std: Optional[float], in_channels: int, kernel_size: Tuple[int,
                                                                                  int]) -> float:
    """``filter_std``, or the std of a variance-preserving filter for a conv with this fan-in."""
    if filter_std is not None:
        return filter_std
    return 1.0 / math.sqrt(in_channels * kernel_size[0] * kernel_size[1])


def _conv_weight(weight: Tensor, shape: Tuple[int, ...], like: Tensor) -> Tensor:
    """``weight`` checked against ``shape``, on the device and in the dtype of ``like``."""
    if tuple(weight.shape) != shape:
        raise ValueError(f'weight must have shape (O, C, kh, kw) = {shape}, but got '
                         f'{tuple(weight.shape)}')
    return weight.to(device=like.device, dtype=like.dtype)


class PaperFilterGenerator(nn.Module):
    """The filter generator of the paper (Sec. 3.3, Fig. 2b).

    Adaptive average pooling of the input to ``kh x kw``, a 1x1 conv ``C -> hidden`` with sigmoid
    (``reduce``), then a 1x1 conv ``hidden -> m*O*C`` with ``groups=m`` and no activation
    (``expand``): each of the ``kh*kw`` pooled positions gives one tap of the ``m`` filters.

    With ``static_kernel`` a learned ``(O, C, kh, kw)`` kernel, shared by samples and regions, is
    added to the generated filters. The expand layer's bias is the same for every tap, so without
    it the generator cannot hold an arbitrary ``k x k`` kernel, e.g. a pretrained conv's
    (see :meth:`start_from`). It starts at zero, leaving the generator's initialisation as it is.

    Args:
        in_channels (int): C, input channels of the DRConv.
        out_channels (int): O, output channels of the DRConv.
        kernel_size (Tuple[int, int]): (kh, kw) of the generated filters.
        region_num (int): m, number of regions (filters per sample).
        hidden_channels (int): width of the hidden layer, a multiple of ``region_num``.
        static_kernel (bool): add a learned static kernel to the generated filters.
            Default: False.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Tuple[int, int],
                 region_num: int,
                 hidden_channels: int,
                 static_kernel: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        self.shape = (region_num, out_channels, in_channels)
        self.reduce = WeightAndBias((hidden_channels, in_channels, 1, 1))
        self.expand = WeightAndBias(
            (region_num * out_channels * in_channels, hidden_channels // region_num, 1, 1))
        if static_kernel:
            self.static_weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        else:
            self.register_parameter('static_weight', None)
        self.reset_parameters()

    @property
    def static_kernel(self) -> bool:
        return self.static_weight is not None

    def reset_parameters(self, filter_std: Optional[float] = None) -> None:
        """Initialises the generator so that its filters start with std ``filter_std``.

        Args:
            filter_std (float, optional): std of the generated filters at the start. Default:
                None, a variance-preserving size, ``1 / sqrt(C * kh * kw)``.
        """
        nn.init.kaiming_uniform_(self.reduce.weight, a=math.sqrt(5))
        nn.init.zeros_(self.reduce.bias)
        # The sigmoid outputs start near 0.5, so a filter is ~0.5 * sqrt(hidden/m) * std(expand).
        group_width = self.expand.weight.shape[1]
        std = _filter_std(filter_std, self.shape[2],
                          self.kernel_size) / (0.5 * math.sqrt(group_width))
        nn.init.normal_(self.expand.weight, std=std)
        nn.init.zeros_(self.expand.bias)
        if self.static_kernel:
            nn.init.zeros_(self.static_weight)

    @torch.no_grad()
    def start_from(self, weight: Tensor) -> None:
        """Makes every generated filter equal ``weight``, whatever the input.

        The reduce layer is zeroed, so the hidden layer is 0.5 everywhere, and the expand layer's
        bias cancels what its (random) weights make of that constant: every region's filter is
        ``weight`` (taken by the static kernel when there is one). Every parameter still gets a
        gradient: the expand weights are not zero, so the reduce layer's gradient is not.

        Args:
            weight (Tensor[O, C, kh, kw]): the kernel to start from.
        """
        weight = _conv_weight(weight, (*self.shape[1:], *self.kernel_size), self.expand.bias)
        if self.static_kernel:
            self.static_weight.copy_(weight)
            target = torch.zeros_like(self.expand.bias)
        elif self.kernel_size == (1, 1):
            target = weight.reshape(-1).repeat(self.region_num)
        else:
            raise ValueError(
                f'the paper generator cannot start from a {self.kernel_size} kernel: its expand '
                'bias is shared by the taps. Use generator=\'basis\' or static_kernel=True')
        nn.init.zeros_(self.reduce.weight)
        nn.init.zeros_(self.reduce.bias)
        hidden = 0.5 * self.expand.weight.flatten(1).sum(dim=1)
        self.expand.bias.copy_(target - hidden)

    def forward(self, x: Tensor) -> Tensor:
        """Generates the filters.

        Args:
            x (Tensor[B, C, H, W]): input of the DRConv.

        Returns:
            Tensor[B, m, O, C, kh, kw]: one filter per sample and region.
        """
        pooled = adaptive_avg_pool2d(x, self.kernel_size)
        hidden = torch.sigmoid(F.conv2d(pooled, self.reduce.weight, self.reduce.bias))
        filters = F.conv2d(hidden, self.expand.weight, self.expand.bias, groups=self.region_num)
        filters = filters.view(x.shape[0], *self.shape, *self.kernel_size)
        if self.static_kernel:
            filters = filters + self.static_weight
        return filters


class BasisFilterGenerator(nn.Module):
    """The filter generator of the official DRConv code: a mixture of shared basis kernels.

    ``num_bases`` kernels are shared by all samples and regions; sample ``b`` and region ``j`` mix
    them with coefficients ``2 * sigmoid(routing(GAP(x)))[b, j] / num_bases``. It adds
    ``num_bases`` times the parameters of a plain conv, where the paper's generator adds
    ``hidden`` times.

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
        self.routing = WeightAndBias((region_num * num_bases, in_channels))
        self.reset_parameters()

    def reset_parameters(self, filter_std: Optional[float] = None) -> None:
        """Initialises the generator so that its filters start with std ``filter_std``.

        Args:
            filter_std (float, optional): std of the generated filters at the start. Default:
                None, a variance-preserving size, ``1 / sqrt(C * kh * kw)``.
        """
        # The coefficients start near 1/num_bases, so a filter starts as the mean of the bases.
        std = _filter_std(filter_std, self.shape[2], self.kernel_size) * math.sqrt(self.num_bases)
        bound = math.sqrt(3.0) * std
        nn.init.uniform_(self.bases, -bound, bound)
        # Small routing weights, as the official code, keep the mixtures close at the start.
        nn.init.normal_(self.routing.weight, std=0.01)
        nn.init.zeros_(self.routing.bias)

    @torch.no_grad()
    def start_from(self, weight: Tensor) -> None:
        """Makes every generated filter equal ``weight``, whatever the input.

        The routing layer is zeroed, so every coefficient is ``2 * sigmoid(0) / n = 1/n`` and a
        filter is the mean of the bases. The bases are ``weight`` plus zero-mean differences
        (the current bases less their mean, scaled to a plain conv's size): their mean is
        ``weight``, and they differ. Equal bases would get equal gradients forever, every region
        would stay a multiple of ``weight`` and the mixture would never learn.

        Args:
            weight (Tensor[O, C, kh, kw]): the kernel to start from.
        """
        weight = _conv_weight(weight, self.shape[1:], self.bases)
        spread = self.bases - self.bases.mean(dim=0, keepdim=True)
        self.bases.copy_(weight + spread / math.sqrt(self.num_bases))
        nn.init.zeros_(self.routing.weight)
        nn.init.zeros_(self.routing.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Generates the filters.

        Args:
            x (Tensor[B, C, H, W]): input of the DRConv.

        Returns:
            Tensor[B, m, O, C, kh, kw]: one filter per sample and region.
        """
        logits = F.linear(x.mean(dim=(2, 3)), self.routing.weight, self.routing.bias)
        coefficients = 2.0 * torch.sigmoid(logits) / self.num_bases
        filters = coefficients.view(-1, self.num_bases) @ self.bases.view(self.num_bases, -1)
        return filters.view(x.shape[0], *self.shape)
