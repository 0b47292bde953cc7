"""One training over several processes, as `torchrun` starts them: which process does what.

`torchrun --nproc_per_node=N run.py ...` sets RANK, WORLD_SIZE and LOCAL_RANK for each process.
Every process trains on its share of each batch (DistributedDataParallel averages the gradients);
only rank 0 talks to MLflow and writes checkpoints. Without torchrun this is one process, rank 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tl.core.errors import TLError

T = TypeVar("T")


class Processes:
    """This process's place among those of one training (not a dataclass: Hydra's instantiate would
    turn a dataclass argument into a config)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes checkpoints and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether this training runs over several processes (torchrun)."""
        return self.world_size > 1

    def per_process_batch(self, batch_size: int) -> int:
        """`batch_size` is the global batch, split evenly over the processes."""
        if batch_size % self.world_size:
            raise TLError(
                f"batch_size={batch_size} does not split over {self.world_size} processes; "
                f"use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all processes (the values themselves on one process)."""
        if not self.distributed:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(totals)
        return totals.tolist()


def start(device: str) -> Processes:
    """Join the process group torchrun set up (gloo on CPUs, nccl on GPUs); one process without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    local_rank = int(os.environ["LOCAL_RANK"])
    gpu = torch.cuda.is_available() and device in ("auto", "cuda")
    if gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # With GPUs, nccl for the gradients and gloo for the small CPU tensors of summed metrics.
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
    return Processes(dist.get_rank(), world_size, local_rank)


def stop(processes: Processes) -> None:
    """Leave the process group (under torchrun), so that every process exits cleanly."""
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


class OtherRank:
    """Stands in for the tracker on every process but rank 0: only rank 0 logs to MLflow."""

    run_id = None

    def __enter__(self) -> OtherRank:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def main_only(processes: Processes, build: Callable[[], T]) -> T | OtherRank:
    """`build()` on rank 0; on every other process a stand-in that does nothing (only rank 0 logs)."""
    return build() if processes.is_main else OtherRank()
