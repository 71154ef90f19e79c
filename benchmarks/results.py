"""Where a benchmark's result goes: a section printed and appended to benchmarks/RESULTS.md,
headed by its title, the date, the machine and the command that measured it."""

import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}; torch {torch.__version__}"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return f"CPU {cpu}, {os.cpu_count()} cores; torch {torch.__version__}"


def record(title: str, command: str, setup: str, body: list[str]) -> None:
    """`setup` follows the command on the machine line: what the command ran, in words."""
    text = "\n".join(
        [
            f"## {title} ({time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {machine()}. Command: `{command}`{setup}",
            "",
            *body,
            "",
        ]
    )
    print(text)
    with RESULTS.open("a") as results:
        results.write("\n" + text)
