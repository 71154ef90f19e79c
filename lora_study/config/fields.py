"""What every config shares: strictness, the fields several commands take (defined once), and
values read into typed configs at the edge, every problem reported at once, each naming its flag
(`seq_len` -> `--seq-len`)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lora_study.errors import UserInputError

# Unknown keys are errors (a typo must not silently fall back to a default); configs are values.
STRICT = ConfigDict(extra="forbid", frozen=True)


def flag(name: str) -> str:
    """The CLI flag of a config field."""
    return "--" + name.replace("_", "-")


def parse_sections(sections: tuple[type[BaseModel], ...], values: dict) -> tuple:
    """Build one config per section from flat `values`; raise every problem at once."""
    known = {name for section in sections for name in section.model_fields}
    problems = [f"{flag(key)}: unknown option" for key in values if key not in known]
    built = []
    for section in sections:
        own = {key: value for key, value in values.items() if key in section.model_fields}
        try:
            built.append(section.model_validate(own))
        except ValidationError as error:
            problems.extend(_describe(problem) for problem in error.errors())
    if problems:
        raise UserInputError(*problems)
    return tuple(built)


def _describe(problem: dict) -> str:
    message = problem["msg"].removeprefix("Value error, ")
    if not problem["loc"]:  # a model-level check: its message names the fields itself
        return message
    if problem["type"] == "missing":
        return f"{flag(str(problem['loc'][0]))}: required"
    return f"{flag(str(problem['loc'][0]))}: {message} (got {problem['input']!r})"


POSITIONAL = {"positional": True}  # a field given as `lora-study <command> VALUE`, not as a flag


# Fields that mean the same in several commands, defined once.
PreparedDataUri = Annotated[
    str,
    Field(
        description="Prepared data: `runs:/<prepare run id>` or its folder; empty prepares it here from "
        "--dataset and the other data options."
    ),
]
ForgettingData = Annotated[
    str,
    Field(
        description="Text outside the training data on which forgetting (loss delta and KL against the "
        "base) is measured: `self` (sampled from the base model), any --dataset source, or `none`."
    ),
]
Precision = Annotated[
    Literal["auto", "fp32", "bf16", "fp16"],
    Field(description="Autocast dtype; `auto` takes bf16 where the hardware has it, else fp32."),
]

# Early stopping and the best adapter (`early_stopping`), in `train` and in a sweep's trials.
EarlyStoppingPatience = Annotated[
    int,
    Field(
        ge=0,
        description="Stop training after N evaluations in a row without an improvement of more than "
        "--early-stopping-min-delta in validation loss; 0: off.",
    ),
]
EarlyStoppingMinDelta = Annotated[
    float,
    Field(ge=0, description="How much lower (nats) a validation loss must be than the best so far to improve on it."),
]
KeepBest = Annotated[
    bool,
    Field(
        description="Log the adapter as it was at its lowest validation loss after training began (the run's "
        "best_step), not as it is at the last step."
    ),
]


ServingTarget = Literal["mlflow", "vllm", "lorax"]  # the servers `servability` knows the limits of
