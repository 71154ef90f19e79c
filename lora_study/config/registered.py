"""The settings of the commands on what a study made: `promote`, `versions`, `serve`, `merge`,
`inspect` and `report`."""

from pydantic import BaseModel, Field, model_validator

from lora_study.config.fields import POSITIONAL, STRICT, Precision, PreparedDataUri, ServingTarget


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
    data: PreparedDataUri = ""
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
