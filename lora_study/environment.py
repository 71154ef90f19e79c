"""The machine and the packages a result was measured with, as a report and a benchmark state them."""

import importlib.metadata
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

# The packages whose versions a study's numbers depend on.
PACKAGES = ("lora-study", "torch", "transformers", "peft", "mlflow", "optuna", "bitsandbytes", "accelerate")


def machine() -> str:
    """The accelerator, or the CPU model and its cores; with torch's version."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}; torch {torch.__version__}"
    return f"CPU {_cpu_model()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB; torch {torch.__version__}"


def packages() -> dict[str, str]:
    """Python's version and each installed package of `PACKAGES`, by name."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def command() -> str:
    """This process's command line, as typed (the entry point's name for `lora-study`)."""
    program = Path(sys.argv[0]).name
    return shlex.join(["lora-study" if program == "lora-study" else f"python {sys.argv[0]}", *sys.argv[1:]])


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
