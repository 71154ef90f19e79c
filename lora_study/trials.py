"""The trials of a sweep: a worker loads the base model and the data once, then trains a fresh
adapter on the pristine base for every trial Optuna asks for.

After each trial the adapter layers are taken out again (`lora.detach`), so the next trial starts
from the untouched base. `run_workers` runs this process's worker beside `--n-workers - 1`
spawned ones sharing the cores, the study and the MLflow store.
"""

import dataclasses
import multiprocessing
import os
import sys

import optuna
import torch

from lora_study import adapters, console, evaluation, lora, models, tracking, training
from lora_study.config import AdapterConfig, TrainConfig
from lora_study.errors import UserInputError
from lora_study.losses import perplexity
from lora_study.study import ATTR_RUN_ID, FINISHED, Plan, finished, open_study
from lora_study.tracking import (
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    OBJECTIVE_METRICS,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)

TRIAL_ATTRS = (METRIC_PEAK_MEMORY_MB, METRIC_TRAINABLE_PARAMS, METRIC_TRAIN_TOKENS_PER_S)  # kept on each trial
TEST_BATCH_SIZE = 8  # rows per forward pass for the test loss, which batching does not change


class Worker:
    """One process's share of the study: the base and the data loaded once, trial after trial."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.train_defaults = {
            "max_steps": plan.sweep.max_steps,
            "eval_every": plan.sweep.eval_every,
            "data": plan.sweep.data,
        }
        first = {name: plan.space.choices(name)[0] for name in ("quantization", "precision")}
        adapter = AdapterConfig(quantization=first["quantization"])
        train = TrainConfig(precision=first["precision"], data=plan.sweep.data)
        self.setup = training.setup(plan.data, plan.base, adapter, train)
        self.bases = {adapter.quantization: self.setup.model}  # a base per quantization the space holds
        self.base_eval_losses: dict[tuple, float] = {}  # step 0 of every trial on the same base

    def check_space(self) -> None:
        """Target-module choices the base lacks, and settings it refuses: all at once."""
        space, problems = self.plan.space, []
        for targets in space.choices("target_modules"):
            try:
                lora.resolve_targets(self.setup.model, targets)
            except UserInputError as error:
                problems += [f"{space.path}: space.target_modules: {p}" for p in error.problems]
        for quantization in space.choices("quantization"):
            for precision in space.choices("precision"):
                adapter, train = AdapterConfig(quantization=quantization), TrainConfig(precision=precision)
                try:
                    training.check_settings(adapter, train, self.plan.data.seq_len, self.setup.model.config)
                except UserInputError as error:
                    problems += [f"{space.path}: space: {p}" for p in error.problems]
        if problems:
            raise UserInputError(*problems)

    def setup_for(self, quantization: str) -> training.Setup:
        """The setup of a trial on a base stored with `quantization`, loaded the first time it is asked for."""
        if quantization not in self.bases:
            model, _ = models.load_base(self.setup.ref, quantization, self.setup.dtype, self.setup.device)
            self.bases[quantization] = model
        weights = models.weights_dtype(quantization, self.setup.dtype)
        return dataclasses.replace(self.setup, model=self.bases[quantization], weights_dtype=weights)

    def optimize(self, study: optuna.Study) -> None:
        cfg = self.plan.sweep
        remaining = cfg.n_trials - finished(study)
        if remaining <= 0:
            return
        done = optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)
        study.optimize(
            self.objective,
            n_trials=remaining,
            timeout=cfg.timeout_min * 60 or None,
            catch=(Exception,),
            callbacks=[done],
            gc_after_trial=True,
        )

    def objective(self, trial: optuna.Trial):
        """Train one adapter on the pristine base; its validation perplexity (and costs) are the value."""
        adapter, train = self.plan.space.suggest(trial, self.train_defaults)
        s = self.setup_for(adapter.quantization)
        base_key = (adapter.quantization, train.precision)  # what the base's loss depends on
        tags = {TAG_STUDY: self.plan.study_name, TAG_TRIAL_NUMBER: str(trial.number)}
        plan = self.plan
        with tracking.trial_run(
            f"trial-{trial.number}", plan.experiment_id, plan.parent_run_id, tags, pruned=optuna.TrialPruned
        ) as run_id:
            trial.set_user_attr(ATTR_RUN_ID, run_id)
            training.log_inputs(s, plan.data, plan.base)
            try:
                result = training.fine_tune(
                    s,
                    adapter,
                    train,
                    plan.data.seed,
                    on_eval=self._pruning(trial),
                    base_eval_loss=self.base_eval_losses.get(base_key),
                )
                self.base_eval_losses[base_key] = result.eval_losses[0]
                training.log_trained_adapter(s, result.model, adapter)
            finally:
                self.bases[adapter.quantization] = lora.detach(s.model)  # the next trial starts from the base
                if train.gradient_checkpointing:
                    s.model.gradient_checkpointing_disable()
            tracking.flush()
        values = {**result.metrics, METRIC_EVAL_PERPLEXITY: perplexity(result.final_eval_loss)}
        for name in (*TRIAL_ATTRS, METRIC_EVAL_PERPLEXITY):
            trial.set_user_attr(name, values[name])
        objective = [values[OBJECTIVE_METRICS[name]] for name in plan.sweep.objective_names]
        return objective[0] if len(objective) == 1 else tuple(objective)

    def _pruning(self, trial: optuna.Trial):
        if len(self.plan.sweep.objective_names) > 1:  # Optuna prunes single objectives only
            return None

        def on_eval(step: int, eval_loss: float) -> None:
            if step > 0:  # step 0 is the base model, the same for every trial
                trial.report(perplexity(eval_loss), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation loss {eval_loss:.4f} at step {step}")

        return on_eval

    def test_metrics(self, run_id: str) -> dict[str, str]:
        """Test perplexity of a trial's adapter and of its base, on this worker's loaded base."""
        source = adapters.resolve(f"runs:/{run_id}/{tracking.ARTIFACT_ADAPTER}")
        s = self.setup_for(source.reference.quantization)
        try:
            loaded = adapters.load(source, s.device, s.dtype, onto=s.model)
            rows = s.prepared.rows("test")
            result = evaluation.evaluate_adapter(
                loaded.model, s.tokenizer, rows, prompts=[], batch_size=TEST_BATCH_SIZE, max_new_tokens=0, dtype=s.dtype
            )
        finally:
            self.bases[source.reference.quantization] = lora.detach(s.model)
        keys = (METRIC_TEST_PERPLEXITY, METRIC_BASE_TEST_PERPLEXITY, METRIC_PERPLEXITY_IMPROVEMENT_PCT)
        return {key: f"{result.metrics[key]:.6g}" for key in keys}


def _worker_main(plan: Plan, worker: int, threads: int) -> None:
    """A spawned worker process: its own base and data, the shared study and MLflow store."""
    torch.set_num_threads(threads)
    tracking.set_tracking_uri(plan.tracking_uri)
    console.quiet_progress_bars()
    Worker(plan).optimize(open_study(plan, worker))


def run_workers(plan: Plan, worker0: Worker, study: optuna.Study) -> None:
    """This process is worker 0; `n_workers - 1` more are spawned, the cores shared among them."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // plan.sweep.n_workers)
    torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    others = [
        context.Process(target=_worker_main, args=(plan, n, threads), name=f"sweep-worker-{n}")
        for n in range(1, plan.sweep.n_workers)
    ]
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
