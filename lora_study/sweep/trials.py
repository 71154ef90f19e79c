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
import time

import optuna
import torch

from lora_study import (
    adapters,
    console,
    evaluation,
    forgetting,
    logged_models,
    lora,
    models,
    tracking,
    tracking_outages,
    training,
)
from lora_study.config import AdapterConfig, TrainConfig
from lora_study.errors import UserInputError
from lora_study.losses import mean_loss, perplexity
from lora_study.names import (
    GENERATION_OBJECTIVES,
    METRIC_BASE_TEST_PERPLEXITY,
    METRIC_EVAL_PERPLEXITY,
    METRIC_PEAK_MEMORY_MB,
    METRIC_PERPLEXITY_IMPROVEMENT_PCT,
    METRIC_TEST_PERPLEXITY,
    METRIC_TRAIN_TOKENS_PER_S,
    METRIC_TRAINABLE_PARAMS,
    METRIC_TRAINED_TOKENS,
    OBJECTIVE_METRICS,
    RUN_NAME_CONFIRM,
    RUN_NAME_TRIAL,
    STAGE_CONFIRM,
    TAG_CONFIG_TRIAL,
    TAG_NEIGHBOUR_OF,
    TAG_REPLICATE_OF,
    TAG_RETRY_OF,
    TAG_SEED,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TRIAL_NUMBER,
)
from lora_study.sweep.answer_scores import AnswerScores
from lora_study.sweep.storage import gave_up_is_one_line
from lora_study.sweep.study import (
    ATTR_CONFIG,
    ATTR_LABEL,
    ATTR_NEIGHBOUR_OF,
    ATTR_PHASE,
    ATTR_REPLICATE_OF,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    ATTR_SEED,
    CONFIRM,
    EXPLORE,
    FINISHED,
    UNUSED,
    Plan,
    best_trials,
    finished,
    open_study,
    phase,
    sampled,
    taken_by,
    trials_of,
    wait_for_confirmations,
)

TRIAL_ATTRS = (METRIC_PEAK_MEMORY_MB, METRIC_TRAINABLE_PARAMS, METRIC_TRAIN_TOKENS_PER_S, METRIC_TRAINED_TOKENS)  # kept
SCORE_METRICS = tuple(OBJECTIVE_METRICS[name] for name in GENERATION_OBJECTIVES)  # shown in a trial's line
TEST_BATCH_SIZE = 8  # rows per forward pass for the test loss, which batching does not change


class Worker:
    """One process's share of the study: the base and the data loaded once, trial after trial."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.train_defaults = {
            "max_steps": plan.sweep.max_steps,
            "eval_every": plan.sweep.eval_every,
            "data": plan.sweep.data,
            "forgetting_data": plan.sweep.forgetting_data,
            **plan.sweep.model_dump(include={"early_stopping_patience", "early_stopping_min_delta", "keep_best"}),
        }
        first = {name: plan.space.choices(name)[0] for name in ("quantization", "precision")}
        adapter = AdapterConfig(quantization=first["quantization"])
        train = TrainConfig(precision=first["precision"], data=plan.sweep.data)
        self.setup = training.setup(plan.data, plan.base, adapter, train)
        self.bases = {adapter.quantization: self.setup.model}  # a base per quantization the space holds
        self.base_eval_losses: dict[tuple, float] = {}  # step 0 of every trial on the same base
        s = self.setup
        self.general_text = forgetting.load(
            plan.sweep.forgetting_data, s.ref, s.tokenizer, s.model, plan.data.seq_len, plan.data.dataset
        )
        self.base_distributions: dict[tuple, forgetting.BaseDistribution] = {}  # the same for every trial
        self.base_test_losses: dict[tuple, float] = {}  # of the confirmations' base
        cfg = plan.sweep
        self.answer_scores = None  # the generation objectives', if any: refused for plain text before any run
        if cfg.generation_objectives:
            self.answer_scores = AnswerScores(
                cfg.generation_objectives,
                s.prepared,
                s.tokenizer,
                cfg.objective_samples,
                plan.data.split_seed,
                cfg.objective_max_new_tokens,
            )
        self.confirming = False  # in the confirm phase, only queued confirmations run

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
        """The explore phase: sampled trials until the study holds `--n-trials` finished ones."""
        cfg = self.plan.sweep
        remaining = cfg.n_trials - finished(study)
        if remaining <= 0:
            return

        def stop_when_explored(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            done = finished(study)
            if phase(trial) == EXPLORE:
                best = trial.number in {t.number for t in best_trials(study)}
                console.say(explore_line(trial, done, cfg.n_trials, best))
            if done >= cfg.n_trials:
                study.stop()

        with gave_up_is_one_line(study):
            study.optimize(
                self.objective,
                n_trials=remaining,
                timeout=cfg.timeout_min * 60 or None,
                catch=(Exception,),
                callbacks=[stop_when_explored],
                gc_after_trial=True,
            )

    def confirm(self, study: optuna.Study) -> None:
        """The confirm phase: the queued (configuration, seed) trials, one at a time, until none is left."""
        # queued trials carry their parameters; a grid sampler would look for its grid point in them
        study.sampler = optuna.samplers.RandomSampler(seed=self.plan.data.split_seed)
        self.confirming = True
        with gave_up_is_one_line(study):
            while True:
                while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                    study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
                if not wait_for_confirmations(study):
                    break

    def objective(self, trial: optuna.Trial):
        """Train one adapter on the pristine base; its validation perplexity (and costs) are the value.

        A confirmation trial trains `--confirm-steps` with its own seed, unpruned, and is also
        measured on the test split.
        """
        plan, confirming, queued = self.plan, phase(trial) == CONFIRM, not sampled(trial)
        if self.confirming and not confirming and not queued and ATTR_RETRY_OF not in trial.user_attrs:
            # another worker took the last queued confirmation first: Optuna made a new trial
            trial.set_user_attr(ATTR_PHASE, UNUSED)
            raise optuna.TrialPruned("no confirmation left to run")
        if confirming and (earlier := taken_by(trial.study, trial)) is not None:
            trial.set_user_attr(ATTR_PHASE, UNUSED)
            raise optuna.TrialPruned(f"queued twice: trial {earlier} runs this confirmation")
        adapter, train = plan.space.suggest(trial, self.train_defaults)
        s = self.setup_for(adapter.quantization)
        base_key = (adapter.quantization, train.precision)  # what the base's loss depends on
        label = tracking.adapter_label(adapter.rank, adapter.target_modules, train.learning_rate, adapter.quantization)
        trial.set_user_attr(ATTR_LABEL, label)
        started = time.perf_counter()
        seed = trial.user_attrs.get(ATTR_SEED, plan.data.split_seed)  # a replicate's is the next seed
        name, tags = RUN_NAME_TRIAL.format(number=trial.number, adapter=label), {}
        if confirming:
            # evaluated at the end only, unless early stopping needs the curve
            evaluations = plan.sweep.eval_every if train.early_stopping_patience else 0
            train = train.model_copy(update={"max_steps": plan.sweep.steps_to_confirm, "eval_every": evaluations})
            seed, config = trial.user_attrs[ATTR_SEED], trial.user_attrs[ATTR_CONFIG]
            name = RUN_NAME_CONFIRM.format(config=config, seed=seed, adapter=label)
            tags = {TAG_STAGE: STAGE_CONFIRM, TAG_CONFIG_TRIAL: str(config), TAG_SEED: str(seed)}
        train = train.model_copy(update={"training_seed": seed})  # logged with the params: the compare view shows it
        tags.update({TAG_STUDY: plan.study_name, TAG_TRIAL_NUMBER: str(trial.number)})
        for attr, tag in ((ATTR_NEIGHBOUR_OF, TAG_NEIGHBOUR_OF), (ATTR_REPLICATE_OF, TAG_REPLICATE_OF)):
            if attr in trial.user_attrs:
                tags.update({tag: str(trial.user_attrs[attr]), TAG_SEED: str(seed)})
        if ATTR_RETRY_OF in trial.user_attrs:  # its worker died running trial `retry_of`
            tags[TAG_RETRY_OF] = str(trial.user_attrs[ATTR_RETRY_OF])
        with tracking.trial_run(
            name, plan.experiment_id, plan.parent_run_id, tags, pruned=optuna.TrialPruned
        ) as run_id:
            trial.set_user_attr(ATTR_RUN_ID, run_id)
            training.log_inputs(s, plan.data, plan.base)
            try:
                result = training.fine_tune(
                    s,
                    adapter,
                    train,
                    on_eval=None if confirming else self._pruning(trial, train.max_steps, prunable=not queued),
                    base_eval_loss=self.base_eval_losses.get(base_key),
                )
                self.base_eval_losses[base_key] = result.eval_losses[0]
                measured, scored = self._forgetting(s, result.model, base_key), {}
                if self.answer_scores is not None:
                    for split in ("validation", "test") if confirming else ("validation",):
                        scored.update(self.answer_scores.measure(result.model, split, base_key, s.dtype))
                if confirming:
                    scored.update(self._test_metrics(s, result.model, base_key))
                tracking.log_metrics(scored)
                measured.update(scored)
                training.log_trained_adapter(s, result, adapter, train)
            finally:
                self.bases[adapter.quantization] = lora.detach(s.model)  # the next trial starts from the base
                if train.gradient_checkpointing:
                    s.model.gradient_checkpointing_disable()
            tracking.flush()
        values = {**result.metrics, **measured, METRIC_EVAL_PERPLEXITY: perplexity(result.final_eval_loss)}
        for name in (*TRIAL_ATTRS, *measured, METRIC_EVAL_PERPLEXITY):
            trial.set_user_attr(name, values[name])
        seconds = time.perf_counter() - started
        if queued:
            console.say(queued_line(trial, values[METRIC_EVAL_PERPLEXITY], seconds))
        if confirming:
            done = len(trials_of(trial.study, CONFIRM, FINISHED)) + 1  # this one is not finished yet
            console.say(confirm_line(trial, done, len(trials_of(trial.study, CONFIRM)), measured, seconds))
        objective = [values[OBJECTIVE_METRICS[name]] for name in plan.sweep.objective_names]
        return objective[0] if len(objective) == 1 else tuple(objective)

    def _forgetting(self, s: training.Setup, model, base_key: tuple) -> dict[str, float]:
        """Forgetting of a trial's adapter, against the base's distribution measured once per base."""
        if self.general_text is None:
            return {}
        rows, pad_id = self.general_text.rows, s.tokenizer.pad_token_id
        if base_key not in self.base_distributions:
            self.base_distributions[base_key] = forgetting.base_distribution(model, rows, pad_id, s.dtype)
        forgot = forgetting.evaluate(model, self.general_text, pad_id, s.dtype, self.base_distributions[base_key])
        tracking.log_forgetting(forgot, self.general_text.description)
        return forgot

    def _test_metrics(self, s: training.Setup, model, base_key: tuple) -> dict[str, float]:
        """Test perplexity of the adapter in `model`, and of its base (measured once per base)."""
        rows, pad_id = s.prepared.rows("test"), s.tokenizer.pad_token_id
        if base_key not in self.base_test_losses:
            with model.disable_adapter():
                self.base_test_losses[base_key] = mean_loss(model, rows, TEST_BATCH_SIZE, pad_id, s.dtype)
        test_loss = mean_loss(model, rows, TEST_BATCH_SIZE, pad_id, s.dtype)
        return evaluation.perplexity_metrics(test_loss, self.base_test_losses[base_key])

    def _pruning(self, trial: optuna.Trial, steps: int, prunable: bool):
        # every explore trial reports its curve; a queued one is never pruned (it is evidence
        # the confirm phase asked for). The pruner reads validation perplexity: only a study of it
        # alone may be pruned by it (Optuna prunes single objectives only)
        if self.plan.sweep.objective_names != ["perplexity"]:
            return None

        def on_eval(step: int, eval_loss: float) -> None:
            if step > 0:  # step 0 is the base model, the same for every trial
                trial.report(perplexity(eval_loss), step)
                # a trial that reached its budget is complete: pruning it then would only discard it
                if prunable and step < steps and trial.should_prune():
                    raise optuna.TrialPruned(f"validation loss {eval_loss:.4f} at step {step}")

        return on_eval

    def test_metrics(self, run_id: str) -> dict[str, float]:
        """Test perplexity of a trial's adapter and of its base, on this worker's loaded base."""
        source = adapters.resolve(logged_models.of_run(run_id))
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
        return {key: result.metrics[key] for key in keys}  # `registry.measured_tags` formats them as tags


def explore_line(trial: optuna.trial.FrozenTrial, done: int, total: int, best: bool) -> str:
    """An explore trial as one terminal line: `trial 3  4/8  r32 qkvo lr1.9e-3  ppl 12.02 (best)  49 s`."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        scores = [f" {name} {trial.user_attrs[name]:.3f}" for name in SCORE_METRICS if name in trial.user_attrs]
        outcome = f"ppl {trial.user_attrs[METRIC_EVAL_PERPLEXITY]:.2f}{''.join(scores)}" + (" (best)" if best else "")
    elif trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        outcome = f"pruned at step {step} (ppl {trial.intermediate_values[step]:.2f})"
    else:
        outcome = trial.state.name.lower()  # FAIL: Optuna's warning above says why
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    return f"trial {trial.number}  {done}/{total}  {trial.user_attrs.get(ATTR_LABEL, '')}  {outcome}  {seconds:.0f} s"


def queued_line(trial, eval_perplexity: float, seconds: float) -> str:
    """An explore trial the confirm phase queued, as one terminal line:
    `neighbour of trial 3: trial 7  r16 qkvo lr1.9e-3  ppl 13.90  12 s`, or `replicate of trial 3 (seed 1): ...`."""
    attrs = trial.user_attrs
    what = f"neighbour of trial {attrs[ATTR_NEIGHBOUR_OF]}" if ATTR_NEIGHBOUR_OF in attrs else ""
    what = what or f"replicate of trial {attrs[ATTR_REPLICATE_OF]} (seed {attrs[ATTR_SEED]})"
    return f"{what}: trial {trial.number}  {attrs[ATTR_LABEL]}  ppl {eval_perplexity:.2f}  {seconds:.0f} s"


def confirm_line(trial, done: int, queued: int, measured: dict, seconds: float) -> str:
    """A confirmation as one terminal line:
    `confirm 1/4  trial 3 seed 0  r32 qkvo lr2.1e-3  test ppl 16.561 (base 18.692)  19 s`."""
    config, seed, label = trial.user_attrs[ATTR_CONFIG], trial.user_attrs[ATTR_SEED], trial.user_attrs[ATTR_LABEL]
    test, base = measured[METRIC_TEST_PERPLEXITY], measured[METRIC_BASE_TEST_PERPLEXITY]
    measured_text = f"test ppl {test:.3f} (base {base:.3f})"
    return f"confirm {done}/{queued}  trial {config} seed {seed}  {label}  {measured_text}  {seconds:.0f} s"


def _worker_main(plan: Plan, worker: int, threads: int, of_phase: str) -> None:
    """A spawned worker process: its own base and data, the shared study and MLflow store."""
    torch.set_num_threads(threads)
    tracking.set_tracking_uri(plan.tracking_uri)
    console.quiet()
    tracking_outages.say_once_per_outage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its lines are `explore_line`s
    _run_phase(Worker(plan), open_study(plan, worker), of_phase)


def _run_phase(worker: Worker, study: optuna.Study, of_phase: str) -> None:
    if of_phase == CONFIRM:
        worker.confirm(study)
    else:
        worker.optimize(study)


def run_workers(plan: Plan, worker0: Worker, study: optuna.Study, of_phase: str = EXPLORE) -> None:
    """One phase of the study: this process is worker 0; `n_workers - 1` more are spawned, the
    cores shared among them."""
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // plan.sweep.n_workers)
    torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    others = [
        context.Process(target=_worker_main, args=(plan, n, threads, of_phase), name=f"sweep-worker-{n}")
        for n in range(1, plan.sweep.n_workers)
    ]
    for process in others:
        process.start()
    try:
        _run_phase(worker0, study, of_phase)
    finally:
        for process in others:
            process.join()
    failed = [p.name for p in others if p.exitcode != 0]
    if failed:
        print(f"lora-study: warning: {', '.join(failed)} exited with an error; see its output above", file=sys.stderr)
