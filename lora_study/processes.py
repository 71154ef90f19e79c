"""One training beyond one process: `torchrun` or `accelerate launch` start N copies of
`lora-study train`, and each learns its place from the environment they set (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE).

Data parallel, through accelerate's `Accelerator` (the process group: gloo on CPU, NCCL on CUDA;
the device; DDP wrapping; backward; skipping gradient sync within an accumulated step;
reductions). Every process reads its share of every global batch: the seed fixes one stream of
micro-batches, and process r takes micro-batches r, r + N, r + 2N, ... so N processes see the
same rows per step as one process accumulating N times as many. Only the main process (rank 0)
logs to MLflow and writes; the others are silent.
"""

import itertools
import os
from typing import TYPE_CHECKING

from lora_study.errors import UserInputError

if TYPE_CHECKING:  # torch itself is imported where used: the CLI imports this module, its quick commands no torch
    import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that logs, saves and speaks: the only one outside torchrun or accelerate launch."""
    return rank() == 0


def threads() -> int:
    """Torch threads per process: the cores this machine gives, shared by the processes on it."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    return max(1, len(os.sched_getaffinity(0)) // local)


DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU")  # accelerate's DistributedType names this loop runs under


def accelerator(where: "torch.device"):
    """accelerate's Accelerator for this process, data parallel only. Mixed precision stays
    lora-study's own autocast (and fp16 loss scaling), as does gradient accumulation: accelerate
    fixes one precision per process, and a sweep trains trials of different precisions in one
    process. Settings an `accelerate config` leaves in the environment are overridden, and one
    that asks for another kind of training (DeepSpeed, FSDP, ...) is refused."""
    from accelerate import Accelerator

    made = Accelerator(cpu=where.type == "cpu", mixed_precision="no", gradient_accumulation_steps=1)
    if made.distributed_type.name not in DATA_PARALLEL:
        raise UserInputError(
            f"accelerate is set up for {made.distributed_type.name}; lora-study trains data parallel only: "
            "launch with `torchrun` or `accelerate launch --multi_gpu` without DeepSpeed or FSDP"
        )
    return made


def shard(stream, of_rank: int | None = None, of_world: int | None = None):
    """This process's share of a stream of micro-batches: every N-th, from its rank."""
    return itertools.islice(stream, rank() if of_rank is None else of_rank, None, of_world or world_size())


def summed(accelerator, values: list[float]) -> list[float]:
    """Each value summed over the processes (itself alone in one process)."""
    import torch

    if accelerator.num_processes == 1:
        return values
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return total.tolist()


def gathered(accelerator, value: float) -> list[float]:
    """The value of every process, by rank."""
    import torch

    if accelerator.num_processes == 1:
        return [value]
    return accelerator.gather(torch.tensor([value], dtype=torch.float64, device=accelerator.device)).tolist()
