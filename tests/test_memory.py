"""`peak_memory_mb` on the CPU: the rise of a block's own allocations, also the second time."""

import torch

from lora_study.memory import CPU_PEAK_RSS_INCREASE, PeakMemory


def allocate_and_touch(megabytes: int) -> list[torch.Tensor]:
    # 1 MB pieces stay under glibc's mmap threshold: they come from (and go back to) the heap
    return [torch.ones(2**18) for _ in range(megabytes)]


def test_a_block_measures_what_it_holds():
    with PeakMemory(torch.device("cpu")) as peak:
        held = allocate_and_touch(400)
    assert peak.kind == CPU_PEAK_RSS_INCREASE
    assert 380 <= peak.megabytes <= 480
    del held


def test_a_repeated_block_measures_the_same_after_the_first_freed_its_memory():
    """A sweep's later trials reuse the heap earlier ones freed; they must not seem free."""
    sizes = []
    for _ in range(2):
        with PeakMemory(torch.device("cpu")) as peak:
            held = allocate_and_touch(300)
            del held
        sizes.append(peak.megabytes)
    assert sizes[1] >= 0.9 * sizes[0] and sizes[0] >= 280
