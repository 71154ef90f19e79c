"""The terminal: known noise silenced by its exact text and nothing else, no bars where nobody watches."""

import io
import logging
import warnings

from tqdm.auto import tqdm

from lora_study import console


def test_only_the_known_warnings_are_silenced():
    console.quiet_known_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        console.quiet_known_noise()  # catch_warnings reset the filters: as a fresh process has them
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
        )
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)  # another category shows
    assert [str(w.message) for w in caught] == [
        "`something_else` is deprecated",
        "`is_gradient_checkpointing` is deprecated",
    ]


def test_only_the_known_log_records_are_dropped(caplog):
    console.quiet_known_noise()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "offline")
        logger.warning("a kernel misbehaved")
    assert [record.getMessage() for record in caplog.records] == ["a kernel misbehaved"]


def test_bars_that_libraries_draw_are_off_where_nobody_watches():
    console.quiet_progress_bars()
    shown = io.StringIO()
    for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...", file=shown):
        pass
    assert shown.getvalue() == ""
    assert console.progress(3, "train", "step").disable  # pytest's stderr is no terminal
