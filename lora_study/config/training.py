"""The settings of what trains: the base model, the data, the adapter, the optimization, and
one adapter per group (`--group-by`)."""

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from lora_study.config.fields import (
    STRICT,
    EarlyStoppingMinDelta,
    EarlyStoppingPatience,
    ForgettingData,
    KeepBest,
    Precision,
    PreparedDataUri,
)


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
    split_seed: int = Field(0, description="Seed of the document-level train/validation/test split.")
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


class TrainConfig(BaseModel):
    """The optimization: steps, batch, schedule, precision."""

    model_config = STRICT

    data: PreparedDataUri = ""
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
    early_stopping_patience: EarlyStoppingPatience = 0
    early_stopping_min_delta: EarlyStoppingMinDelta = 0.0
    keep_best: KeepBest = True
    forgetting_data: ForgettingData = "self"
    training_seed: int = Field(
        0,
        ge=0,
        description="Seed of the adapter's initial weights, dropout and batch order (`sweep` sets each trial's: "
        "--split-seed for explore trials, + 1 for replicates, + k for the k-th seed of a confirmation).",
    )

    @model_validator(mode="after")
    def _early_stopping_has_evaluations(self):
        if self.early_stopping_patience and not self.eval_every:
            raise ValueError(
                "`early_stopping_patience` counts evaluations during training, and `eval_every` is 0 (only at the "
                "end): set --eval-every N"
            )
        return self

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
