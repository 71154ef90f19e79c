"""The settings of measuring adapters: `evaluate` one, `sweep` a study of many."""

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lora_study.config.fields import (
    STRICT,
    EarlyStoppingMinDelta,
    EarlyStoppingPatience,
    ForgettingData,
    KeepBest,
    Precision,
    PreparedDataUri,
)
from lora_study.config.training import AdapterConfig, TrainConfig
from lora_study.names import GENERATION_OBJECTIVES, METRIC_TEST_PERPLEXITY, OBJECTIVE_METRICS


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
    data: PreparedDataUri = ""
    n_trials: int = Field(5, gt=0, description="Finished trials (any state) the study holds when done.")
    timeout_min: float = Field(0, ge=0, description="Stop starting trials after this many minutes; 0: no limit.")
    max_steps: int = Field(4, gt=0, description="Optimizer steps per explore trial: the explore budget.")
    eval_every: int = Field(2, gt=0, description="Validation loss every N steps: what the pruner sees.")
    early_stopping_patience: EarlyStoppingPatience = 0  # with it, confirmations evaluate every --eval-every too
    early_stopping_min_delta: EarlyStoppingMinDelta = 0.0
    keep_best: KeepBest = True
    forgetting_data: ForgettingData = "self"
    objectives: str = Field(
        "perplexity",
        description="What to optimize, comma-separated: perplexity (validation), peak_memory_mb, "
        "trainable_params, forgetting (KL against the base), minimized; rougeL, exact_match (greedy answers "
        "against the reference answers of instruction or chat data), maximized; two or more keep a Pareto "
        "front. The recommendation rule reads the first one's test-split figure (perplexity's, unless a "
        "generation objective is first).",
    )
    objective_samples: int = Field(
        16,
        gt=0,
        description="Records of the validation split (of the test split, for confirmations) whose answers a "
        "generation objective scores: a fixed sample, seeded by --split-seed.",
    )
    objective_max_new_tokens: int = Field(
        64, gt=0, description="Tokens generated per answer (greedy) for a generation objective."
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
    explore_replicates: int = Field(
        2,
        ge=0,
        description="In the confirm phase, the first N complete sampled explore trials (by number, not by "
        "figure) trained again at the explore budget with the next seed: the noise of explore-budget figures, "
        "measured at their budget and split; 0: none.",
    )
    confirm_neighbours: str = Field(
        "rank,target_modules",
        description="Searched choices, comma-separated, moved one level down and one up from the best explore "
        "configuration: those neighbours are explored and confirmed too, with the same seeds and budget, so the "
        "report decides from matched pairs whether the cheaper level suffices or the larger one helps; empty: none.",
    )
    recommend: Literal["cheapest-within-se", "best"] = Field(
        "best",
        description="How the answer is chosen among confirmed configurations: the best mean test perplexity, "
        "or the cheapest within --within-se standard errors of it (benchmarks/RESULTS.md: the latter, with "
        "2 seeds, more often picks a configuration the ground truth puts beyond noise of the best).",
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
    storage_wait_s: float = Field(
        600.0,
        gt=0,
        description="Seconds a worker waits for an Optuna storage that went away (a database restart); "
        "past that it stops, its runs FAILED, and the same command resumes the study.",
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

    @model_validator(mode="after")
    def _neighbours_are_settings(self):
        known = set(AdapterConfig.model_fields) | set(TrainConfig.model_fields) | {"alpha_per_rank"}
        unknown = [name for name in self.neighbour_factors if name not in known]
        if unknown:
            raise ValueError(f"--confirm-neighbours: {', '.join(unknown)} is not a setting; e.g. rank,target_modules")
        return self

    @property
    def neighbour_factors(self) -> list[str]:
        return [name.strip() for name in self.confirm_neighbours.split(",") if name.strip()]

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

    @property
    def generation_objectives(self) -> list[str]:
        return [name for name in self.objective_names if name in GENERATION_OBJECTIVES]

    @property
    def rule_metric(self) -> str:
        """The test-split metric the recommendation rule reads: the first objective's, if it is a
        generation objective; else test perplexity (costs are not measured per seed on a split)."""
        return GENERATION_OBJECTIVES.get(self.objective_names[0], METRIC_TEST_PERPLEXITY)
