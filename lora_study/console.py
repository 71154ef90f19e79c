"""What the terminal shows: progress bars where a person watches, nothing of the kind in logs."""

import os
import sys


def quiet_progress_bars() -> None:
    """Progress bars are for a terminal; in logs and CI they are noise."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress(total: int, description: str, unit: str):
    """A progress bar on a terminal's stderr; a silent one elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, disable=not sys.stderr.isatty())
