"""The process group of the tools: gloo for torchrun on CPU machines, and an orderly shutdown."""
import torch
import torch.distributed as dist
from mmengine.config import Config

__all__ = ['setup_cpu_distributed', 'shutdown_distributed']


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


def shutdown_distributed() -> None:
    """Waits for every rank, then destroys the process group, after a run that succeeded.

    mmengine's Runner leaves the group alive until the interpreter exits. Then the rank that
    hosts the rendezvous store may leave first, and a gloo worker thread of another rank, still
    joinable while C++ statics are destroyed, aborts it ("terminate called without an active
    exception", SIGABRT), so torchrun reports a failed job after a run that finished. The barrier
    is skipped on failure paths by design: callers call this only once their run has returned.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
