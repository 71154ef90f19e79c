"""Peak memory of a block of work: what `peak_memory_mb` means, on each kind of device.

- CUDA: the peak of memory allocated by tensors (`torch.cuda.max_memory_allocated`), weights
  included, since the block started.
- CPU: how far the process's peak resident set size rose above its size when the block started
  (after freed heap memory is handed back to the OS).
  Linux resets the peak on writing 5 to /proc/self/clear_refs (proc(5)); where that is refused,
  a thread samples the resident size every 10 ms instead.
"""

import ctypes
import gc
import threading
from pathlib import Path

import torch

CUDA_PEAK_ALLOCATED = "cuda_peak_allocated"
CPU_PEAK_RSS_INCREASE = "cpu_peak_rss_increase"
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.megabytes` and `peak.kind`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = CUDA_PEAK_ALLOCATED if self.cuda else CPU_PEAK_RSS_INCREASE
        self.megabytes = 0.0
        self._sampler = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        _return_freed_memory()
        self._start = _status_kib("VmRSS")
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            self._sampler = _RssSampler()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.megabytes = torch.cuda.max_memory_allocated() / 2**20
        elif self._sampler is not None:
            self.megabytes = max(0, self._sampler.stop() - self._start) / 1024
        else:
            self.megabytes = max(0, _status_kib("VmHWM") - self._start) / 1024
        return False


def _return_freed_memory() -> None:
    """Free what is garbage and hand freed heap pages back to the OS, so that the block's rise is
    its own: glibc keeps freed pages resident, and a block reusing them (the next trial of a
    sweep, say) would otherwise seem to need almost nothing."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _RssSampler:
    def __init__(self):
        self.peak = _status_kib("VmRSS")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _status_kib("VmRSS"))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, _status_kib("VmRSS"))


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{STATUS} has no {field}")
