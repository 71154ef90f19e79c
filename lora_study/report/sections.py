"""The report of a study: its answer as one page, every sentence derived from its runs.

`build` turns what a study left in MLflow (a `StudyRuns`, read back by `read`) into six sections,
in this order: the answer (`answer`), trade-offs, effects of each factor (`effects`), how the study
ran, every trial, provenance. `render` makes them one self-contained HTML file and its Markdown twin.
"""

import pandas as pd

from lora_study import plots
from lora_study.names import (
    COLUMN_CONFIG_TRIAL,
    COLUMN_STEPS,
    METRIC_DOCUMENTS,
    METRIC_EVAL_PERPLEXITY,
    METRIC_STOPPED_EARLY,
    METRIC_TEST_PERPLEXITY,
    METRIC_TOKENS,
    PARAM_BASE_MODEL,
    PARAM_BASE_MODEL_SHA256,
    PARAM_DATA,
    PARAM_DATASET,
    PARAM_DATASET_DIGEST,
    PARAM_DECONTAMINATE_NGRAM,
    PARAM_DECONTAMINATION,
    PARAM_DETECTED_FORMAT,
    PARAM_EARLY_STOPPING_PATIENCE,
    PARAM_FORMAT,
    PARAM_MAX_STEPS,
    PARAM_OBJECTIVES,
    PARAM_PRUNER,
    PARAM_SAMPLER,
    PARAM_SEQ_LEN,
    PARAM_SPLIT_SEED,
    PARAM_STORAGE,
    SPLITS,
    TAG_MLFLOW_COMMIT,
    TAG_MLFLOW_ENTRY_POINT,
    TAG_MLFLOW_SOURCE,
    TAG_NEIGHBOUR_OF,
    TAG_REPLICATE_OF,
    TAG_RETRY_OF,
    TAG_SEED,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_STATE,
)
from lora_study.report.answer import CONFIG_PARAMS, answer
from lora_study.report.effects import factors
from lora_study.report.read import COLUMN_DURATION_S, StudyRuns
from lora_study.report.render import Code, Figure, Heading, Items, Section, Table, duration
from lora_study.tracking import ui_run_link

COLUMN_PHASE = "phase"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` listens


# --- the document ------------------------------------------------------------------------------


def build(study: StudyRuns, ui_url: str = DEFAULT_UI_URL) -> list[Section]:
    """The report's sections, in reading order."""
    return [
        answer(study),
        tradeoffs(study),
        factors(study),
        how_it_ran(study),
        every_trial(study, ui_url),
        provenance(study, ui_url),
    ]


# --- 2. trade-offs ----------------------------------------------------------------------------------


def tradeoffs(s: StudyRuns) -> Section:
    complete = s.trials[s.trials[TAG_TRIAL_STATE] == plots.COMPLETE]
    if complete.empty:
        return Section("tradeoffs", "Trade-offs", ["No trial completed: there is nothing to trade off."])
    on_front: dict[int, list[str]] = {}
    for cost, label, higher in plots.TRADEOFFS:
        if cost in complete and complete[cost].notna().any():
            for number in plots.pareto_front(complete, cost, METRIC_EVAL_PERPLEXITY, higher)[TAG_TRIAL_NUMBER]:
                on_front.setdefault(int(number), []).append(label.split(" (")[0].split(",")[0])
    if not on_front:
        return Section("tradeoffs", "Trade-offs", ["The complete trials recorded none of the costs."])
    front = complete[complete[TAG_TRIAL_NUMBER].isin(on_front)].copy()
    front["on the front of"] = [", ".join(on_front[int(n)]) for n in front[TAG_TRIAL_NUMBER]]
    columns = [TAG_TRIAL_NUMBER, *_varied(complete, CONFIG_PARAMS), METRIC_EVAL_PERPLEXITY]
    columns += [c for c, _, _ in plots.TRADEOFFS if c in front] + ["on the front of"]
    return Section(
        "tradeoffs",
        "Trade-offs",
        [
            "Validation perplexity of every complete explore trial against what it costs. A trial is on a cost's "
            "Pareto front when no other trial is better on both perplexity and that cost.",
            Figure("tradeoffs", plots.to_svg(plots.tradeoffs(s.trials)), "Perplexity against each cost"),
            Table(front[columns].sort_values(METRIC_EVAL_PERPLEXITY)),
        ],
    )


# --- 4. how the study ran -------------------------------------------------------------------------


def _queued_text(trials: pd.DataFrame) -> str:
    """How many explore trials the confirm phase queued, unpruned: the best configuration's
    neighbours, and configurations trained again with another seed."""
    said = ""
    for tag, text in (
        (TAG_NEIGHBOUR_OF, "{n} of them neighbours of trial {of}, queued unpruned to be confirmed beside it"),
        (TAG_REPLICATE_OF, "{n} of trial(s) {of} trained again with another seed, the explore budget's noise"),
    ):
        if tag in trials and trials[tag].notna().any():
            of = sorted({int(n) for n in trials[tag].dropna()})
            said += "; " + text.format(n=int(trials[tag].notna().sum()), of=", ".join(map(str, of)))
    return said


def how_it_ran(s: StudyRuns) -> Section:
    gone = _lost(s.trials)
    states, p = s.trials[~s.trials[TAG_TRIAL_NUMBER].isin(gone)][TAG_TRIAL_STATE].value_counts(), s.params
    counts = f"{states.get(plots.COMPLETE, 0)} complete, {states.get(plots.PRUNED, 0)} pruned, "
    counts += f"{states.get(plots.FAIL, 0)} failed" + (
        f", {len(gone)} lost with their worker and run again" if gone else ""
    )
    counts += _queued_text(s.trials)
    blocks = [
        Items(
            (
                f"Explore: {len(s.trials) - len(gone)} trials of {p.get(PARAM_MAX_STEPS, '?')} steps each ({counts}); "
                "sampler "
                f"{p.get(PARAM_SAMPLER, '?')}, pruner {p.get(PARAM_PRUNER, '?')}, "
                f"objectives {p.get(PARAM_OBJECTIVES, '?')}.",
                _confirm_text(s),
                f"Time: {duration(s.wall_s)} wall-clock; {duration(s.trials[COLUMN_DURATION_S].sum())} in explore "
                f"trials, {duration(s.confirmations[COLUMN_DURATION_S].sum())} in confirmations.",
                _pruning_text(s.trials),
                *_early_stopping_text(s),
            )
        )
    ]
    if s.importances:
        blocks += [
            Heading("Parameter importances"),
            "fANOVA over the complete explore trials: each searched parameter's share of the variance of the "
            "first objective.",
            Table(pd.DataFrame({"parameter": list(s.importances), "importance": list(s.importances.values())})),
        ]
    else:
        blocks.append("Parameter importances: not computed (they need two complete trials that differ).")
    finished = s.trials[s.trials[TAG_TRIAL_STATE].isin([plots.COMPLETE, plots.PRUNED])]
    if not finished.empty and finished[METRIC_EVAL_PERPLEXITY].notna().any():
        history = plots.to_svg(plots.optimization_history(s.trials))
        blocks.append(Figure("optimization_history", history, "Validation perplexity by trial"))
    blocks += [Heading(f"Search space: {s.space_file or 'not recorded'}"), Code(s.space_text or "")]
    return Section("how-it-ran", "How the study ran", blocks)


def _lost(runs: pd.DataFrame) -> set[int]:
    """Trials whose worker died and that ran again (a later run names them `retry_of`)."""
    return {int(n) for n in runs[TAG_RETRY_OF].dropna()} if TAG_RETRY_OF in runs else set()


def _confirm_text(s: StudyRuns) -> str:
    c = s.confirmations
    if c.empty:
        return "Confirm: no configuration was confirmed (--confirm-top 0, or no complete trial)."
    states = c[TAG_TRIAL_STATE].value_counts()
    return (
        f"Confirm: {c[COLUMN_CONFIG_TRIAL].nunique()} configurations x {c[TAG_SEED].nunique()} seeds at "
        f"{_steps(c)} steps each, on the test split "
        f"({states.get(plots.COMPLETE, 0)} complete, {states.get(plots.FAIL, 0)} failed)."
    )


def _steps(runs: pd.DataFrame) -> str:
    return "/".join(str(int(n)) for n in sorted(runs[COLUMN_STEPS].dropna().unique())) or "?"


def _pruning_text(trials: pd.DataFrame) -> str:
    """Time saved by pruning, estimated as what each pruned trial would have taken at the mean
    duration of a complete trial, less what it took."""
    pruned = trials[trials[TAG_TRIAL_STATE] == plots.PRUNED]
    complete = trials[trials[TAG_TRIAL_STATE] == plots.COMPLETE]
    if pruned.empty:
        return "Pruning: no trial was pruned."
    if complete.empty:
        return f"Pruning: {len(pruned)} trials pruned; no complete trial to estimate the time saved from."
    full = complete[COLUMN_DURATION_S].mean()
    saved = (full - pruned[COLUMN_DURATION_S]).clip(lower=0).sum()
    return (
        f"Pruning: {len(pruned)} trials stopped early, taking {duration(pruned[COLUMN_DURATION_S].sum())}; at the "
        f"mean duration of a complete trial ({duration(full)}) they would have taken {duration(full * len(pruned))}: "
        f"about {duration(saved)} saved."
    )


def _early_stopping_text(s: StudyRuns) -> list[str]:
    """With --early-stopping-patience: the runs it ended before their planned steps, and the steps
    trained against those planned (the budget the study used)."""
    patience = s.params.get(PARAM_EARLY_STOPPING_PATIENCE, "0")
    if float(patience) == 0:
        return []
    runs = pd.concat([s.trials, s.confirmations], ignore_index=True)
    runs = runs[runs[TAG_TRIAL_STATE] == plots.COMPLETE]
    stopped = runs[METRIC_STOPPED_EARLY].fillna(0) if METRIC_STOPPED_EARLY in runs else pd.Series(0, runs.index)
    trained = stopped.where(stopped > 0, runs[COLUMN_STEPS])
    return [
        f"Early stopping (--early-stopping-patience {patience}): {int((stopped > 0).sum())} of "
        f"{len(runs)} complete runs stopped before their planned steps; they trained {trained.sum():.0f} of "
        f"{runs[COLUMN_STEPS].sum():.0f} planned steps in all."
    ]


# --- 5. every trial -------------------------------------------------------------------------------


def every_trial(s: StudyRuns, ui_url: str) -> Section:
    frame = pd.concat(
        [s.trials.assign(**{COLUMN_PHASE: "explore"}), s.confirmations.assign(**{COLUMN_PHASE: "confirm"})]
    )
    frame = frame.sort_values(TAG_TRIAL_NUMBER).reset_index(drop=True)
    columns = [TAG_TRIAL_NUMBER, COLUMN_PHASE, TAG_TRIAL_STATE, COLUMN_CONFIG_TRIAL, TAG_SEED, *CONFIG_PARAMS]
    columns += [METRIC_EVAL_PERPLEXITY, METRIC_TEST_PERPLEXITY, *plots.METRICS, COLUMN_DURATION_S]
    shown = [TAG_TRIAL_NUMBER] + _varied(frame, dict.fromkeys(columns[1:]))
    links = [f"{ui_url.rstrip('/')}/{ui_run_link(s.experiment_id, run_id)}" for run_id in frame["run_id"]]
    return Section(
        "trials",
        "Every trial",
        [
            "One row per trial and confirmation, with only the columns that vary; a trial's number opens its "
            "MLflow run.",
            Table(frame[shown], links={TAG_TRIAL_NUMBER: links}),
        ],
    )


def _varied(frame: pd.DataFrame, columns) -> list[str]:
    return [c for c in columns if c in frame and frame[c].astype(str).nunique(dropna=True) > 1]


# --- 6. provenance --------------------------------------------------------------------------------


def provenance(s: StudyRuns, ui_url: str) -> Section:
    p, m = s.params, s.metrics
    splits = ", ".join(
        f"{split} {int(m[METRIC_DOCUMENTS.format(split=split)])} documents / "
        f"{int(m[METRIC_TOKENS.format(split=split)]):,} tokens"
        for split in SPLITS
        if METRIC_TOKENS.format(split=split) in m and METRIC_DOCUMENTS.format(split=split) in m
    )
    rows = {
        "base model": p.get(PARAM_BASE_MODEL, "?"),
        "base model sha256": p.get(PARAM_BASE_MODEL_SHA256) or "not recorded",
        "dataset": f"{p.get(PARAM_DATASET, '?')} (format {p.get(PARAM_DETECTED_FORMAT, p.get(PARAM_FORMAT, '?'))}, "
        f"seq_len {p.get(PARAM_SEQ_LEN, '?')}, split seed {p.get(PARAM_SPLIT_SEED, '?')})",
        "prepared data": p.get(PARAM_DATA) or "prepared by the sweep",
        "dataset digest": p.get(PARAM_DATASET_DIGEST) or "not recorded",
        "split sizes": splits or "not recorded",
        "decontamination": f"{p.get(PARAM_DECONTAMINATION, 'not recorded')} "
        f"({p.get(PARAM_DECONTAMINATE_NGRAM, '?')}-token spans)",
        "hardware": s.environment.get("machine", "not recorded"),
        "packages": ", ".join(f"{k} {v}" for k, v in s.environment.get("packages", {}).items()) or "not recorded",
        "study": f"{s.name}, Optuna storage {p.get(PARAM_STORAGE, '?')}",
        "MLflow": f"experiment {s.experiment_id}, parent run {s.parent_run_id}",
    }
    commands = [f"# the sweep\n{s.command or 'not recorded'}"]
    if TAG_MLFLOW_ENTRY_POINT in s.tags:
        source = s.tags.get(TAG_MLFLOW_SOURCE, "?") + (
            f" (commit {s.tags[TAG_MLFLOW_COMMIT]})" if TAG_MLFLOW_COMMIT in s.tags else ""
        )
        commands[0] = (
            f"# the sweep: `mlflow run` of entry point {s.tags[TAG_MLFLOW_ENTRY_POINT]} of {source}, "
            f"which ran\n{s.command}"
        )
    commands += [
        f"# this report\nlora-study report runs:/{s.parent_run_id} --ui-url {ui_url}",
    ]
    return Section(
        "provenance",
        "Provenance",
        [Table(pd.DataFrame({"": list(rows), "value": list(rows.values())})), Code("\n\n".join(commands))],
    )
