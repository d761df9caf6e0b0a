"""Processes under torchrun: joining the group, sharing work by whole batches, gathering on rank 0.

``torchrun --nproc-per-node N -m train COMMAND ...`` starts N processes with RANK, LOCAL_RANK and
WORLD_SIZE set; ``start_processes`` joins them (NCCL on CUDA, Gloo on CPU). A command run without
torchrun is one process of rank 0 and needs no process group.
"""

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

Value = TypeVar("Value")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a command."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def start_processes(device: str | None) -> Processes:
    """Join the torchrun process group if there is one (NCCL on CUDA, Gloo on CPU).

    Args:
        device: "cpu", "cuda" (under torchrun: cuda:LOCAL_RANK) or None (cuda if available).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world_size == 1:
        return Processes(rank=0, world_size=1, device=wanted)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(wanted)
    dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    return Processes(rank=dist.get_rank(), world_size=world_size, device=wanted)


def stop_processes() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def batch_ranges(count: int, batch_size: int) -> list[range]:
    """The batches of images 0..count-1 in order: [0, b), [b, 2b), ...; the last may be shorter.

    Raises:
        ValueError: ``count`` < 0 or ``batch_size`` < 1.
    """
    if count < 0 or batch_size < 1:
        raise ValueError(f"need count >= 0 and batch_size >= 1, got {count} and {batch_size}")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def batches_of_rank(count: int, batch_size: int, rank: int, world_size: int) -> list[range]:
    """The whole batches process ``rank`` of ``world_size`` takes: batches rank, rank + world_size, ...

    Every image is in exactly one process's batches, and each batch is the one a single process
    would make (same images, same size), so a figure computed per batch is the same either way.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return batch_ranges(count, batch_size)[rank::world_size]


def gather_to_main(value: Value, processes: Processes) -> list[Value] | None:
    """Every process's ``value`` (picklable), in rank order, on rank 0; None on the other ranks.

    One process: ``[value]``, without any process group.
    """
    if processes.world_size == 1:
        return [value]
    gathered: list[Value] | None = [None] * processes.world_size if processes.is_main else None  # type: ignore[list-item]
    dist.gather_object(value, gathered, dst=0)
    return gathered
