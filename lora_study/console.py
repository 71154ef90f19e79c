"""What the terminal shows: a line per step of a stage and per trial, a bar where a person
watches (a TTY), and none of the warnings a user of lora-study cannot act on.

Lines go to stderr, beside MLflow's and Optuna's own; stdout keeps the answer.
"""

import functools
import logging
import os
import sys
import warnings

from lora_study import processes

# Warnings the libraries print that no lora-study user can act on, each silenced by its category
# and the start of its text, where it is raised; every other warning still shows.
KNOWN_WARNINGS = (
    # peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecated (peft's to change)
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
# Log records likewise, by logger and the start of their message.
KNOWN_LOG_RECORDS = (
    # bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a faster 4-bit kernel from the
    # Hugging Face hub and says so when it cannot; its own kernel runs instead.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)


def quiet() -> None:
    """What every lora-study process does first: the known noise silenced, and bars off where
    nobody watches."""
    quiet_known_noise()
    if not watched():
        quiet_progress_bars()


def quiet_known_noise() -> None:
    """Silence exactly the known warnings and log records above, in this process."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for logger, start in KNOWN_LOG_RECORDS:
        logging.getLogger(logger).addFilter(_DropStartingWith(start))


class _DropStartingWith(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_progress_bars() -> None:
    """Progress bars are for a terminal; in logs and CI they are noise. Set before transformers
    and huggingface_hub are imported, the environment is enough (nothing heavy is imported here)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # for processes this one starts
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "transformers.utils.logging" in sys.modules:  # imported already: tell it directly
        sys.modules["transformers.utils.logging"].disable_progress_bar()
    _disable_tqdm()


def _disable_tqdm() -> None:
    """Bars libraries draw with tqdm directly (transformers' GGUF conversion) off, as TQDM_DISABLE=1
    makes them; tqdm reads that variable only when imported, which MLflow has done by now. A bar
    asked for explicitly (`progress`) still decides for itself."""
    import tqdm.std

    init = tqdm.std.tqdm.__dict__["__init__"]  # tqdm's own partialmethod of its env overrides
    if not getattr(init, "keywords", {}).get("disable"):
        tqdm.std.tqdm.__init__ = functools.partialmethod(init, disable=True)


def watched() -> bool:
    """A person is watching stderr (a terminal), not a log file or CI."""
    return sys.stderr.isatty()


def say(line: str) -> None:
    """One line on stderr, above any progress bar; from the main process only, when there are several."""
    if not processes.is_main():
        return
    if watched():
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def progress(total: int, description: str, unit: str):
    """A progress bar on a terminal's stderr; a silent one elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, disable=not watched() or not processes.is_main(), leave=False)
