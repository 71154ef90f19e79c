"""Every MLflow name lora-study writes: metrics, params, tags, artifact paths, run names.

Named here, once, so that `train`, `evaluate`, `sweep` and `registry` read exactly what the others
wrote. Plain strings only: importing this module imports no MLflow (`lora-study --help` stays
quick). Params that are config fields are logged under the field's name (`rank`, `seq_len`); the
ones other modules read back by name have a constant here, and `tests/test_names.py` checks
that each is still a field.
"""

SPLITS = ("train", "validation", "test")

# --- the experiment ------------------------------------------------------------------------
# Where runs go when neither `--experiment-name`, MLFLOW_EXPERIMENT_NAME/_ID nor `mlflow run
# --experiment-name` says (`mlflow run` without it puts its run in `Default`, which stays so).
EXPERIMENT_NAME = "lora-study"
# The experiment's kind: "custom_model_development" is what MLflow's UI itself writes when a user
# picks "Machine learning" (runs, metrics, models) over "GenAI apps & agents" (traces, judges).
TAG_MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# MLflow 3.17.2's UI does not read that tag to pick its view (a feature flag, fixed on in its
# bundle, has it read the browser's choice instead): it opens the GenAI view unless the address
# says `?workflowType=machine_learning` or the user flipped its switch in that browser. The
# addresses lora-study prints say so.
UI_TRAINING_VIEW = "workflowType=machine_learning"

# --- run names: what each run is, as the UI lists it ------------------------------------------
RUN_NAME_PREPARE = "prepare {dataset} for {base_model}"
RUN_NAME_TRAIN = "train {adapter}"
RUN_NAME_EVALUATE = "evaluate {model_uri}"
RUN_NAME_MERGE = "merge {model_uri}"
RUN_NAME_REPORT = "report {study}"
RUN_NAME_SWEEP = "sweep {study}"
# A run made for a sweep (or `train --group-by`) that continued its parent, nested under it
RUN_NAME_INVOCATION = "{parent_name}: continued in this parent run"
RUN_NAME_TRIAL = "trial-{number} {adapter}"

# --- tags ----------------------------------------------------------------------------------
TAG_STAGE = "lora_study.stage"  # one of the STAGE_ values below
TAG_ERROR = "lora_study.error"  # why a run FAILED or was KILLED, in one line
STAGE_PREPARE, STAGE_TRAIN, STAGE_EVALUATE, STAGE_MERGE = "prepare", "train", "evaluate", "merge"
STAGE_TRAIN_GROUPS = "train_groups"  # the parent of `train --group-by`: a nested `train` run per group
STAGE_TRAIN_GROUPS_INVOCATION = "train_groups_invocation"  # a run `mlflow run` made for one that continued its parent
RUN_NAME_TRAIN_GROUPS = "train {adapter} by {group_by}"
STAGE_INSPECT = "inspect"  # what an adapter's update is, module by module (lora_study.updates)
RUN_NAME_INSPECT = "inspect {model_uri}"
ARTIFACT_UPDATES = "updates.json"  # an MLflow table: one row per adapted module, the COLUMN_ names below
ARTIFACT_SIMILARITY = "subspace_similarity.json"  # with --compare: one row per module both adapters adapt
ARTIFACT_UPDATE_PLOT = "plots/{name}_by_layer.png"  # relative_norm_by_layer, effective_rank_by_layer, ...
COLUMN_MODULE, COLUMN_LAYER, COLUMN_KIND = "module", "layer", "kind"
COLUMN_RANK, COLUMN_NORM, COLUMN_RELATIVE_NORM = "rank", "norm", "relative_norm"  # ||dW||_F, and over ||W||_F
COLUMN_EFFECTIVE_RANK, COLUMN_ENERGY_RANK = "effective_rank", "energy_rank_90"
COLUMN_SINGULAR_VALUES, COLUMN_INTRUDERS, COLUMN_SIMILARITY = "singular_values", "intruders", "subspace_similarity"
COLUMN_SIMILARITY_TOP1 = "subspace_similarity_top1"  # of the two updates' single top directions
COLUMN_SIMILARITY_CHANCE = "subspace_similarity_chance"  # what random subspaces of those sizes share: k / d_out
METRIC_UPDATE_EFFECTIVE_RANK = "update_effective_rank_median"  # over modules; on inspect runs and trials
METRIC_UPDATE_ENERGY_RANK = "update_energy_rank_90_median"
METRIC_UPDATE_RELATIVE_NORM_MAX = "update_relative_norm_max"
METRIC_UPDATE_RELATIVE_NORM_MEDIAN = "update_relative_norm_median"
METRIC_INTRUDERS = "intruder_dimensions"  # with --intruders: summed over modules
METRIC_SUBSPACE_SIMILARITY = "subspace_similarity_mean"  # with --compare: over the modules both adapt
RUN_NAME_GROUP = "group {group} {adapter}"
TAG_GROUPS_INPUTS = "lora_study.groups_inputs"  # on that parent: a digest of what trains (data, base, settings)
TAG_GROUP = "lora_study.group"  # on a group's run and registered version: the group's value
TAG_GROUP_KEY = "lora_study.group_key"  # ... and its key (`lora_study.data.groups`)
PARAM_GROUP = "group"  # on a group's run: its value (which of the prepared data's groups it trained on)
ARTIFACT_GROUP_ROW = "cross_group_row.json"  # on a group's run: its adapter's test perplexity on every group
ARTIFACT_CROSS_GROUP = "cross_group_perplexity.json"  # on the parent, a table: adapters x groups' test splits
ARTIFACT_CROSS_GROUP_PLOT = "plots/cross_group_improvement.png"  # ... as % better than the base, a heatmap
METRIC_TRAINED_GROUPS = "trained_groups"  # on that parent: groups with a finished run
METRIC_FAILED_GROUPS = "failed_groups"  # ... and those whose run failed this time
METRIC_OWN_GROUP_IMPROVEMENT_PCT = "own_group_improvement_pct"  # on the parent: mean over adapters, own group
METRIC_OTHER_GROUPS_IMPROVEMENT_PCT = "other_groups_improvement_pct"  # ... and on the other groups' test splits
STAGE_SWEEP = "sweep"  # a sweep's parent run: one per study, continued by every sweep of it
STAGE_SWEEP_INVOCATION = "sweep_invocation"  # a run `mlflow run` made for a sweep that continued its study's
TAG_STUDY_RUN = "lora_study.study_run"  # ... on it: the parent run it continued
TAG_HEARTBEAT = "lora_study.heartbeat"  # on a sweep's runs: when its process last said it was alive (epoch s)
TAG_PROPOSED_AT = "lora_study.proposed_at"  # when a run was proposed as a study's parent (time.time()): the first wins
TAG_STUDY_STORAGE = "lora_study.optuna_storage"  # on a parent: its study's storage (masked), with TAG_STUDY its key
STAGE_TRIAL = "trial"  # one explore trial's run, nested under its sweep
STAGE_CONFIRM = "confirm"  # one confirmation run (a configuration again, with a seed), nested too
RUN_NAME_CONFIRM = "confirm-trial-{config}-seed-{seed} {adapter}"

# --- params (besides the config fields, which are logged under their own names) -------------
PARAM_BASE_MODEL_SHA256 = "base_model_sha256"
PARAM_BASE_MODEL_REVISION = "base_model_revision"
PARAM_TOKENIZER_DIGEST = "tokenizer_digest"
PARAM_DATASET_DIGEST = "dataset_digest"  # of the prepared token rows: same digest, same data
PARAM_SOURCE_DIGEST = "source_digest"  # of the raw documents read
PARAM_DETECTED_FORMAT = "detected_format"
PARAM_DECONTAMINATION = "decontamination"  # how shared spans left the training side
PARAM_PROMPT_COUNT = "prompt_count"  # prompts an evaluation generated for
# config fields that other modules read back from a run by name
PARAM_BASE_MODEL = "base_model"
PARAM_DATA = "data"
PARAM_RANK = "rank"
PARAM_ALPHA = "alpha"
PARAM_DROPOUT = "dropout"
PARAM_TARGET_MODULES = "target_modules"
PARAM_QUANTIZATION = "quantization"
PARAM_USE_RSLORA = "use_rslora"
PARAM_USE_DORA = "use_dora"
PARAM_LEARNING_RATE = "learning_rate"
PARAM_DATASET = "dataset"
PARAM_FORMAT = "format"
PARAM_SEQ_LEN = "seq_len"
PARAM_SPLIT_SEED = "split_seed"  # the data split's seed
PARAM_SPLIT_SEED_BEFORE = "seed"  # its name in runs logged before 48b5ccf, read where old runs are read
PARAM_TRAINING_SEED = "training_seed"  # the seed that trained the run: a confirmation's own
PARAM_DECONTAMINATE_NGRAM = "decontaminate_ngram"
PARAM_MAX_STEPS = "max_steps"
PARAM_EARLY_STOPPING_PATIENCE, PARAM_KEEP_BEST = "early_stopping_patience", "keep_best"  # of `train` and of a sweep
PARAM_OBJECTIVES = "objectives"  # of a sweep, as are the next three
PARAM_PRUNER = "pruner"
PARAM_RECOMMEND = "recommend"
PARAM_WITHIN_SE = "within_se"

# --- metrics of `prepare`, one per split ----------------------------------------------------
METRIC_DOCUMENTS = "{split}_documents"
METRIC_TOKENS = "{split}_tokens"  # tokens in the packed rows
METRIC_LOSS_TOKENS = "{split}_loss_tokens"  # of those, the tokens that carry loss
METRIC_ROWS = "{split}_rows"
METRIC_TRUNCATED_DOCUMENTS = "truncated_documents"
METRIC_DROPPED_DOCUMENTS = "dropped_documents"
METRIC_CONTAMINATED_DOCUMENTS = "contaminated_documents"  # training documents that shared a held-out span
METRIC_REMOVED_TRAIN_TOKENS = "removed_train_tokens"  # tokens taken out of training for it
METRIC_GROUPS = "groups"  # with --group-by, on `prepare` runs: groups with data enough to train
METRIC_SKIPPED_GROUPS = "skipped_groups"  # ... and those without

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
METRIC_BEST_EVAL_PERPLEXITY = "best_eval_perplexity"  # the logged adapter's validation perplexity, at best_step
METRIC_BEST_STEP = "best_step"  # the logged adapter's step: its lowest validation loss (--keep-best), or the last
METRIC_STOPPED_EARLY = "stopped_early"  # the step early stopping ended training at; 0: every planned step ran
METRIC_TRAINED_TOKENS = "trained_tokens"  # real (non-padding) tokens the adapter trained on, all processes
METRIC_PEAK_MEMORY_MB = "peak_memory_mb"  # see TAG_MEMORY_KIND and lora_study.memory
METRIC_MODEL_MEMORY_MB = "model_memory_mb"  # the loaded base with its adapter
METRIC_TRAINABLE_PARAMS = "trainable_params"
METRIC_TOTAL_PARAMS = "total_params"
# how far the adapter moved the base on text outside the training data (lora_study.forgetting)
METRIC_FORGETTING_LOSS_DELTA = "forgetting_loss_delta"  # mean token loss, adapter minus base
METRIC_FORGETTING_KL = "forgetting_kl"  # mean per-token KL(base || adapter), nats
PARAM_FORGETTING_SET = "forgetting_set"  # what those were measured on
METRIC_TRAINABLE_PERCENT = "trainable_percent"
METRIC_ADAPTER_SIZE_MB = "adapter_size_mb"
METRIC_TRAIN_RUNTIME_S = "train_runtime_s"  # the training loop, evaluations included
TAG_MEMORY_KIND = "memory_kind"
PARAM_STEPS = "steps"  # optimizer steps actually planned (from max_steps or epochs)
PARAM_AUTOCAST_DTYPE = "autocast_dtype"
PARAM_DEVICE = "device"
PARAM_WORLD_SIZE = "world_size"  # processes that trained the adapter together (torchrun, accelerate launch)
TAG_PEAK_MEMORY_PER_PROCESS = "peak_memory_mb_per_process"  # with several: each one's, by rank

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
# a sweep's generation objectives (`--objectives rougeL`, `exact_match`), on a fixed sample of a split's
# records: greedy answers scored against the reference answers; each also of the base (BASE_PREFIX)
METRIC_EVAL_ROUGE_L, METRIC_TEST_ROUGE_L = "eval_rougeL", "test_rougeL"  # validation, test
METRIC_EVAL_EXACT_MATCH, METRIC_TEST_EXACT_MATCH = "eval_exact_match", "test_exact_match"
BASE_PREFIX = "base_"  # the generation metrics again, of the base model: base_gen_tokens_per_s
# with --merged (and in `merge`): the adapter merged into the base weights, against the unmerged adapter
MERGED_PREFIX = "merged_"  # the generation metrics again, merged: merged_gen_tokens_per_s
METRIC_MERGED_MAX_LOGPROB_DIFF = "merged_max_logprob_diff"  # of the target tokens of a test batch
METRIC_MERGED_LOSS_DIFF_PCT = "merged_loss_diff_pct"  # of the test loss
METRIC_MERGED_MATCHES = "merged_matches"  # 1 when the loss difference is within tolerance
METRIC_MERGED_OUTPUTS_MATCH_PCT = "merged_outputs_match_pct"  # identical greedy answers
METRIC_MERGED_SPEEDUP = "merged_speedup"  # merged gen_tokens_per_s over the unmerged one
METRIC_EVAL_PEAK_MEMORY_MB = "eval_peak_memory_mb"  # same kinds as peak_memory_mb
# an evaluate (or merge) run names what it evaluated; a registered version names its evaluate run
TAG_EVALUATED_MODEL_URI = "lora_study.model_uri"
TAG_EVALUATED_RUN_ID = "lora_study.source_run_id"
TAG_EVALUATED_REGISTERED_MODEL = "lora_study.registered_model"
TAG_EVALUATED_VERSION = "lora_study.model_version"
TAG_EVALUATION_RUN_ID = "evaluation_run_id"
# the columns of the generations table
COLUMN_PROMPT, COLUMN_REFERENCE = "prompt", "reference"
COLUMN_BASE_OUTPUT, COLUMN_ADAPTER_OUTPUT, COLUMN_MERGED_OUTPUT = "base_output", "adapter_output", "merged_output"

# --- `sweep`: a parent run per invocation, a nested run per trial ---------------------------
TAG_STUDY = "lora_study.study"  # on the parent, every trial run and every registered version
TAG_TRIAL_NUMBER = "trial_number"  # on trial runs (and registered versions)
TAG_TRIAL_STATE = "trial_state"  # COMPLETE | PRUNED | FAIL, on trial runs
TAG_CONFIG_TRIAL = "config_trial"  # on confirmation runs and versions: the explore trial they repeat
TAG_SEED = "seed"  # on confirmation runs and versions
TAG_NEIGHBOUR_OF = "neighbour_of"  # on an explore trial's run queued as a neighbour: the trial it is one level from
TAG_REPLICATE_OF = "replicate_of"  # on an explore trial's run: the trial whose configuration it trains again
TAG_RETRY_OF = "retry_of"  # on the run of a trial queued again because its worker died: the trial it repeats
TAG_RECOMMENDATION = "lora_study.recommendation"  # on the parent: the answer, in one sentence
TAG_HORIZON = "lora_study.horizon"  # ... and the training budget it holds for, in one sentence
# on versions of confirmed configurations: their seeds' test perplexity, and the rule's metric's
# (`test_rougeL_mean`) where the first objective is a generation objective
TAG_MEAN, TAG_STD, TAG_N = "{metric}_mean", "{metric}_std", "{metric}_n"
TAG_TEST_PERPLEXITY_MEAN = TAG_MEAN.format(metric=METRIC_TEST_PERPLEXITY)
TAG_TEST_PERPLEXITY_STD = TAG_STD.format(metric=METRIC_TEST_PERPLEXITY)
TAG_TEST_PERPLEXITY_N = TAG_N.format(metric=METRIC_TEST_PERPLEXITY)
# on the parent, of the rule's metric: the seed noise pooled over configurations, and per configuration
METRIC_SEED_STD, METRIC_SEED_STD_OF = "seed_std_{metric}", "seed_std_{metric}_trial_{config}"
METRIC_RECOMMENDED_MEAN, METRIC_RECOMMENDED_STD = "recommended_{metric}_mean", "recommended_{metric}_std"
ARTIFACT_BEST_PER_LEVEL = "best_per_level.json"  # per factor and level: its best trial (learning rate)
COLUMN_FACTOR = "factor"
ARTIFACT_CONFIRMED = "confirmed.json"  # the confirmed configurations, one row each, with:
COLUMN_CONFIG_TRIAL, COLUMN_SEEDS = "config_trial", "seeds"
COLUMN_STDERR_OF = "{metric}_stderr"  # and TAG_MEAN, TAG_STD: of test perplexity, and of the rule's metric
COLUMN_STDERR = COLUMN_STDERR_OF.format(metric=METRIC_TEST_PERPLEXITY)
COLUMN_RECOMMENDED, COLUMN_VERSION = "recommended", "version"
COLUMN_STEPS = PARAM_STEPS  # the confirmations' budget (also in the report's tables of runs)
COLUMN_TEST_PERPLEXITY_MEAN, COLUMN_TEST_PERPLEXITY_STD = TAG_TEST_PERPLEXITY_MEAN, TAG_TEST_PERPLEXITY_STD
PARAM_STUDY_NAME = "study_name"
PARAM_SAMPLER = "sampler"
PARAM_STORAGE = "optuna_storage"  # the Optuna storage URL the sweep used, password masked
METRIC_TRIALS = "{state}_trials"  # complete_trials, pruned_trials, failed_trials, lost_trials on the parent
METRIC_BEST = "best_{objective}"  # best_perplexity ... on the parent
PARAM_BEST = "best_{param}"  # the best trial's params, on the parent (single objective)
ARTIFACT_TRIALS = "trials.json"  # an MLflow table: one row per trial
ARTIFACT_SWEEP_CONFIG = "sweep_config"  # the folder holding the search-space file the study ran on
ARTIFACT_PLOT = "plots/{name}.png"  # perplexity_by_rank, perplexity_vs_memory, ... on the parent
ARTIFACT_IMPORTANCES = "importances.json"  # fANOVA importance of each searched param, on the parent
ARTIFACT_ENVIRONMENT = "environment.json"  # {machine, packages}: what the sweep ran on
TAG_COMMAND = "lora_study.command"  # on the parent: the command line that ran the sweep
# MLflow's own tags: a nested run's parent, and what `mlflow run` ran from where
TAG_MLFLOW_PARENT_RUN = "mlflow.parentRunId"
TAG_MLFLOW_ENTRY_POINT, TAG_MLFLOW_SOURCE = "mlflow.project.entryPoint", "mlflow.source.name"
TAG_MLFLOW_NOTE = "mlflow.note.content"  # a run's description, in Markdown, first on its page in the UI
TAG_MLFLOW_PROJECT_ENV = "mlflow.project.env"  # on a run `mlflow run` made: local, conda, virtualenv, ...
TAG_MLFLOW_COMMIT = "mlflow.source.git.commit"
# `report`: the study's answer as one page, on the sweep's parent run
ARTIFACT_REPORT = "report"  # the folder: report.html (self-contained), report.md and figures/*.svg
REPORT_HTML, REPORT_MARKDOWN, REPORT_FIGURES = "report.html", "report.md", "figures"
STAGE_REPORT = "report"  # the run `mlflow run -e report` makes, which holds a copy
# What each sweep objective optimizes: the metric of a trial run, also its registered version's tag.
OBJECTIVE_METRICS = {
    "perplexity": METRIC_EVAL_PERPLEXITY,
    "peak_memory_mb": METRIC_PEAK_MEMORY_MB,
    "trainable_params": METRIC_TRAINABLE_PARAMS,
    "forgetting": METRIC_FORGETTING_KL,
    "rougeL": METRIC_EVAL_ROUGE_L,
    "exact_match": METRIC_EVAL_EXACT_MATCH,
}
# The generation objectives, maximized: each one's test-split metric, which confirmations measure.
GENERATION_OBJECTIVES = {"rougeL": METRIC_TEST_ROUGE_L, "exact_match": METRIC_TEST_EXACT_MATCH}
HIGHER_IS_BETTER = {METRIC_EVAL_ROUGE_L, METRIC_TEST_ROUGE_L, METRIC_EVAL_EXACT_MATCH, METRIC_TEST_EXACT_MATCH}

# --- the registry --------------------------------------------------------------------------
ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"
ALIAS_STUDY_PREFIX = "study-"  # a study's own alias: its answer (`study.study_alias`)
# version tags, besides the headline metrics (under their metric names) and TAG_STUDY/TAG_TRIAL_NUMBER
TAG_BASE_MODEL = "base_model"
TAG_BASE_MODEL_SHA256 = PARAM_BASE_MODEL_SHA256
TAG_MERGED_FROM = "merged_from"  # the adapter URI a merged model was made from
TAG_PROMOTED_ALIAS = "promoted_alias"
TAG_PROMOTED_BY = "promoted_by"
TAG_PROMOTED_AT = "promoted_at"  # UTC, ISO 8601
TAG_PROMOTION_REASON = "promotion_reason"
TAG_PROMOTION_COMPARED = "promotion_compared"  # the two values compared, in words
TAG_DESCRIPTION_DIGEST = "lora_study.description_sha256"  # of the description lora-study wrote: an edited one differs
TAG_TEST_DATA = "lora_study.test_data"  # beside a test perplexity: what it was measured on (`comparability`), JSON
TAG_TEST_DATA_KEY = "test_data"  # ... its short key: versions with the same one compare
TAG_MANIFEST = "lora_study.manifest"  # what a server needs to know to load the version (`servability`), JSON
TAG_SERVES_ON = "serves_on"  # the serving targets that can load the version, e.g. `mlflow, vllm`
# On a registered model: one tag per alias move, `<prefix><alias>.<epoch ms>` -> JSON (from, to, at, by, why).
TAG_ALIAS_MOVE_PREFIX = "lora_study.alias_move."

# --- artifacts -----------------------------------------------------------------------------
# A lora-study pyfunc model's artifact keys, which its MLmodel names and which tell its kinds
# apart (`adapters`): one adapter, many adapters on one base, a merged model; each with its base.
MODEL_KEY_ADAPTER, MODEL_KEY_ADAPTERS, MODEL_KEY_MERGED, MODEL_KEY_BASE = "adapter", "adapters", "merged", "base_model"
MODEL_BASE_REFERENCE = "base_model.json"  # the file MODEL_KEY_BASE names: `models.AdapterReference`
INPUT_CONTEXT_TRAINING = "training"  # the context of a run's prepared-data input (`tracking.log_training_rows`)
ARTIFACT_DATA = "data"  # the prepared splits, as `prepare` wrote them
ARTIFACT_PREVIEW = "preview.json"  # an MLflow table: a few decoded rows per split
ARTIFACT_ADAPTER = "adapter"  # the adapter as an MLflow model (lora_study.adapters)
ARTIFACT_MERGED = "merged"  # the base with the adapter merged in, as an MLflow model (lora_study.adapters)
# A LoggedModel is named for what it is (`r32-qkvo-lr19e-4-seed1-200steps`, `tracking.logged_model_name`) and
# tagged with its kind, ARTIFACT_ADAPTER or ARTIFACT_MERGED: `runs:/<run id>/adapter` still finds it.
TAG_MODEL_KIND = "lora_study.model_kind"
# The run's metrics a LoggedModel carries too, so the experiment's Models tab sorts as a leaderboard:
# measured on the prepared data's splits (linked to that dataset), and the rest (forgetting, costs).
LOGGED_MODEL_METRICS_ON_DATA = (METRIC_EVAL_PERPLEXITY, METRIC_TEST_PERPLEXITY, METRIC_PERPLEXITY_IMPROVEMENT_PCT)
LOGGED_MODEL_METRICS = (
    METRIC_FORGETTING_KL,
    METRIC_TRAIN_RUNTIME_S,
    METRIC_PEAK_MEMORY_MB,
    METRIC_TRAINABLE_PARAMS,
    METRIC_ADAPTER_SIZE_MB,
)
ARTIFACT_GENERATIONS = "generations.json"  # an MLflow table: prompt, reference, base and adapter outputs
