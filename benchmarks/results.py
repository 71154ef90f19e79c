"""Where a benchmark's result goes: a section printed and appended to benchmarks/RESULTS.md,
headed by its title, the date, the machine and the command that measured it."""

import time
from pathlib import Path

from lora_study.environment import machine

RESULTS = Path(__file__).with_name("RESULTS.md")


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
