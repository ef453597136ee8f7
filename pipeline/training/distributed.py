"""Data-parallel training under torchrun: this process's device, the process group, the DDP wrapper.

``bundles/multi_gpu_train.yaml`` (every bundle's ``configs/multi_gpu_train.yaml``) wires these::

    device: $pipeline.training.distributed.local_device()
    network: $pipeline.training.distributed.data_parallel(@network_def, @device)

torchrun sets ``RANK`` (global, over all nodes), ``LOCAL_RANK`` (on this node) and ``WORLD_SIZE``. A process
drives the GPU of its *local* rank: on the second node of two with 4 GPUs each, global rank 5 is ``cuda:1``.
"""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["data_parallel", "global_rank", "local_device", "shutdown", "unwrap", "world_size"]

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int = 0) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer (torchrun sets it)"
        ) from None


def global_rank() -> int:
    """This process's rank over all nodes (torchrun's ``RANK``; 0 when not launched by torchrun)."""
    return _env_int("RANK")


def world_size() -> int:
    """Number of processes over all nodes (torchrun's ``WORLD_SIZE``; 1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``LOCAL_RANK`` 0 when unset), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{_env_int('LOCAL_RANK')}")


def _join_process_group(device: torch.device) -> None:
    """Selects ``device`` (CUDA) and joins torchrun's process group once: NCCL for CUDA devices, gloo for the CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi-GPU training needs torchrun (e.g. torchrun --nproc_per_node 2 ...): {', '.join(missing)} not set"
        )
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def data_parallel(network: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``network`` moved to ``device`` and wrapped in DDP, after joining the process group if needed.

    DDP broadcasts rank 0's weights to every rank here, so all start alike. The wrapped module stays reachable
    as ``.module`` (see :func:`unwrap`); checkpoints saved by MONAI/ignite savers hold its weights without
    the ``module.`` prefix, so they load into the plain network.
    """
    _join_process_group(device)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network.to(device), device_ids=device_ids)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper, else ``network`` itself."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    return network


def shutdown() -> None:
    """Waits for every rank (rank 0 may still be writing its final checkpoint), then leaves the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        idist.sync()  # ignite caches the distributed context it saw; without this it keeps asking the dead group
