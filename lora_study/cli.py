"""The `lora-study` command. Each subcommand's flags are the fields of its config sections.

    lora-study prepare --dataset data.jsonl --seq-len 512
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from lora_study import data, evaluation, merging, registry, serving, sweep, training
from lora_study.config import (
    AdapterConfig,
    BaseModelConfig,
    DataConfig,
    EvaluateConfig,
    MergeConfig,
    PromoteConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
    VersionsConfig,
    flag,
    parse_sections,
)
from lora_study.errors import UserInputError


@dataclass(frozen=True)
class Command:
    help: str
    sections: tuple[type[BaseModel], ...]
    run: Callable[..., str | None]  # takes one config per section; returns the MLflow run id, if it made one


COMMANDS = {
    "prepare": Command(
        "Tokenize, split and pack a data set; log it to MLflow.",
        (DataConfig, BaseModelConfig),
        data.run_prepare,
    ),
    "train": Command(
        "Fine-tune one LoRA adapter; log its metrics and the adapter to MLflow.",
        (DataConfig, BaseModelConfig, AdapterConfig, TrainConfig),
        training.run_train,
    ),
    "evaluate": Command(
        "Measure an adapter against its base model: test perplexity, generation speed and quality.",
        (EvaluateConfig,),
        evaluation.run_evaluate,
    ),
    "sweep": Command(
        "Run an Optuna study over LoRA settings, one nested MLflow run per trial; register the best.",
        (DataConfig, BaseModelConfig, SweepConfig),
        sweep.run_sweep,
    ),
    "promote": Command(
        "Move an alias (champion) to a registered version that beats its holder; record why.",
        (PromoteConfig,),
        registry.run_promote,
    ),
    "versions": Command(
        "List a registered model's versions: aliases, base model, adapter shape, metrics.",
        (VersionsConfig,),
        registry.run_versions,
    ),
    "serve": Command(
        "Serve one model, or many adapters on one base, over HTTP (mlflow models serve).",
        (ServeConfig,),
        serving.run_serve,
    ),
    "merge": Command(
        "Merge an adapter into its base; check it answers as the adapter does; log it as an MLflow model.",
        (MergeConfig,),
        merging.run_merge,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        for section in command.sections:
            group = sub.add_argument_group(section.__name__, section.__doc__)
            for field_name, field in section.model_fields.items():
                if (field.json_schema_extra or {}).get("positional"):
                    group.add_argument(field_name, metavar=field_name.upper(), help=field.description,
                                       nargs=None if field.is_required() else "?", default=argparse.SUPPRESS)  # fmt: skip
                    continue
                boolean = field.annotation is bool
                group.add_argument(
                    flag(field_name),
                    dest=field_name,
                    default=argparse.SUPPRESS,  # unset flags take the config's default
                    nargs="?" if boolean else None,
                    const="true" if boolean else None,
                    metavar="BOOL" if boolean else field_name.upper(),
                    help=f"{field.description} ({'required' if field.is_required() else f'default: {field.default}'})",
                )
    return parser


def quiet_progress_bars() -> None:
    """Progress bars are for a terminal; in logs and CI they are noise."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = COMMANDS[args.pop("command")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not sys.stderr.isatty():
        quiet_progress_bars()
    try:
        run_id = command.run(*parse_sections(command.sections, args))
    except UserInputError as error:
        for problem in error.problems:
            print(f"lora-study: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lora-study: interrupted", file=sys.stderr)
        return 130
    if run_id:
        print(f"MLflow run {run_id}")
    return 0
