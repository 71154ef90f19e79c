"""Processes of one training: each one's share of the micro-batches, and values summed over them."""

import pytest

from lora_study import processes


def test_process_shares_interleave_so_they_cover_each_step_of_one_process_exactly():
    stream = list(range(12))  # micro-batches in the seed's order
    shares = [list(processes.shard(iter(stream), rank, 3)) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    # with 2 micro-batches per process per step, step 0 of the 3 processes is micro-batches 0-5:
    # what one process accumulating 6 reads at its step 0
    assert sorted(share[i] for share in shares for i in (0, 1)) == list(range(6))


def test_one_process_is_the_main_one_and_sums_to_itself(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert processes.is_main() and processes.world_size() == 1 and processes.threads() >= 1
    monkeypatch.setenv("RANK", "1")
    assert not processes.is_main()

    class One:
        num_processes = 1

    assert processes.summed(One(), [1.5, 2.0]) == [1.5, 2.0] and processes.gathered(One(), 3.0) == [3.0]


def test_processes_on_one_machine_share_its_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cores = len(__import__("os").sched_getaffinity(0))
    assert processes.threads() == max(1, cores // 2)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("LOCAL_WORLD_SIZE", str(4 * cores))
        assert processes.threads() == 1
