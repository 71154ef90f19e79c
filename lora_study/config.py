"""Typed configuration, one pydantic model per concern, validated at the edge.

A field's name is its CLI flag (`seq_len` -> `--seq-len`), its MLproject parameter and its
MLflow param; `tests/test_config.py` checks that MLproject, the CLI and these classes agree.
Every problem in a set of values is reported at once, each naming its flag.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lora_study.errors import UserInputError
from lora_study.tracking import OBJECTIVE_METRICS

# Unknown keys are errors (a typo must not silently fall back to a default); configs are values.
STRICT = ConfigDict(extra="forbid", frozen=True)


class BaseModelConfig(BaseModel):
    """Which base model to start from."""

    model_config = STRICT

    base_model: str = Field(
        "smollm2-135m",
        description="`smollm2-135m` (bundled, works offline), `tiny` (a 2-layer test model), "
        "a Hugging Face hub id, or a local directory with a transformers checkpoint.",
    )
    trust_remote_code: bool = Field(
        False, description="Let a hub model run its own Python code. Off unless you trust it."
    )


class DataConfig(BaseModel):
    """Where the documents come from and how they become token blocks (`prepare`)."""

    model_config = STRICT

    dataset: str = Field(
        "python-docs",
        description="`python-docs` (the stdlib's pydoc_data.topics), a local .jsonl/.json/.csv/"
        ".parquet/.txt file, or a Hugging Face hub dataset id.",
    )
    format: Literal["auto", "text", "instruction", "chat"] = Field(
        "auto",
        description="How records read: plain `text`, alpaca-style `instruction` records, or "
        "`chat` records with `messages`; `auto` detects it from the columns.",
    )
    text_column: str = Field("text", description="Column holding the text for `text` data.")
    split: str = Field("train", description="Split of a hub dataset to read.")
    max_samples: int = Field(0, ge=0, description="Read only the first N documents; 0 reads all.")
    seq_len: int = Field(256, gt=0, description="Tokens per packed training row.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of documents held out for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of documents held out for test.")
    seed: int = Field(0, description="Seed of the document-level train/validation/test split.")
    decontaminate_ngram: int = Field(
        50,
        ge=0,
        description="Take out of training every span of N tokens that also occurs in validation or "
        "test (text is cut around it, an instruction or chat record is dropped); 0: off.",
    )
    group_by: str = Field(
        "",
        description="A column naming each record's group: each group is split by document on its own, and "
        "`train` fits one adapter per group; empty: one data set.",
    )

    @model_validator(mode="after")
    def _train_split_is_left(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "`val_fraction` + `test_fraction` must stay below 0.9 so that training keeps "
                f"documents (got {self.val_fraction} + {self.test_fraction})"
            )
        return self


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


class AdapterConfig(BaseModel):
    """The LoRA adapter: its shape, where it goes, and how the base under it is stored."""

    model_config = STRICT

    rank: int = Field(8, gt=0, description="LoRA rank r: the width of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha/r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: str = Field(
        "qv",
        description="Modules to adapt: a preset (q, v, qv, qkvo, attention, mlp, all-linear) or "
        "comma-separated module names.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha/sqrt(r).")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude beside the LoRA direction.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Store the base in 8-bit or 4-bit NF4 (QLoRA) with bitsandbytes."
    )


# Fields that mean the same in several commands, defined once.
PreparedData = Annotated[
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


class TrainConfig(BaseModel):
    """The optimization: steps, batch, schedule, precision."""

    model_config = STRICT

    data: PreparedData = ""
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    max_steps: int = Field(0, ge=0, description="Optimizer steps; 0 trains for --epochs instead.")
    epochs: float = Field(1.0, ge=0, description="Passes over the training rows, if --max-steps is 0.")
    batch_size: int = Field(8, gt=0, description="Rows per forward pass.")
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    precision: Precision = "auto"
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, more time."
    )
    eval_every: int = Field(
        20, ge=0, description="Evaluate on the validation split every N steps (0: only at the end)."
    )
    forgetting_data: ForgettingData = "self"

    @model_validator(mode="after")
    def _some_training_is_asked_for(self):
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError("`max_steps` and `epochs` are both 0: set --max-steps N or --epochs N")
        return self


class GroupsConfig(BaseModel):
    """With --group-by: which groups `train` fits an adapter for, and where they are registered."""

    model_config = STRICT

    groups: str = Field("", description="The groups to train, comma-separated values; empty: every group.")
    registered_model: str = Field(
        "",
        description="Registry name of the groups' adapters, each with the alias group-<value>; empty: "
        "lora-study-<base model>-<group-by column>.",
    )

    @property
    def chosen(self) -> list[str]:
        return [value.strip() for value in self.groups.split(",") if value.strip()]


class EvaluateConfig(BaseModel):
    """What to evaluate, on which data and prompts, and how."""

    model_config = STRICT

    model_uri: str = Field(
        "",
        description="The adapter: `runs:/<id>/adapter`, `models:/<name>/<version>`, "
        "`models:/<name>@<alias>`, or `base:<base model>` for a base model alone.",
    )
    data: str = Field(
        "",
        description="Prepared data (`runs:/<prepare run id>` or its folder); empty: the data "
        "the adapter was trained on (for `base:`, the default python-docs).",
    )
    prompts: str = Field(
        "",
        description="A file of prompts: one per line (.txt), or JSONL with `prompt` and "
        "optional `reference`; empty: prompts from the test split.",
    )
    max_prompts: int = Field(16, ge=0, description="Prompts to generate for; 0 skips generation.")
    max_new_tokens: int = Field(64, gt=0, description="Tokens to generate per prompt (greedy).")
    merged: bool = Field(
        False,
        description="Also evaluate the adapter merged into the base weights, and check "
        "that it matches the unmerged adapter.",
    )
    batch_size: int = Field(8, gt=0, description="Rows per forward pass for perplexity.")
    precision: Precision = "auto"
    forgetting_data: ForgettingData = "self"

    @model_validator(mode="after")
    def _a_model_is_named(self):
        if not self.model_uri:
            raise ValueError(
                "`model_uri` is required: --model-uri runs:/<run id>/adapter, models:/<name>/<version>, "
                "models:/<name>@<alias> or base:<base model>"
            )
        return self


class SweepConfig(BaseModel):
    """The Optuna study: its search space, budget, storage, workers and registry."""

    model_config = STRICT

    config: str = Field(
        "configs/sweep/default.yaml",
        description="Search-space YAML (sampler and space); also rank.yaml, modules.yaml, "
        "quantization.yaml in configs/sweep/.",
    )
    data: PreparedData = ""
    n_trials: int = Field(5, gt=0, description="Finished trials (any state) the study holds when done.")
    timeout_min: float = Field(0, ge=0, description="Stop starting trials after this many minutes; 0: no limit.")
    max_steps: int = Field(4, gt=0, description="Optimizer steps per explore trial: the explore budget.")
    eval_every: int = Field(2, gt=0, description="Validation loss every N steps: what the pruner sees.")
    forgetting_data: ForgettingData = "self"
    objectives: str = Field(
        "perplexity",
        description="What to minimize, comma-separated: perplexity (validation), peak_memory_mb, "
        "trainable_params, forgetting (KL against the base); two or more keep a Pareto front.",
    )
    pruner: Literal["hyperband", "median", "none"] = Field(
        "hyperband",
        description="Stop trials whose validation loss falls behind (single objective only): hyperband "
        "(successive halving over the step budget) or median.",
    )
    confirm_top: int = Field(
        -1,
        ge=-1,
        description="Distinct best configurations of the explore phase to confirm with seeds on the test "
        "split; 0 skips the phase; -1: 2 for the embedded default data, else 3.",
    )
    confirm_steps: int = Field(0, ge=0, description="Optimizer steps of a confirmation run; 0: 3x --max-steps.")
    confirm_seeds: int = Field(2, gt=0, description="Seeds each confirmed configuration is trained with.")
    recommend: Literal["cheapest-within-se", "best"] = Field(
        "cheapest-within-se",
        description="How the answer is chosen among confirmed configurations: the cheapest within "
        "--within-se standard errors of the best mean test perplexity, or the best mean.",
    )
    within_se: float = Field(1.0, ge=0, description="Standard errors of the best mean that count as a tie.")
    study_name: str = Field(
        "", description="Optuna study; the same name resumes it. Empty: from the config, base model and data."
    )
    storage: str = Field(
        "",
        description="Optuna storage URL (postgresql://... for many workers or machines); empty: "
        "sqlite optuna.db beside the MLflow store.",
    )
    n_workers: int = Field(1, gt=0, description="Worker processes on this machine sharing the study.")
    registered_model: str = Field(
        "", description="Registry name for the best adapters; empty: lora-study-<base model>."
    )
    promote: bool = Field(False, description="Move alias `champion` to the new best if it beats the current champion.")

    @model_validator(mode="after")
    def _objectives_are_known(self):
        names = [name.strip() for name in self.objectives.split(",")]
        unknown = [name for name in names if name not in OBJECTIVE_METRICS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"`objectives`: {self.objectives!r} must be distinct names among {', '.join(OBJECTIVE_METRICS)}"
            )
        return self

    @model_validator(mode="after")
    def _forgetting_is_measured_to_be_minimized(self):
        if "forgetting" in self.objective_names and self.forgetting_data == "none":
            raise ValueError("`objectives` forgetting needs it measured: drop --forgetting-data none")
        return self

    @model_validator(mode="after")
    def _confirmation_trains_longer(self):
        if self.confirm_steps and self.confirm_steps < 3 * self.max_steps:
            raise ValueError(
                f"`confirm_steps` {self.confirm_steps} must be at least 3x --max-steps ({3 * self.max_steps}), "
                "or 0 for exactly that"
            )
        return self

    @property
    def steps_to_confirm(self) -> int:
        return self.confirm_steps or 3 * self.max_steps

    @field_validator("study_name")
    @classmethod
    def _no_quotes(cls, name: str) -> str:
        if any(quote in name for quote in "'\"`"):  # MLflow's run filters quote the name
            raise ValueError("must not contain quotes; use letters, digits, `-`, `_` and `.`")
        return name

    @property
    def objective_names(self) -> list[str]:
        return [name.strip() for name in self.objectives.split(",")]


POSITIONAL = {"positional": True}  # a field given as `lora-study <command> VALUE`, not as a flag


ServingTarget = Literal["mlflow", "vllm", "lorax"]  # the servers `servability` knows the limits of


class PromoteConfig(BaseModel):
    """Which registered version to promote to which alias, and why."""

    model_config = STRICT

    registered_model: str = Field(description="The registered model.", json_schema_extra=POSITIONAL)
    version: int = Field(gt=0, description="The version to promote.")
    alias: str = Field("champion", min_length=1, description="The alias to move to it.")
    force: bool = Field(
        False,
        description="Move the alias even if the version is not better, unevaluated, or measured on other test data.",
    )
    reason: str = Field("", description="Why, recorded on the version.")
    target: ServingTarget = Field(
        "mlflow",
        description="The server the alias's version must load on: `mlflow` (mlflow models serve, lora-study serve), "
        "`vllm` or `lorax`; a version it cannot load is refused, with the reason, even with --force.",
    )


class VersionsConfig(BaseModel):
    """Which registered model to list."""

    model_config = STRICT

    registered_model: str = Field(description="The registered model.", json_schema_extra=POSITIONAL)


class ServeConfig(BaseModel):
    """What to serve (one model, or many adapters on one base) and where."""

    model_config = STRICT

    model_uri: str = Field(
        "",
        description="The model to serve: runs:/<id>/adapter, models:/<name>@<alias>, models:/<name>/<version> "
        "or a merged model.",
        json_schema_extra=POSITIONAL,
    )
    adapters: str = Field(
        "",
        description="Many adapters on one base instead: name@alias,name@version,... or a YAML list "
        "file; a request picks one with `adapter`, default the first.",
    )
    host: str = Field("127.0.0.1", description="The address to listen on; 0.0.0.0 for every interface.")
    port: int = Field(5001, gt=0, lt=65536, description="The port to listen on.")
    max_new_tokens_limit: int = Field(
        512, ge=64, description="The most new tokens one request may ask for (the server's bound)."
    )
    max_batch_size: int = Field(
        8, gt=0, description="The most prompts generated in one batch, across requests and adapters; 1: one at a time."
    )
    batch_wait_ms: int = Field(
        10, ge=0, description="How long a batch waits for more requests after its first (milliseconds)."
    )

    @model_validator(mode="after")
    def _one_thing_to_serve(self):
        if bool(self.model_uri) == bool(self.adapters):
            raise ValueError(
                "name one thing to serve: a model URI (lora-study serve models:/<name>@champion) or "
                "--adapters name1@champion,name2@3"
            )
        return self


class MergeConfig(BaseModel):
    """Which adapter to merge into its base, and how the result is checked and written."""

    model_config = STRICT

    model_uri: str = Field(
        description="The adapter: runs:/<id>/adapter, models:/<name>@<alias> or models:/<name>/<version>.",
        json_schema_extra=POSITIONAL,
    )
    data: PreparedData = ""
    max_prompts: int = Field(4, ge=0, description="Prompts whose greedy answers are compared, merged against not.")
    max_new_tokens: int = Field(32, gt=0, description="Tokens generated per compared prompt.")
    batch_size: int = Field(8, gt=0, description="Rows per forward pass for the test loss.")
    precision: Precision = "auto"
    output_dir: str = Field("", description="Also write the merged model here (a new or empty folder).")
    registered_model: str = Field("", description="Also register the merged model under this name.")


class InspectConfig(BaseModel):
    """Which adapter's update to read, what to compare it with, and whether to look for intruders."""

    model_config = STRICT

    model_uri: str = Field(
        description="The adapter: runs:/<id>/adapter, models:/<name>@<alias> or models:/<name>/<version>.",
        json_schema_extra=POSITIONAL,
    )
    compare: str = Field(
        "",
        description="Another adapter on the same modules: per module, how far their updates share their top "
        "directions (subspace similarity, Hu et al. 2021).",
    )
    intruders: bool = Field(
        False, description="Also count intruder dimensions per module (two dense SVDs per module: slower)."
    )
    intruder_top_k: int = Field(10, gt=0, description="Top singular vectors of W + dW examined for intruders.")
    intruder_threshold: float = Field(
        0.5, gt=0, lt=1, description="An intruder's largest |cosine| with any singular vector of W is below this."
    )


class ReportConfig(BaseModel):
    """Which study to report on, and where the page goes besides its sweep's run."""

    model_config = STRICT

    study: str = Field(
        description="The study: its name (as `lora-study sweep` printed it), runs:/<sweep run id>, or a version "
        "it registered (models:/<name>@<alias>, models:/<name>/<version>).",
        json_schema_extra=POSITIONAL,
    )
    output: str = Field("", description="Also write report.html, report.md and its figures into this folder.")
    ui_url: str = Field(
        "http://127.0.0.1:5000", description="The MLflow UI the report's links open (`mlflow ui` listens here)."
    )
