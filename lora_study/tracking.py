"""MLflow names and the run of one stage.

Every metric, param, tag and artifact path lora-study writes is named here, once, so that
`train`, `evaluate`, `sweep` and `registry` read exactly what the others wrote.
"""

from contextlib import contextmanager

import mlflow

SPLITS = ("train", "validation", "test")

# --- tags ----------------------------------------------------------------------------------
TAG_STAGE = "lora_study.stage"  # prepare | train | evaluate | sweep | merge
TAG_ERROR = "lora_study.error"  # why a run FAILED or was KILLED, in one line

# --- params (besides the config fields, which are logged under their own names) -------------
PARAM_BASE_MODEL_SHA256 = "base_model_sha256"
PARAM_BASE_MODEL_REVISION = "base_model_revision"
PARAM_TOKENIZER_DIGEST = "tokenizer_digest"
PARAM_DATASET_DIGEST = "dataset_digest"  # of the prepared token rows: same digest, same data
PARAM_SOURCE_DIGEST = "source_digest"  # of the raw documents read
PARAM_DETECTED_FORMAT = "detected_format"

# --- metrics of `prepare`, one per split ----------------------------------------------------
METRIC_DOCUMENTS = "{split}_documents"
METRIC_TOKENS = "{split}_tokens"  # tokens in the packed rows
METRIC_LOSS_TOKENS = "{split}_loss_tokens"  # of those, the tokens that carry loss
METRIC_ROWS = "{split}_rows"
METRIC_TRUNCATED_DOCUMENTS = "truncated_documents"
METRIC_DROPPED_DOCUMENTS = "dropped_documents"

# --- metrics of `train` ----------------------------------------------------------------------
# over steps
METRIC_TRAIN_LOSS = "train_loss"
METRIC_LEARNING_RATE = "learning_rate"
METRIC_TOKENS_PER_S = "tokens_per_s"  # real (non-padding) tokens of the step over its time
# at every `eval_every` steps and at the end
METRIC_EVAL_LOSS = "eval_loss"  # token-weighted mean over the validation split
METRIC_EVAL_PERPLEXITY = "eval_perplexity"
# once, at the end
METRIC_TRAIN_TOKENS_PER_S = "train_tokens_per_s"  # real tokens over the time of the steps
METRIC_PEAK_MEMORY_MB = "peak_memory_mb"  # see TAG_MEMORY_KIND and lora_study.memory
METRIC_MODEL_MEMORY_MB = "model_memory_mb"  # the loaded base with its adapter
METRIC_TRAINABLE_PARAMS = "trainable_params"
METRIC_TOTAL_PARAMS = "total_params"
METRIC_TRAINABLE_PERCENT = "trainable_percent"
METRIC_ADAPTER_SIZE_MB = "adapter_size_mb"
METRIC_TRAIN_RUNTIME_S = "train_runtime_s"  # the training loop, evaluations included
TAG_MEMORY_KIND = "memory_kind"
PARAM_STEPS = "steps"  # optimizer steps actually planned (from max_steps or epochs)
PARAM_AUTOCAST_DTYPE = "autocast_dtype"
PARAM_DEVICE = "device"

# --- metrics of `evaluate` ---------------------------------------------------------------------
# perplexity over the test split, with the adapter and, on the same tokens, without it
METRIC_TEST_LOSS = "test_loss"
METRIC_TEST_PERPLEXITY = "test_perplexity"
METRIC_BASE_TEST_PERPLEXITY = "base_test_perplexity"
METRIC_PERPLEXITY_IMPROVEMENT_PCT = "perplexity_improvement_pct"  # 100 * (1 - ppl / base ppl)
# greedy generation over the prompt suite, one request at a time
METRIC_GEN_TOKENS_PER_S = "gen_tokens_per_s"  # new tokens over the time of the requests
METRIC_GEN_LATENCY_P50_MS = "gen_latency_p50_ms"
METRIC_GEN_LATENCY_P95_MS = "gen_latency_p95_ms"
METRIC_FIRST_TOKEN_LATENCY_MS = "first_token_latency_ms"  # median
METRIC_ROUGE_L = "rougeL"  # mean ROUGE-L F1 against the references, where there are any
METRIC_BASE_ROUGE_L = "base_rougeL"
BASE_PREFIX = "base_"  # the generation metrics again, of the base model: base_gen_tokens_per_s
# with --merged: the adapter merged into the base weights, against the unmerged adapter
MERGED_PREFIX = "merged_"  # the generation metrics again, merged: merged_gen_tokens_per_s
METRIC_MERGED_MAX_LOGPROB_DIFF = "merged_max_logprob_diff"  # of the target tokens of a test batch
METRIC_MERGED_LOSS_DIFF_PCT = "merged_loss_diff_pct"  # of the test loss
METRIC_MERGED_MATCHES = "merged_matches"  # 1 when the loss difference is within tolerance
METRIC_MERGED_OUTPUTS_MATCH_PCT = "merged_outputs_match_pct"  # identical greedy answers
METRIC_MERGED_SPEEDUP = "merged_speedup"  # merged gen_tokens_per_s over the unmerged one
METRIC_EVAL_PEAK_MEMORY_MB = "eval_peak_memory_mb"  # same kinds as peak_memory_mb
# an evaluate run names what it evaluated; a registered version names its evaluate run
TAG_EVALUATED_MODEL_URI = "lora_study.model_uri"
TAG_EVALUATED_RUN_ID = "lora_study.source_run_id"
TAG_EVALUATED_REGISTERED_MODEL = "lora_study.registered_model"
TAG_EVALUATED_VERSION = "lora_study.model_version"
TAG_EVALUATION_RUN_ID = "evaluation_run_id"

# --- `sweep`: a parent run per invocation, a nested run per trial ---------------------------
TAG_STUDY = "lora_study.study"  # on the parent, every trial run and every registered version
TAG_TRIAL_NUMBER = "trial_number"  # on trial runs (and registered versions)
TAG_TRIAL_STATE = "trial_state"  # COMPLETE | PRUNED | FAIL, on trial runs
PARAM_STORAGE = "optuna_storage"  # the Optuna storage URL the sweep used, password masked
METRIC_TRIALS = "{state}_trials"  # complete_trials, pruned_trials, failed_trials on the parent
METRIC_BEST = "best_{objective}"  # best_perplexity ... on the parent
PARAM_BEST = "best_{param}"  # the best trial's params, on the parent (single objective)
ARTIFACT_TRIALS = "trials.json"  # an MLflow table: one row per trial
ARTIFACT_SWEEP_CONFIG = "sweep_config"  # the folder holding the search-space file the study ran on
ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"

# --- artifacts -----------------------------------------------------------------------------
ARTIFACT_DATA = "data"  # the prepared splits, as `prepare` wrote them
ARTIFACT_PREVIEW = "preview.json"  # an MLflow table: a few decoded rows per split
ARTIFACT_ADAPTER = "adapter"  # the adapter as an MLflow model (lora_study.serving)
ARTIFACT_MERGED = "merged"  # the base with the adapter merged in, as an MLflow model (lora_study.merging)
ARTIFACT_GENERATIONS = "generations.json"  # an MLflow table: prompt, reference, base and adapter outputs


@contextmanager
def stage_run(stage: str, log_system_metrics: bool = False, **tags: str):
    """Start the stage's run (or continue the one `mlflow run` made); never leave it RUNNING.

    An exception ends the run FAILED and Ctrl-C ends it KILLED, each with the reason as a tag.
    """
    with mlflow.start_run(tags={TAG_STAGE: stage, **tags}, log_system_metrics=log_system_metrics) as run:
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.set_tag(TAG_ERROR, "interrupted (Ctrl-C)")
            mlflow.end_run("KILLED")
            raise
        except Exception as error:
            mlflow.set_tag(TAG_ERROR, f"{type(error).__name__}: {error}"[:5000])
            raise


def log_params(params: dict) -> None:
    """Log params the run does not hold yet.

    `mlflow run` logs the MLproject parameters itself, as typed (`false`, `256`); logging the
    parsed values again (`False`) would be refused as a change.
    """
    run = mlflow.active_run()
    held = mlflow.get_run(run.info.run_id).data.params
    mlflow.log_params({key: _param_text(value) for key, value in params.items() if key not in held})


def param_value(text: str) -> str:
    """A param as it was given: `mlflow run` logs string parameters shell-quoted (`''` for empty)."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def _param_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
