"""`sweep`: an Optuna study over LoRA settings, a nested MLflow run per trial, the best registered.

The procedure, top to bottom: read and check the search space -> load the base model and the
prepared data once -> open (or resume) the study -> start the parent run -> run trials here and
in `--n-workers - 1` more processes, each giving every trial a fresh adapter on its pristine
base -> register the best adapters (alias `challenger`; `champion` with `--promote`) -> log
counts, best values, plots and the trials table on the parent, and say where to look.

    lora-study sweep --config configs/sweep/rank.yaml --n-trials 5
"""

import dataclasses
import multiprocessing
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import torch
from optuna.trial import TrialState

from lora_study import evaluation, lora, models, plots, registry, search_space, training
from lora_study.config import AdapterConfig, BaseModelConfig, DataConfig, EvaluateConfig, SweepConfig, TrainConfig
from lora_study.errors import UserInputError
from lora_study.tracking import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ARTIFACT_SWEEP_CONFIG,
    ARTIFACT_TRIALS,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_BEST,
    METRIC_PEAK_MEMORY_MB,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRIALS,
    PARAM_BASE_MODEL_SHA256,
    PARAM_BEST,
    PARAM_STORAGE,
    TAG_ERROR,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
    log_params,
    stage_run,
)

# Heartbeats and multivariate TPE are marked experimental in Optuna; both are what a sweep needs.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ATTR_RUN_ID = "mlflow_run_id"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # Optuna user attribute: the trial's MLflow run
# A trial whose worker sends no heartbeat for 2 intervals is failed by the next worker to look.
HEARTBEAT_S = int(os.environ.get("LORA_STUDY_HEARTBEAT_S", "10"))
OBJECTIVE_METRIC = {"perplexity": "eval_perplexity", "peak_memory_mb": METRIC_PEAK_MEMORY_MB,
                    "trainable_params": METRIC_TRAINABLE_PARAMS}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to join the study; plain data, so spawned workers get it too."""

    data: DataConfig
    base: BaseModelConfig
    sweep: SweepConfig
    space: search_space.SearchSpace
    study_name: str
    storage: str
    tracking_uri: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""


# --- the study -------------------------------------------------------------------------------


def default_study_name(cfg: SweepConfig, data: DataConfig, base: BaseModelConfig) -> str:
    """The same command names the same study, so running it again resumes it."""
    dataset = Path(data.dataset).stem if Path(data.dataset).suffix else data.dataset
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(cfg.config).stem}-{base.base_model}-{dataset}")


def default_storage() -> str:
    """SQLite beside the MLflow store (or in this folder when the store is not a local file)."""
    uri = mlflow.get_tracking_uri()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def masked(storage: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", storage)


def open_study(plan: Plan, worker: int = 0) -> optuna.Study:
    """Create the study, or load it to resume; every worker opens it the same way."""
    storage = optuna.storages.RDBStorage(
        plan.storage, heartbeat_interval=HEARTBEAT_S, heartbeat_stale_trial_callback=_fail_stale_trial_run,
        engine_kwargs={"pool_pre_ping": True},
    )  # fmt: skip
    names = plan.sweep.objective_names
    try:
        return optuna.create_study(
            study_name=plan.study_name, storage=storage, load_if_exists=True,
            sampler=_sampler(plan, worker), pruner=_pruner(plan.sweep), directions=["minimize"] * len(names),
        )  # fmt: skip
    except ValueError as error:  # an existing study with other directions
        raise UserInputError(f"--study-name {plan.study_name}: {error}; pass another --study-name") from None


def _sampler(plan: Plan, worker: int):
    seed = plan.data.seed + worker  # workers draw different trials from the same seed
    if plan.space.sampler == "grid":
        return optuna.samplers.GridSampler(plan.space.grid(), seed=seed)
    if plan.space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(3, plan.sweep.n_trials // 2))  # random trials before TPE models the space
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def _pruner(cfg: SweepConfig):
    if cfg.pruner == "none" or len(cfg.objective_names) > 1:  # Optuna prunes single objectives only
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.eval_every, max_resource=cfg.max_steps)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def _fail_stale_trial_run(study: optuna.Study, trial) -> None:
    """The MLflow run of a trial whose worker died is ended FAILED, not left RUNNING."""
    run_id = trial.user_attrs.get(ATTR_RUN_ID)
    if run_id:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, TAG_ERROR, "its worker stopped sending heartbeats (killed or crashed)")
        client.set_tag(run_id, TAG_TRIAL_STATE, TrialState.FAIL.name)
        client.set_terminated(run_id, "FAILED")


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# --- one worker --------------------------------------------------------------------------------


class Worker:
    """One process's share of the study: the base and the data loaded once, trial after trial."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.train_defaults = {"max_steps": plan.sweep.max_steps, "eval_every": plan.sweep.eval_every,
                               "data": plan.sweep.data}  # fmt: skip
        first = {name: plan.space.choices(name)[0] for name in ("quantization", "precision")}
        adapter = AdapterConfig(quantization=first["quantization"])
        train = TrainConfig(precision=first["precision"], data=plan.sweep.data)
        self.setup = training.setup(plan.data, plan.base, adapter, train)
        self.bases = {adapter.quantization: self.setup.model}  # a base per quantization the space holds
        self.base_eval_losses: dict[tuple, float] = {}  # step 0 of every trial on the same base

    def check_space(self) -> None:
        """Target-module choices the base lacks, and settings it refuses: all at once."""
        problems = []
        for targets in self.plan.space.choices("target_modules"):
            try:
                lora.resolve_targets(self.setup.model, targets)
            except UserInputError as error:
                problems += [f"{self.plan.space.path}: space.target_modules: {p}" for p in error.problems]
        for quantization in self.plan.space.choices("quantization"):
            for precision in self.plan.space.choices("precision"):
                try:
                    training.check_settings(AdapterConfig(quantization=quantization), TrainConfig(precision=precision),
                                            self.plan.data.seq_len, self.setup.model.config)  # fmt: skip
                except UserInputError as error:
                    problems += [f"{self.plan.space.path}: space: {p}" for p in error.problems]
        if problems:
            raise UserInputError(*problems)

    def setup_for(self, adapter: AdapterConfig) -> training.Setup:
        if adapter.quantization not in self.bases:
            model, _ = models.load_base(self.setup.ref, adapter.quantization, self.setup.dtype, self.setup.device)
            self.bases[adapter.quantization] = model
        return dataclasses.replace(self.setup, model=self.bases[adapter.quantization],
                                   weights_dtype=models.weights_dtype(adapter.quantization, self.setup.dtype))  # fmt: skip

    def optimize(self, study: optuna.Study) -> None:
        remaining = self.plan.sweep.n_trials - finished(study)
        if remaining <= 0:
            return
        cfg = self.plan.sweep
        done = optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)
        study.optimize(self.objective, n_trials=remaining, timeout=cfg.timeout_min * 60 or None,
                       catch=(Exception,), callbacks=[done], gc_after_trial=True)  # fmt: skip

    def objective(self, trial: optuna.Trial):
        """Train one adapter on the pristine base; its validation perplexity (and costs) are the value."""
        adapter, train = self.plan.space.suggest(trial, self.train_defaults)
        s = self.setup_for(adapter)
        base_key = (adapter.quantization, train.precision)  # what the base's loss depends on
        evals: list[float] = []
        with self._trial_run(trial) as run_id:
            training.log_inputs(s, self.plan.data, self.plan.base)
            try:
                model = training.fine_tune(s, adapter, train, self.plan.data.seed, on_eval=self._pruning(trial, evals),
                                           base_eval_loss=self.base_eval_losses.get(base_key))
                self.base_eval_losses[base_key] = evals[0]
                training.log_trained_adapter(s, model, adapter)
            finally:
                self.bases[adapter.quantization] = lora.detach(s.model)  # the next trial starts from the base
                if train.gradient_checkpointing:
                    s.model.gradient_checkpointing_disable()
            mlflow.flush_async_logging()
            metrics = mlflow.get_run(run_id).data.metrics
        values = {"perplexity": evaluation.perplexity(evals[-1]), "peak_memory_mb": metrics[METRIC_PEAK_MEMORY_MB],
                  "trainable_params": metrics[METRIC_TRAINABLE_PARAMS]}  # fmt: skip
        for name in (METRIC_PEAK_MEMORY_MB, METRIC_TRAINABLE_PARAMS, METRIC_TRAIN_TOKENS_PER_S):
            trial.set_user_attr(name, metrics[name])
        trial.set_user_attr("eval_perplexity", values["perplexity"])
        objective = [values[name] for name in self.plan.sweep.objective_names]
        return objective[0] if len(objective) == 1 else tuple(objective)

    def _pruning(self, trial: optuna.Trial, evals: list[float]):
        single = len(self.plan.sweep.objective_names) == 1

        def on_eval(step: int, eval_loss: float) -> None:
            evals.append(eval_loss)
            if single and step > 0:  # step 0 is the base model, the same for every trial
                trial.report(evaluation.perplexity(eval_loss), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation loss {eval_loss:.4f} at step {step}")

        return on_eval

    @contextmanager
    def _trial_run(self, trial: optuna.Trial):
        """The trial's nested MLflow run, ended with the trial's state; yields its run id."""
        tags = {TAG_STAGE: "trial", TAG_STUDY: self.plan.study_name, TAG_TRIAL_NUMBER: str(trial.number)}
        run = mlflow.start_run(run_name=f"trial-{trial.number}", experiment_id=self.plan.experiment_id,
                               parent_run_id=self.plan.parent_run_id, nested=mlflow.active_run() is not None,
                               tags=tags, log_system_metrics=False)  # fmt: skip
        trial.set_user_attr(ATTR_RUN_ID, run.info.run_id)
        try:
            yield run.info.run_id
        except optuna.TrialPruned:
            mlflow.set_tag(TAG_TRIAL_STATE, TrialState.PRUNED.name)
            mlflow.end_run("FINISHED")
            raise
        except KeyboardInterrupt:
            mlflow.set_tags({TAG_TRIAL_STATE: TrialState.FAIL.name, TAG_ERROR: "interrupted (Ctrl-C)"})
            mlflow.end_run("KILLED")
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"[:5000]
            mlflow.set_tags({TAG_TRIAL_STATE: TrialState.FAIL.name, TAG_ERROR: reason})
            mlflow.end_run("FAILED")
            raise
        mlflow.set_tag(TAG_TRIAL_STATE, TrialState.COMPLETE.name)
        mlflow.end_run("FINISHED")


def _worker_main(plan: Plan, worker: int, threads: int) -> None:
    """A spawned worker process: its own base and data, the shared study and MLflow store."""
    from lora_study.cli import quiet_progress_bars

    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(plan.tracking_uri)
    quiet_progress_bars()
    Worker(plan).optimize(open_study(plan, worker))


def run_workers(plan: Plan, worker0: Worker, study: optuna.Study) -> None:
    """This process is worker 0; `n_workers - 1` more are spawned, the cores shared among them."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // plan.sweep.n_workers)
    torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    others = [context.Process(target=_worker_main, args=(plan, n, threads), name=f"sweep-worker-{n}")
              for n in range(1, plan.sweep.n_workers)]  # fmt: skip
    for process in others:
        process.start()
    try:
        worker0.optimize(study)
    finally:
        for process in others:
            process.join()
    failed = [p.name for p in others if p.exitcode != 0]
    if failed:
        print(f"lora-study: warning: {', '.join(failed)} exited with an error; see its output above", file=sys.stderr)


# --- after the trials: registry, summary, plots ---------------------------------------------------


def best_trials(study: optuna.Study) -> list:
    """The best trial, or for several objectives the Pareto front, best first objective first."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.values[0])


def register_best(plan: Plan, worker: Worker, study: optuna.Study) -> list:
    """Register each best trial's adapter once, with its test perplexity; move `challenger`."""
    name = plan.sweep.registered_model or f"lora-study-{plan.base.base_model}"
    versions = []
    for trial in best_trials(study):
        version = registry.find_trial_version(name, plan.study_name, trial.number)
        if version is None:
            run_id = trial.user_attrs[ATTR_RUN_ID]
            tags = {TAG_STUDY: plan.study_name, TAG_TRIAL_NUMBER: trial.number, "base_model": plan.base.base_model,
                    PARAM_BASE_MODEL_SHA256: worker.setup.ref.sha256 or "", **_objective_tags(plan, trial),
                    **test_metrics(worker, run_id)}  # fmt: skip
            version = registry.register(f"runs:/{run_id}/adapter", name, tags)
        versions.append(version)
    if versions:
        registry.set_alias(name, ALIAS_CHALLENGER, versions[0].version)
        if plan.sweep.promote:
            _promote(name, versions[0], plan.sweep.objective_names[0])
    return versions


def _objective_tags(plan: Plan, trial) -> dict:
    return {OBJECTIVE_METRIC[name]: f"{value:.6g}" for name, value in zip(plan.sweep.objective_names, trial.values)}


def test_metrics(worker: Worker, run_id: str) -> dict:
    """Test perplexity of a trial's adapter and of its base, on the cached base model."""
    from peft import PeftModel

    source = registry.resolve_model_uri(f"runs:/{run_id}/adapter")
    s = worker.setup_for(AdapterConfig(quantization=source.reference["quantization"]))
    model = PeftModel.from_pretrained(s.model, str(source.adapter_dir))
    try:
        result = evaluation.evaluate_adapter(model, s.tokenizer, s.prepared.rows("test"), [],
                                             EvaluateConfig(model_uri=source.uri, max_prompts=0), s.dtype)  # fmt: skip
    finally:
        worker.bases[source.reference["quantization"]] = lora.detach(s.model)
    keys = (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY, METRIC_PERPLEXITY_IMPROVEMENT_PCT)
    return {key: f"{result.metrics[key]:.6g}" for key in keys}


def _promote(name: str, challenger, objective: str) -> None:
    """`champion` moves only to a challenger that beats it on the study's first objective."""
    try:
        print(registry.promote(name, int(challenger.version), ALIAS_CHAMPION, force=False,
                               reason="sweep --promote", metric=OBJECTIVE_METRIC[objective]))  # fmt: skip
    except UserInputError as refused:
        print(f"champion stays: {refused}")


def summarize(plan: Plan, study: optuna.Study) -> None:
    """Counts, best values and params, plots and the trials table, on the parent run."""
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    mlflow.log_metrics({METRIC_TRIALS.format(state=key): len(study.get_trials(deepcopy=False, states=(state,)))
                        for key, state in states.items()})  # fmt: skip
    best = best_trials(study)
    if best:
        mlflow.log_metrics({METRIC_BEST.format(objective=name): value
                            for name, value in zip(plan.sweep.objective_names, best[0].values)})  # fmt: skip
        log_params({PARAM_BEST.format(param=key): value for key, value in best[0].params.items()})
    runs = mlflow.search_runs([plan.experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{plan.study_name}' and "
                              f"tags.`{TAG_STAGE}` = 'trial'")  # fmt: skip
    if runs.empty:
        return
    frame = plots.trials_frame(runs)
    mlflow.log_table(frame, ARTIFACT_TRIALS)
    if (frame.trial_state == "COMPLETE").any():
        mlflow.log_figure(plots.perplexity_by_rank(frame), "plots/perplexity_by_rank.png")
        mlflow.log_figure(plots.perplexity_vs_memory(frame), "plots/perplexity_vs_memory.png")
        mlflow.log_figure(plots.optimization_history(frame), "plots/optimization_history.png")
    found = importances(study)
    if found:
        mlflow.log_figure(plots.parameter_importances(found), "plots/parameter_importances.png")


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the first objective; none until two complete trials differ."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or not any(t.params != complete[0].params for t in complete):
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return optuna.importance.get_param_importances(study, evaluator=evaluator, target=lambda t: t.values[0])


# --- the entry point ---------------------------------------------------------------------------


def run_sweep(data: DataConfig, base: BaseModelConfig, cfg: SweepConfig) -> str:
    """The `sweep` entry point; returns the parent run's id. Bad input fails before any run."""
    space = search_space.load(_config_path(cfg.config))
    study_name = cfg.study_name or default_study_name(cfg, data, base)
    plan = Plan(data, base, cfg, space, study_name, cfg.storage or default_storage())
    worker = Worker(plan)
    worker.check_space()
    study = open_study(plan)
    with stage_run("sweep", **{TAG_STUDY: study_name}) as parent:
        plan = dataclasses.replace(plan, tracking_uri=mlflow.get_tracking_uri(),
                                   experiment_id=parent.info.experiment_id, parent_run_id=parent.info.run_id)  # fmt: skip
        worker.plan = plan
        log_params({**data.model_dump(), **base.model_dump(), **cfg.model_dump(), "study_name": study_name,
                    PARAM_STORAGE: masked(plan.storage), "sampler": space.sampler})  # fmt: skip
        mlflow.log_artifact(space.path, ARTIFACT_SWEEP_CONFIG)
        run_workers(plan, worker, study)
        versions = register_best(plan, worker, study)
        summarize(plan, study)
    _print_where_to_look(plan, parent, versions)
    return parent.info.run_id


def _config_path(config: str) -> str:
    """The config as given, or a shipped one by its path in this project (for runs elsewhere)."""
    if Path(config).is_file():
        return config
    shipped = Path(__file__).resolve().parents[1] / config
    return str(shipped) if shipped.is_file() else config


def _print_where_to_look(plan: Plan, parent, versions: list) -> None:
    experiment = mlflow.get_experiment(plan.experiment_id)
    print(f"study {plan.study_name}: {len(versions)} adapter(s) registered")
    for version in versions:
        print(f"  models:/{version.name}/{version.version} (trial {version.tags.get(TAG_TRIAL_NUMBER)}, "
              f"test perplexity {version.tags.get(METRIC_TEST_PERPLEXITY)} vs base "
              f"{version.tags.get(METRIC_BASE_TEST_PERPLEXITY)})")  # fmt: skip
    if versions:
        print(f"  alias: models:/{versions[0].name}@{ALIAS_CHALLENGER}")
    print(f"experiment `{experiment.name}` (id {plan.experiment_id}), parent run {parent.info.run_id}")
    print(f"see it: mlflow ui --backend-store-uri {plan.tracking_uri}")
