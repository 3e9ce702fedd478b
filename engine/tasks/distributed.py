"""Data-parallel training across processes (one per GPU) with torch.distributed.

Usage:

    python -m engine train --num-gpus 2 --train-data data/train.csv ...

re-executes itself as `accelerate launch --multi_gpu --num_processes 2 -m engine train ...`
(accelerate's torchrun launcher, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT); `torchrun --nproc_per_node 2 -m engine train ...` works the same. Each process
joins the group from those variables (nccl on GPUs, gloo on the CPU) and trains on its own GPU.

What stays the same as one process: the effective batch is per_device_batch x grad_accum x
processes; every optimizer step sees exactly the clips one process would (the same seeded
shuffle on every rank, rank r taking every world_size-th clip of the step); gradients are
summed over ranks weighted by answer tokens, so the step equals the one-process step at that
effective batch. Only rank 0 writes the run folder. A SIGTERM on any rank stops every rank
after the same step.

Not via `accelerate launch --cpu`: that launcher starts one process unless MPI is set up, so
CPU runs (the tests) use the same torchrun path with the gloo backend.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

import torch
import torch.distributed as dist

# "gloo" lets several ranks share one GPU (nccl refuses two ranks on one device): used to check the
# data-parallel path on a machine with a single GPU. Unset: nccl on GPUs, gloo on the CPU.
BACKEND_ENV = "ENGINE_DIST_BACKEND"


def world_size() -> int:
    """Processes in the group (1 when not launched data-parallel)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's rank (0 when not launched data-parallel)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def _gpu_index() -> int:
    """This rank's GPU: its local rank, wrapping around when ranks outnumber the visible GPUs."""
    return local_rank() % max(1, torch.cuda.device_count())


def is_main() -> bool:
    """Whether this process owns the run folder (the only one writing it)."""
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by a launcher (WORLD_SIZE set), so must not launch again."""
    return "WORLD_SIZE" in os.environ


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_env(device: str = "auto") -> bool:
    """Join the process group the launcher described; returns whether one is active.

    A no-op when WORLD_SIZE is unset or 1. `device` is the run's device setting: CUDA uses nccl
    and binds this process to GPU LOCAL_RANK, the CPU uses gloo ($ENGINE_DIST_BACKEND overrides).
    """
    if world_size() <= 1 or _active():
        return _active()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                           "data-parallel runs with `python -m engine train --num-gpus N` or torchrun")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(_gpu_index())
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")
    dist.init_process_group(backend, rank=rank(), world_size=world_size())
    return True


def device_for(device: str) -> str:
    """The device string this rank loads the model on: its own GPU when data-parallel."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return f"cuda:{_gpu_index()}" if cuda and _active() else device


def _tensor_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_grads(params: Iterable[torch.Tensor], weight: float) -> float:
    """Average gradients over ranks, each rank's weighted by its own `weight`; returns the total weight.

    Each rank's gradients are those of its mean loss over `weight` units (answer tokens). They
    are scaled back to sums, summed over ranks (one flat all-reduce) and divided by the global
    count, which is exactly the gradient of the mean over every rank's tokens. A rank with no
    clips this step passes weight 0 and gradients of None. Untouched with one process.
    """
    if not _active():
        return float(weight)
    params = list(params)
    device = _tensor_device()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.detach().reshape(-1).to(device, torch.float32) * float(weight) for g in grads]
                     + [torch.tensor([float(weight)], device=device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    total = float(flat[-1])
    if total > 0:
        flat /= total
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(p.device, g.dtype)
        offset += n
    return total


def weighted_mean(value: float, weight: float) -> float:
    """The mean over ranks of `value` weighted by `weight` (the step's loss over all answer tokens)."""
    if not _active():
        return value
    t = torch.tensor([value * weight, float(weight)], dtype=torch.float64, device=_tensor_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t[0] / t[1]) if t[1] > 0 else value


def max_over_ranks(value: int) -> int:
    """The largest `value` of any rank (a stop signal received by one rank stops all)."""
    if not _active():
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=_tensor_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])


def barrier() -> None:
    if _active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch_command(num_processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch` re-running `python -m engine ARGV` as `num_processes` data-parallel ranks.

    Always the torchrun launcher (--multi_gpu), also on the CPU: `--cpu` would start a single
    process without MPI. Port 0 lets accelerate pick a free port, so runs can share a machine.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1 (got {num_processes})")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", "0",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "engine", *argv]
