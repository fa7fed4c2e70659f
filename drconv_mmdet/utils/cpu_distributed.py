"""torch.distributed without CUDA, for the ``pytorch`` launcher on CPU machines."""
import torch
import torch.distributed as dist
from mmengine.config import Config

__all__ = ['setup_cpu_distributed']


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """Starts a gloo process group when launched with torchrun on a machine without CUDA.

    mmengine 0.10 assumes one GPU per process: its ``init_dist`` calls ``torch.cuda.set_device``
    and its DDP wrapper passes ``device_ids=[LOCAL_RANK]``, both of which fail on CPU. The Runner
    skips its own init once a process group exists, and takes the wrapper from
    ``model_wrapper_cfg``.

    Returns:
        bool: whether a CPU process group was started.
    """
    if launcher != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('model_wrapper_cfg', dict(type='MMDistributedDataParallel'))
    cfg.model_wrapper_cfg.update(device_ids=None, broadcast_buffers=False)
    cfg.model_wrapper_cfg.setdefault('find_unused_parameters',
                                     cfg.get('find_unused_parameters', False))
    return True
