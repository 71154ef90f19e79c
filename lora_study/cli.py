"""The `lora-study` command. Each subcommand's flags are the fields of its config sections.

lora-study prepare --dataset data.jsonl --seq-len 512
"""

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass

from pydantic import BaseModel

from lora_study import console, processes
from lora_study.config import (
    AdapterConfig,
    BaseModelConfig,
    DataConfig,
    EvaluateConfig,
    GroupsConfig,
    InspectConfig,
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
from lora_study.errors import UserInputError
from lora_study.names import EXPERIMENT_NAME


@dataclass(frozen=True)
class Command:
    help: str
    sections: tuple[type[BaseModel], ...]
    # `lora_study.stages.<stage>.run_<stage>`, imported when the command runs: `--help`, a bad
    # flag, `versions` and `promote` answer without loading torch, transformers or MLflow's pyfunc.
    stage: str
    makes_runs: bool = True  # logs MLflow runs: takes --experiment-name, and its experiment is chosen first

    def run(self, *configs: BaseModel) -> str | None:
        """Run the stage with one config per section; the MLflow run id, if it made one."""
        module = importlib.import_module(f"lora_study.stages.{self.stage}")
        return getattr(module, f"run_{self.stage}")(*configs)


COMMANDS = {
    "prepare": Command(
        "Tokenize, split and pack a data set; log it to MLflow.",
        (DataConfig, BaseModelConfig),
        "prepare",
    ),
    "train": Command(
        "Fine-tune one LoRA adapter (or one per group, --group-by); log its metrics and the adapter to MLflow.",
        (DataConfig, BaseModelConfig, AdapterConfig, TrainConfig, GroupsConfig),
        "train",
    ),
    "evaluate": Command(
        "Measure an adapter against its base model: test perplexity, generation speed and quality.",
        (EvaluateConfig,),
        "evaluate",
    ),
    "sweep": Command(
        "Run an Optuna study over LoRA settings, one nested MLflow run per trial; register the best.",
        (DataConfig, BaseModelConfig, SweepConfig),
        "sweep",
    ),
    "inspect": Command(
        "Read what an adapter learned, module by module: its update's norm, singular values and ranks.",
        (InspectConfig,),
        "inspect",
    ),
    "report": Command(
        "Write a study's answer as one page (HTML and Markdown), from its runs; log it on the sweep's run.",
        (ReportConfig,),
        "report",
        makes_runs=False,  # it finds its study in any experiment; under `mlflow run`, MLflow made its run
    ),
    "promote": Command(
        "Move an alias (champion) to a registered version that beats its holder; record why.",
        (PromoteConfig,),
        "promote",
        makes_runs=False,
    ),
    "versions": Command(
        "List a registered model's versions: aliases, base model, adapter shape, metrics.",
        (VersionsConfig,),
        "versions",
        makes_runs=False,
    ),
    "serve": Command(
        "Serve one model, or many adapters on one base, over HTTP (mlflow models serve).",
        (ServeConfig,),
        "serve",
        makes_runs=False,
    ),
    "merge": Command(
        "Merge an adapter into its base; check it answers as the adapter does; log it as an MLflow model.",
        (MergeConfig,),
        "merge",
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
        if command.makes_runs:
            sub.add_argument(
                "--experiment-name",
                default=argparse.SUPPRESS,
                help=f"The MLflow experiment of its runs (default: MLFLOW_EXPERIMENT_NAME/_ID, else {EXPERIMENT_NAME})",
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    name = args.pop("command")
    command = COMMANDS[name]
    experiment_name = args.pop("experiment_name", None)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    console.quiet()
    try:
        if processes.world_size() > 1 and name != "train":
            raise UserInputError(
                f"{name} runs in one process: only train runs under torchrun or accelerate launch"
                + ("; a sweep scales out with --n-workers, or more sweeps on one --storage" if name == "sweep" else "")
            )
        configs = parse_sections(command.sections, args)
        if command.makes_runs and processes.is_main():  # under torchrun, only the main process logs
            from lora_study import tracking, tracking_outages  # MLflow, once the arguments are good

            tracking_outages.say_once_per_outage()
            tracking.use_experiment(experiment_name)
        run_id = command.run(*configs)
    except UserInputError as error:
        process = "" if processes.is_main() else f" (process {processes.rank()})"  # under torchrun
        for problem in error.problems:
            print(f"lora-study: error{process}: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lora-study: interrupted", file=sys.stderr)
        return 130
    if run_id:
        print(f"MLflow run {run_id}")
    return 0
