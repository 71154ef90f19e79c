"""The Optuna study of a sweep: where it is stored, how it samples and prunes, and its best trials.

Every worker, in this process or another, opens the study the same way from a `Plan` (plain
data, so spawned workers get it too). A trial whose worker died is failed by heartbeat, and its
MLflow run with it.
"""

import hashlib
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lora_study import parent_runs, tracking
from lora_study.config import BaseModelConfig, DataConfig, SweepConfig
from lora_study.errors import UserInputError
from lora_study.names import ALIAS_STUDY_PREFIX, GENERATION_OBJECTIVES, TAG_ALIAS_MOVE_PREFIX, TAG_TRIAL_STATE
from lora_study.sweep import search_space
from lora_study.sweep.storage import open_storage

# Heartbeats and multivariate TPE are marked experimental in Optuna; both are what a sweep needs.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ATTR_RUN_ID = "mlflow_run_id"  # Optuna user attribute: the trial's MLflow run
ATTR_PHASE = "phase"  # EXPLORE (sampled, pruned) or CONFIRM (enqueued: a configuration again, seeded)
ATTR_CONFIG = "config_trial"  # of a CONFIRM trial: the explore trial whose configuration it repeats
ATTR_SEED = "seed"  # of a CONFIRM trial
ATTR_STEPS = "steps"  # of a CONFIRM trial: its budget; a confirmation at another one is not reused
ATTR_RETRY_OF = "retry_of"  # of a trial queued again because its worker died: the trial it repeats
ATTR_LABEL = "label"  # the trial's adapter in a few characters (`r32 qkvo lr1.9e-3`), as its run is named
ATTR_RETRIES = "retries"  # ... and how many times its configuration has been lost so far
ATTR_NEIGHBOUR_OF = "neighbour_of"  # of an explore trial queued, unpruned, as a neighbour of that trial's configuration
ATTR_REPLICATE_OF = "replicate_of"  # of an explore trial queued to train that trial's configuration again (ATTR_SEED)
QUEUED = (ATTR_NEIGHBOUR_OF, ATTR_REPLICATE_OF)  # explore trials the confirm phase queues: neither sampled nor pruned
MAX_RETRIES = 3  # a configuration whose worker dies more often than this stays FAIL
EXPLORE, CONFIRM = "explore", "confirm"
# A study alias's length after its prefix: the alias-history tag key (`lora_study.alias_move.<alias>.<ms>`)
# stays within MLflow's 250 characters.
STUDY_ALIAS_LENGTH = 250 - len(TAG_ALIAS_MOVE_PREFIX) - len(".") - 13 - len(ALIAS_STUDY_PREFIX)
UNUSED = "unused"  # a trial Optuna made in the confirm phase when the queue was empty: counts nowhere
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
UNFINISHED_OR_DONE = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
# A trial whose worker sends no heartbeat for 2 intervals (parent_runs.HEARTBEAT_S) is failed by
# the next worker to look.


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


def default_study_name(cfg: SweepConfig, data: DataConfig, base: BaseModelConfig) -> str:
    """The same command names the same study, so running it again resumes it."""
    dataset = Path(data.dataset).stem if Path(data.dataset).suffix else data.dataset
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(cfg.config).stem}-{base.base_model}-{dataset}")


def study_alias(name: str) -> str:
    """The registry alias of a study's answer: `study-<name>`, in the characters an alias takes
    (ASCII letters, digits, `_`, `-`) and short enough for the alias-history tag's key (MLflow takes
    250 characters); a name that had to change gets its digest, so two names stay apart."""
    alias = re.sub(r"[^\w-]+", "-", name, flags=re.ASCII)
    if alias == name and len(alias) <= STUDY_ALIAS_LENGTH:
        return ALIAS_STUDY_PREFIX + alias
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{ALIAS_STUDY_PREFIX}{alias[: STUDY_ALIAS_LENGTH - len(digest) - 1]}-{digest}"


def default_storage() -> str:
    """SQLite beside the MLflow store (or in this folder when the store is not a local file)."""
    uri = tracking.tracking_uri()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def open_study(plan: Plan, worker: int = 0) -> optuna.Study:
    """Create the study, or load it to resume; every worker opens it the same way."""
    storage = open_storage(plan.storage, fail_stale_trial_run, plan.sweep.storage_wait_s)
    objectives = plan.sweep.objective_names
    try:
        return optuna.create_study(
            study_name=plan.study_name,
            storage=storage,
            load_if_exists=True,
            sampler=sampler(plan, worker),
            pruner=pruner(plan.sweep),
            directions=["maximize" if name in GENERATION_OBJECTIVES else "minimize" for name in objectives],
        )
    except ValueError as error:  # an existing study with other directions
        raise UserInputError(f"--study-name {plan.study_name}: {error}; pass another --study-name") from None


def sampler(plan: Plan, worker: int = 0):
    """The sampler every worker of the study draws with (benchmarks/study_replay.py replays it)."""
    seed = plan.data.split_seed + worker  # workers draw different trials from the same seed
    if plan.space.sampler == "grid":
        return optuna.samplers.GridSampler(plan.space.grid(), seed=seed)
    if plan.space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(3, plan.sweep.n_trials // 2))  # random trials before TPE models the space
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def pruner(cfg: SweepConfig):
    """The pruner of the explore phase: Hyperband (default), median, or none."""
    # Optuna prunes single objectives only; the trials report validation perplexity, so a study of
    # another objective (a generation score, a cost) is not pruned by it
    if cfg.pruner == "none" or cfg.objective_names != ["perplexity"]:
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.eval_every, max_resource=cfg.max_steps, reduction_factor=3
        )
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def fail_stale_trial_run(study: optuna.Study, trial) -> None:
    """A trial whose worker died: its MLflow run is ended FAILED, not left RUNNING, and the trial
    is queued again (`retry`)."""
    run_id = trial.user_attrs.get(ATTR_RUN_ID)
    if run_id:
        reason = "its worker stopped sending heartbeats (killed or crashed)"
        parent_runs.fail_run(run_id, reason, **{TAG_TRIAL_STATE: TrialState.FAIL.name})
    retry(study, trial)


def retry(study: optuna.Study, trial) -> None:
    """Queue a trial lost with its worker again, with its params and phase, naming the trial it
    repeats; the lost one then counts nowhere. A trial that failed on its own (NaN, out of
    memory) is a result and is not retried; nor is one lost `MAX_RETRIES` times already."""
    retries = trial.user_attrs.get(ATTR_RETRIES, 0) + 1
    if phase(trial) == UNUSED or retries > MAX_RETRIES:
        return
    attrs = {key: value for key, value in trial.user_attrs.items() if key != ATTR_RUN_ID}  # not its run
    attrs.update({ATTR_RETRY_OF: trial.number, ATTR_RETRIES: retries})
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, user_attrs=attrs
        )
    )


def lost(study: optuna.Study) -> set[int]:
    """Trials lost with their worker and queued again: neither a result nor a failure."""
    return {t.user_attrs[ATTR_RETRY_OF] for t in study.get_trials(deepcopy=False) if ATTR_RETRY_OF in t.user_attrs}


def phase(trial) -> str:
    return trial.user_attrs.get(ATTR_PHASE, EXPLORE)


def trials_of(study: optuna.Study, of_phase: str, states=None) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=states) if phase(t) == of_phase]


def finished(study: optuna.Study) -> int:
    """Finished explore trials, those lost with their worker left out: what `--n-trials` counts."""
    gone = lost(study)
    return len([t for t in trials_of(study, EXPLORE, FINISHED) if sampled(t) and t.number not in gone])


def sampled(trial) -> bool:
    """Whether an explore trial was drawn by the sampler (not queued by the confirm phase)."""
    return not any(attr in trial.user_attrs for attr in QUEUED)


def configurations(study: optuna.Study) -> list:
    """The complete explore trials, each of a configuration: a replicate (the same configuration
    with another seed) measures noise, and is no candidate."""
    return [t for t in trials_of(study, EXPLORE, (TrialState.COMPLETE,)) if ATTR_REPLICATE_OF not in t.user_attrs]


def best_trials(study: optuna.Study) -> list:
    """The best explore trial, or for several objectives their Pareto front, best first objective first."""
    losses = _as_losses(study)
    complete = sorted(configurations(study), key=losses)
    if len(study.directions) == 1:
        return complete[:1]
    return [t for t in complete if not any(_dominates(losses(other), losses(t)) for other in complete)]


def _as_losses(study: optuna.Study):
    """A trial's values, each turned so that lower is better (a maximized objective negated)."""
    signs = [-1 if d == optuna.study.StudyDirection.MAXIMIZE else 1 for d in study.directions]
    return lambda trial: [sign * value for sign, value in zip(signs, trial.values)]


def _dominates(a: list, b: list) -> bool:
    return all(x <= y for x, y in zip(a, b)) and a != b


def to_confirm(study: optuna.Study, top: int) -> list:
    """The `top` distinct configurations of complete sampled explore trials, best first objective first."""
    chosen, losses = [], _as_losses(study)
    complete = [t for t in trials_of(study, EXPLORE, (TrialState.COMPLETE,)) if sampled(t)]
    for trial in sorted(complete, key=lambda t: losses(t)[0]):
        if len(chosen) < top and all(trial.params != other.params for other in chosen):
            chosen.append(trial)
    return chosen


def queue_neighbours(study: optuna.Study, best, space: search_space.SearchSpace, factors: list[str]) -> list:
    """The explore trials of `best`'s neighbours (`SearchSpace.neighbours`): one the study holds
    already (explored, queued or running), else one queued now, to train at the explore budget
    unpruned in the confirm phase. They give the confirm phase pairs that differ in one factor."""
    trials = []
    for params in space.neighbours(best.params, factors):
        held = [t for t in trials_of(study, EXPLORE, UNFINISHED_OR_DONE) if t.params == params]
        held = [t for t in held if ATTR_REPLICATE_OF not in t.user_attrs]
        trials.append(held[0] if held else _queue(study, best, params, {ATTR_NEIGHBOUR_OF: best.number}))
    return trials


def queue_replicates(study: optuna.Study, count: int, seed: int) -> list:
    """The first `count` complete sampled explore trials (by number, not by value: a configuration
    chosen for its low figure would come out worse with any other seed, and inflate the noise)
    trained again at the explore budget with `seed`, queued once: the noise of explore-budget
    figures, measured at their budget and split."""
    trials = []
    for config in [t for t in trials_of(study, EXPLORE, (TrialState.COMPLETE,)) if sampled(t)][:count]:
        held = [
            t
            for t in trials_of(study, EXPLORE, UNFINISHED_OR_DONE)
            if t.user_attrs.get(ATTR_REPLICATE_OF) == config.number
        ]
        attrs = {ATTR_REPLICATE_OF: config.number, ATTR_SEED: seed}
        trials.append(held[0] if held else _queue(study, config, config.params, attrs))
    return trials


def _queue(study: optuna.Study, like, params: dict, attrs: dict):
    """A WAITING explore trial of `params` (drawn from `like`'s distributions) with `attrs`: the
    confirm phase's workers run it."""
    attrs = {ATTR_PHASE: EXPLORE, **attrs}
    trial = optuna.create_trial(
        state=TrialState.WAITING, params=params, distributions=like.distributions, user_attrs=attrs
    )
    study.add_trial(trial)
    waiting = trials_of(study, EXPLORE, (TrialState.WAITING,))
    return max(
        (t for t in waiting if t.params == params and all(t.user_attrs.get(k) == v for k, v in attrs.items())),
        key=lambda t: t.number,
    )


def queued(study: optuna.Study) -> bool:
    """Whether trials wait in the queue (the confirm phase's, or one lost with its worker)."""
    optuna.storages.fail_stale_trials(study)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def wait_for_explore(study: optuna.Study) -> None:
    """Return once no explore trial runs, here or on another machine (a dead worker's is failed
    by heartbeat): the configurations to confirm are chosen from a finished explore phase."""
    while True:
        optuna.storages.fail_stale_trials(study)
        if not trials_of(study, EXPLORE, (TrialState.RUNNING,)):
            return
        time.sleep(parent_runs.HEARTBEAT_S)


def wait_for_confirmations(study: optuna.Study) -> bool:
    """Wait while confirmations (and the explore trials the confirm phase queued) run on other
    workers; True once one is queued (again: its worker died), False once none runs. Registration
    and the report then see every seed of every configuration."""
    while True:
        optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not [t for t in running if phase(t) == CONFIRM or not sampled(t)]:
            return False
        time.sleep(parent_runs.HEARTBEAT_S)


def enqueue_confirmations(study: optuna.Study, configs: list, seeds: list[int], steps: int) -> int:
    """Queue each (configuration, seed) not yet confirmed, queued or running at `steps`; how many
    were queued. Stale trials are failed first, so a confirmation whose worker was killed is
    queued again."""
    optuna.storages.fail_stale_trials(study)
    held = {_job(t) for t in trials_of(study, CONFIRM, UNFINISHED_OR_DONE)}
    missing = [(config, seed) for config in configs for seed in seeds if (config.number, seed, steps) not in held]
    for config, seed in missing:
        attrs = {ATTR_PHASE: CONFIRM, ATTR_CONFIG: config.number, ATTR_SEED: seed, ATTR_STEPS: steps}
        study.enqueue_trial(config.params, user_attrs=attrs)
    return len(missing)


def taken_by(study: optuna.Study, trial) -> int | None:
    """The earlier confirmation of the same job (configuration, seed, steps) that finished or runs,
    if any: sweeps on several machines queue the same ones at once, and one run of each is enough."""
    job = _job(trial)
    for other in trials_of(study, CONFIRM, UNFINISHED_OR_DONE):
        if other.number < trial.number and other.state != TrialState.WAITING and _job(other) == job:
            return other.number
    return None


def _job(trial) -> tuple[int, int, int]:
    return trial.user_attrs[ATTR_CONFIG], trial.user_attrs[ATTR_SEED], trial.user_attrs.get(ATTR_STEPS)


def confirmations(study: optuna.Study, config: int, steps: int) -> list:
    """The complete confirmations of the configuration of explore trial `config` at `steps`, one
    per seed (should two workers on two machines have queued the same one)."""
    done = {}
    for trial in trials_of(study, CONFIRM, (TrialState.COMPLETE,)):
        number, seed, at = _job(trial)
        if number == config and at == steps:
            done.setdefault(seed, trial)
    return list(done.values())


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances of the first objective; none until two complete trials differ, in their
    settings and in their values (fANOVA finds no variance to share out otherwise)."""
    complete = configurations(study)
    if len(complete) < 2 or not any(t.params != complete[0].params for t in complete):
        return {}
    if len({t.values[0] for t in complete}) < 2:  # a score of 0 for every trial, say
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a study the user needs told of
    explored = optuna.create_study(directions=study.directions)  # in memory: confirmations left out
    optuna.logging.set_verbosity(verbosity)
    explored.add_trials(complete)
    return optuna.importance.get_param_importances(explored, evaluator=evaluator, target=lambda t: t.values[0])
