"""The `lora-study` command. Each subcommand's flags are the fields of its config sections.

lora-study prepare --dataset data.jsonl --seq-len 512
"""

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from lora_study.config import (
    AdapterConfig,
    BaseModelConfig,
    DataConfig,
    EvaluateConfig,
    MergeConfig,
    PromoteConfig,
    ReportConfig,
    ServeConfig,
    SweepConfig,
    TrainConfig,
    VersionsConfig,
    flag,
    parse_sections,
)
from lora_study.console import quiet_progress_bars
from lora_study.errors import UserInputError
from lora_study.stages.evaluate import run_evaluate
from lora_study.stages.merge import run_merge
from lora_study.stages.prepare import run_prepare
from lora_study.stages.promote import run_promote
from lora_study.stages.report import run_report
from lora_study.stages.serve import run_serve
from lora_study.stages.sweep import run_sweep
from lora_study.stages.train import run_train
from lora_study.stages.versions import run_versions


@dataclass(frozen=True)
class Command:
    help: str
    sections: tuple[type[BaseModel], ...]
    run: Callable[..., str | None]  # takes one config per section; returns the MLflow run id, if it made one


COMMANDS = {
    "prepare": Command(
        "Tokenize, split and pack a data set; log it to MLflow.",
        (DataConfig, BaseModelConfig),
        run_prepare,
    ),
    "train": Command(
        "Fine-tune one LoRA adapter; log its metrics and the adapter to MLflow.",
        (DataConfig, BaseModelConfig, AdapterConfig, TrainConfig),
        run_train,
    ),
    "evaluate": Command(
        "Measure an adapter against its base model: test perplexity, generation speed and quality.",
        (EvaluateConfig,),
        run_evaluate,
    ),
    "sweep": Command(
        "Run an Optuna study over LoRA settings, one nested MLflow run per trial; register the best.",
        (DataConfig, BaseModelConfig, SweepConfig),
        run_sweep,
    ),
    "report": Command(
        "Write a study's answer as one page (HTML and Markdown), from its runs; log it on the sweep's run.",
        (ReportConfig,),
        run_report,
    ),
    "promote": Command(
        "Move an alias (champion) to a registered version that beats its holder; record why.",
        (PromoteConfig,),
        run_promote,
    ),
    "versions": Command(
        "List a registered model's versions: aliases, base model, adapter shape, metrics.",
        (VersionsConfig,),
        run_versions,
    ),
    "serve": Command(
        "Serve one model, or many adapters on one base, over HTTP (mlflow models serve).",
        (ServeConfig,),
        run_serve,
    ),
    "merge": Command(
        "Merge an adapter into its base; check it answers as the adapter does; log it as an MLflow model.",
        (MergeConfig,),
        run_merge,
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
                    group.add_argument(
                        field_name,
                        metavar=field_name.upper(),
                        help=field.description,
                        nargs=None if field.is_required() else "?",
                        default=argparse.SUPPRESS,
                    )
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
