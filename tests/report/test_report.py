"""The report's sections, built from a constructed study: the answer and its rule, the fronts,
the findings, the time pruning saved, the trials table with only what varies, and both renderings."""

import dataclasses
import re

import pandas as pd
import pytest
from conftest import ECHO_TEST_DATA

import lora_study.report.answer as answer_section
from lora_study.report import effects, render
from lora_study.report import sections as report_sections
from lora_study.report.read import StudyRuns, Version

TRIALS = pd.DataFrame(
    {
        "trial_number": [0, 1, 2, 3],
        "trial_state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
        "run_id": ["r0", "r1", "r2", "r3"],
        "rank": [8, 32, 8, 32],
        "alpha": [16.0, 64.0, 16.0, 64.0],
        "target_modules": ["qv", "qkvo", "qv", "qv"],
        "learning_rate": [1e-3, 2e-3, 1e-4, 5e-4],
        "quantization": ["none"] * 4,
        "dropout": [0.05] * 4,
        "eval_perplexity": [12.0, 11.0, 15.0, 11.9],
        "forgetting_kl": [0.1, 0.2, None, 0.15],
        "peak_memory_mb": [500.0, 700.0, 480.0, 650.0],
        "trainable_params": [100_000, 800_000, 100_000, 400_000],
        "train_tokens_per_s": [120.0, 100.0, 125.0, 110.0],
        "adapter_size_mb": [0.4, 3.2, 0.4, 1.6],
        "duration_s": [60.0, 70.0, 20.0, 65.0],
    }
)
CONFIRMATIONS = pd.DataFrame(
    {
        "trial_number": [4, 5, 6, 7],
        "trial_state": ["COMPLETE"] * 4,
        "run_id": ["c4", "c5", "c6", "c7"],
        "rank": [32, 32, 32, 32],
        "alpha": [64.0] * 4,
        "target_modules": ["qkvo", "qkvo", "qv", "qv"],
        "learning_rate": [2e-3, 2e-3, 5e-4, 5e-4],
        "eval_perplexity": [10.5, 10.6, 11.2, 11.3],
        "forgetting_kl": [0.2, 0.22, 0.12, 0.14],
        "forgetting_loss_delta": [0.3, 0.32, 0.1, 0.12],
        "peak_memory_mb": [700.0, 702.0, 650.0, 652.0],
        "trainable_params": [800_000, 800_000, 400_000, 400_000],
        "train_tokens_per_s": [100.0, 102.0, 110.0, 112.0],
        "adapter_size_mb": [3.2, 3.2, 1.6, 1.6],
        "duration_s": [200.0, 210.0, 190.0, 195.0],
        "config_trial": [1, 1, 3, 3],
        "seed": [0, 1, 0, 1],
        "steps": [12, 12, 12, 12],
        "test_perplexity": [10.0, 10.2, 10.1, 10.3],
        "base_test_perplexity": [12.5] * 4,
    }
)
CONFIRMED = pd.DataFrame(  # as the sweep logs it: the Optuna params of each configuration
    {
        "config_trial": [1, 3],
        "rank": [32, 32],
        "alpha_per_rank": [2, 2],
        "target_modules": ["qkvo", "qv"],
        "learning_rate": [2e-3, 5e-4],
        "seeds": [2, 2],
        "steps": [12, 12],
        "test_perplexity_mean": [10.1, 10.2],
        "test_perplexity_std": [0.1414, 0.1414],
        "test_perplexity_stderr": [0.1, 0.1],
        "trainable_params": [800_000, 400_000],
        "peak_memory_mb": [701.0, 651.0],
        "recommended": [False, True],
        "version": [1, 2],
    }
)
STATEMENT = "recommended: the configuration of trial 3 (test perplexity 10.200 +- 0.141, n=2), the cheapest within 1"


def study(**changes) -> StudyRuns:
    fields = dict(
        name="default-smollm2-135m-python-docs",
        experiment_id="7",
        parent_run_id="p1",
        params={
            "max_steps": "4",
            "sampler": "tpe",
            "pruner": "hyperband",
            "objectives": "perplexity",
            "recommend": "cheapest-within-se",
            "within_se": "1.0",
            "base_model": "smollm2-135m",
            "base_model_sha256": "ab" * 32,
            "dataset": "python-docs",
            "dataset_digest": "d1g3st",
        },
        metrics={"seed_std_test_perplexity": 0.1414, "train_tokens": 96000, "train_documents": 50},
        tags={"lora_study.recommendation": STATEMENT},
        trials=TRIALS,
        confirmations=CONFIRMATIONS,
        confirmed=CONFIRMED,
        versions=[
            Version("models:/lora-study-smollm2-135m/1", (), {"config_trial": "1"}),
            Version("models:/lora-study-smollm2-135m/2", ("challenger",), {"config_trial": "3"}),
        ],
        importances={"learning_rate": 0.7, "rank": 0.2, "target_modules": 0.1},
        searched=("rank", "alpha_per_rank", "target_modules", "learning_rate"),
        ranges={"learning_rate": (1e-4, 3e-3), "rank": (4, 32), "alpha_per_rank": (1, 2)},
        space_file="default.yaml",
        space_text="sampler: tpe\nspace:\n  rank: [8, 32]\n",
        environment={"machine": "CPU Test, 2 cores", "packages": {"torch": "2.13.0"}},
        command="lora-study sweep",
        wall_s=600.0,
    )
    return StudyRuns(**{**fields, **changes})


def section(sections, id_):
    return next(s for s in sections if s.id == id_)


def texts(section) -> str:
    return "\n".join(
        block if isinstance(block, str) else "\n".join(block.texts) if isinstance(block, render.Items) else ""
        for block in section.blocks
    )


def test_the_sections_come_in_the_order_a_reader_needs_them():
    assert [s.id for s in report_sections.build(study())] == [
        "answer",
        "tradeoffs",
        "factors",
        "how-it-ran",
        "trials",
        "provenance",
    ]


def test_the_answer_states_the_recommendation_its_numbers_and_its_rule():
    answer = answer_section.answer(study())
    assert answer.blocks[0] == STATEMENT
    facts = dict(zip(answer.blocks[1].frame[""], answer.blocks[1].frame["value"]))
    assert facts["test perplexity"] == "10.200 +- 0.141 over 2 seeds; base model 12.500 (18.4% lower)"
    assert facts["forgetting"] == "KL(base || adapter) 0.130 nats/token; loss on general text +0.110 against the base"
    assert facts["peak memory"] == "651 MB" and facts["train tokens/s"] == "111"
    assert facts["adapter size"] == "1.60 MB (400,000 trainable parameters)"
    assert facts["registered as"] == "models:/lora-study-smollm2-135m/2 (@challenger)"
    assert (
        facts["configuration"]
        == "rank 32, alpha 64, target modules qv, learning rate 0.0005, quantization none, dropout 0.05"
    )
    why = answer.blocks[2]
    assert "within 1 standard error(s) of the best mean (10.100, standard error 0.100: up to 10.200)" in why
    assert why.endswith("2 of 2 confirmed configurations were accepted.")


def test_without_confirmations_the_answer_says_it_makes_no_recommendation():
    answer = answer_section.answer(study(confirmed=None, confirmations=CONFIRMATIONS.iloc[:0]))
    assert "(--confirm-top 0, or no confirmation completed), so it makes no recommendation" in answer.blocks[0]
    assert "Its best explore trial was trial 1: rank 32, alpha 64, target modules qkvo" in answer.blocks[0]
    no_trials = answer_section.answer(study(confirmed=None, trials=TRIALS.assign(trial_state="PRUNED")))
    assert no_trials.blocks[0].startswith("No trial completed")


def test_the_tradeoffs_mark_each_cost_s_pareto_front():
    tradeoffs = report_sections.tradeoffs(study())
    assert tradeoffs.blocks[1].svg.lstrip().startswith("<?xml")
    front = tradeoffs.blocks[2].frame.set_index("trial_number")["on the front of"].to_dict()
    # trial 1: best perplexity; trial 0: least memory, fastest, smallest, forgets least; trial 3 is between
    assert front[1] == "peak memory, train tokens/s, adapter size, forgetting"
    assert front[0] == "peak memory, train tokens/s, adapter size, forgetting"
    assert front[3] == "peak memory, train tokens/s, adapter size, forgetting"


def test_each_searched_factor_gets_a_finding_by_its_rule():
    factors = effects.factors(study())
    text = texts(factors)
    # rank is read per preset: with qkvo only rank 32 completed; with qv, rank 8's best (trial 0, 12.0)
    # and rank 32's (trial 3, 11.9) ran at other learning rates: the comparison measures those too
    assert "rank: only rank 32 has a complete trial; nothing to compare." in text
    assert (
        "rank 32 has the best validation perplexity at the explore budget (11.900), 0.100 ahead of rank 8; not "
        "decided: those figures also differ in learning rate (rank 8: 0.001; rank 32: 0.0005), so they do not "
        "isolate rank." in text
    )
    assert [b.text for b in factors.blocks if isinstance(b, render.Heading)] == [
        "rank, with qkvo",
        "rank, with qv",
        "target modules",
        "learning rate",
    ]
    # qkvo's best (trial 1) and qv's (trial 3) differ in learning rate, and so do the two confirmed
    # configurations (trials 1 and 3): nothing matched, nothing decided
    assert "qkvo has the best validation perplexity at the explore budget (11.000), 0.900 ahead of qv" in text
    assert "learning rate (qkvo: 0.002; qv: 0.0005), so they do not isolate target modules." in text
    assert "learning rate: 3 complete trials at 3 values; the trend rule needs 5" in text
    qv = next(b for b in factors.blocks if isinstance(b, render.Table) and "rank 8" in list(b.frame.level))
    # the confirmed configuration at rank 32 with qv is trial 3's, not trial 1's (qkvo)
    assert list(qv.frame["confirmed: test perplexity"]) == ["", "10.200 +- 0.141 (n=2)"]


def test_confirmed_configurations_that_differ_in_one_factor_alone_decide_it():
    """Trials 1 and 3 confirmed at the same rank, alpha and learning rate: target modules alone differ,
    by 0.7 ppl in the seeds' means, more than twice the noise of two 2-seed means (0.141)."""
    trials = TRIALS.assign(learning_rate=[1e-3, 5e-4, 1e-4, 5e-4])
    confirmed = CONFIRMED.assign(learning_rate=[5e-4, 5e-4], test_perplexity_mean=[10.1, 10.8])
    text = texts(effects.factors(study(trials=trials, confirmed=confirmed)))
    assert "qkvo beats qv by 6.5% perplexity (0.700 ppl; seed std 0.141) at 1.08x peak memory." in text


def test_the_default_studys_confirmed_pair_differs_in_alpha_and_learning_rate_and_decides_nothing():
    """As in the default study: trials 1 and 3 confirmed at rank 32 qkvo, alpha 64 at 1.9e-3 against
    alpha 32 at 2.1e-3; explore trials of all-linear and qkvo at other ranks and learning rates."""
    trials = TRIALS.assign(
        rank=[8, 32, 4, 32],
        alpha=[16.0, 64.0, 8.0, 32.0],
        target_modules=["all-linear", "qkvo", "qkvo", "qkvo"],
        learning_rate=[3.7e-4, 1.9e-3, 4.1e-4, 2.1e-3],
        eval_perplexity=[14.80, 13.83, 14.99, 13.72],
    )
    confirmed = CONFIRMED.assign(
        target_modules=["qkvo", "qkvo"],
        alpha_per_rank=[2, 1],
        learning_rate=[1.9e-3, 2.1e-3],
        test_perplexity_mean=[16.15, 16.42],
    )
    factors = effects.factors(
        study(
            trials=trials, confirmed=confirmed, searched=("rank", "alpha_per_rank", "target_modules", "learning_rate")
        )
    )
    decided = [
        b
        for b in factors.blocks[1:]
        if isinstance(b, str) and " suffices" in b or isinstance(b, str) and " beats " in b
    ]
    assert decided == []
    assert "not decided: those figures also differ in" in texts(factors)


def test_rank_says_how_many_directions_the_best_adapter_at_each_level_used():
    trials = TRIALS.assign(update_energy_rank_90_median=[4.0, 6.0, 3.0, 5.0])
    text = texts(effects.factors(study(trials=trials)))
    assert "in this many directions: rank 8 in 4; rank 32 in 5." in text  # with qv: trials 0 and 3
    assert "in this many directions" not in texts(effects.factors(study()))  # a study from before they were logged


def test_a_factor_without_a_seed_spread_is_left_undecided():
    one_seed = CONFIRMED.assign(seeds=1, test_perplexity_std=0.0)
    matched = TRIALS.assign(learning_rate=1e-3)  # rank 8 and rank 32 with qv now differ in rank alone
    text = texts(effects.factors(study(trials=matched, confirmed=one_seed)))
    assert "Noise: no seed spread" in text
    assert "cannot tell whether that is more than noise" in text


def test_how_it_ran_counts_trials_and_estimates_the_time_pruning_saved():
    ran = texts(report_sections.how_it_ran(study()))
    assert "Explore: 4 trials of 4 steps each (3 complete, 1 pruned, 0 failed); sampler tpe, pruner hyperband" in ran
    assert "Confirm: 2 configurations x 2 seeds at 12 steps each, on the test split (4 complete, 0 failed)." in ran
    assert "Time: 10.0 min wall-clock; 3.6 min in explore trials, 13.2 min in confirmations." in ran
    # a complete trial took 65 s on average; the pruned one took 20 s
    assert "Pruning: 1 trials stopped early, taking 20 s; at the mean duration of a complete trial (65 s)" in ran
    assert "about 45 s saved." in ran


def test_every_trial_is_one_row_linked_to_its_run_with_only_the_columns_that_vary():
    table = report_sections.every_trial(study(), "http://ui:5000/").blocks[1]
    assert list(table.frame.trial_number) == list(range(8))
    assert "quantization" not in table.frame and "dropout" not in table.frame  # the same in every row
    assert {"phase", "rank", "learning_rate", "test_perplexity", "seed"} <= set(table.frame)
    assert table.links["trial_number"][0] == "http://ui:5000/#/experiments/7/runs/r0?workflowType=machine_learning"


def test_provenance_names_the_base_the_data_the_machine_and_the_commands():
    prov = report_sections.provenance(study(), "http://127.0.0.1:5000")
    facts = dict(zip(prov.blocks[0].frame[""], prov.blocks[0].frame["value"]))
    assert facts["base model sha256"] == "ab" * 32 and facts["dataset digest"] == "d1g3st"
    assert facts["hardware"] == "CPU Test, 2 cores" and facts["packages"] == "torch 2.13.0"
    assert facts["split sizes"] == "train 50 documents / 96,000 tokens"  # the splits the sweep recorded
    assert "lora-study report runs:/p1 --ui-url http://127.0.0.1:5000" in prov.blocks[1].text


def test_html_is_one_self_contained_page_and_markdown_its_twin():
    s = study()
    sections = report_sections.build(s)
    page = render.to_html(s, sections)
    # nothing to fetch: no scripts, stylesheets, images or frames; links only within it or to the MLflow UI
    assert not re.search(r"<script|<link|<img|<iframe|\ssrc=|url\((?!#)", page)
    targets = {href.split("#")[0] for href in re.findall(r'<a href="([^"]*)"', page)}
    assert targets == {"", "http://127.0.0.1:5000/"}
    assert page.count("<svg") == 2 and all(f'<section id="{x.id}">' in page for x in sections)
    assert 'class="answer">recommended: the configuration of trial 3' in page
    markdown, figures = render.to_markdown(s, sections, "figures")
    assert set(figures) == {"tradeoffs.svg", "optimization_history.svg"}
    assert "![Perplexity against each cost](figures/tradeoffs.svg)" in markdown
    assert "| [0](http://127.0.0.1:5000/#/experiments/7/runs/r0?workflowType=machine_learning) |" in markdown
    assert markdown.index("## The answer") < markdown.index("## Trade-offs") < markdown.index("## Provenance")


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, ""), (float("nan"), ""), (True, "yes"), (12345, "12,345"), (0.000123456, "0.0001235"), (96000.4, "96,000")],
)
def test_cells_read_as_numbers_a_person_reads(value, text):
    assert render.cell_text(value) == text


def test_the_answer_stands_against_champion_and_challenger_only_on_the_same_test_data():
    def version(number, aliases, test_perplexity, test_data, **tags):
        tags = {"test_perplexity": test_perplexity, "lora_study.test_data": test_data.to_json(), **tags}
        return Version(f"models:/lora-study-smollm2-135m/{number}", aliases, tags)

    def standing(champion):
        holders = {"champion": champion, "challenger": answer}
        frame = answer_section.answer(study(versions=[answer], holders=holders)).blocks[1].frame
        return dict(zip(frame[""], frame["value"]))["against the registry"]

    answer = version(2, ("challenger",), "10.2", ECHO_TEST_DATA, config_trial="3")
    assert standing(version(1, ("champion",), "10.9", ECHO_TEST_DATA)) == (
        "@champion (models:/lora-study-smollm2-135m/1) has test perplexity 10.9 on the same test data, against this "
        "version's 10.2; it is @challenger"
    )
    longer = dataclasses.replace(ECHO_TEST_DATA, seq_len=64, prepared_digest="3" * 64)
    assert standing(version(1, ("champion",), "9.1", longer)) == (
        "@champion (models:/lora-study-smollm2-135m/1) was measured on other test data (seq_len 32 vs 64): not "
        "compared; it is @challenger"
    )
    assert (
        answer_section.answer(study()).blocks[1].frame["value"].iloc[-1]
        == "no @champion or @challenger to compare with"
    )


def test_the_answer_says_the_budget_it_holds_for():
    budget = "This answer holds for a training of 12 steps (3,060 tokens, 3.2% of an epoch of the training split)"
    answer = answer_section.answer(study(tags={"lora_study.recommendation": STATEMENT, "lora_study.horizon": budget}))
    facts = dict(zip(answer.blocks[1].frame[""], answer.blocks[1].frame["value"]))
    assert facts["holds for"] == budget
    assert "holds for" not in list(answer_section.answer(study()).blocks[1].frame[""])  # a study from before it


def replicated(trials: pd.DataFrame, *pairs) -> pd.DataFrame:
    """`trials` with explore trials trained again with seed 1: (trial, its validation perplexity)."""
    rows, first = [], int(trials.trial_number.max()) + 1
    for number, (original, perplexity) in enumerate(pairs, start=first):
        row = trials[trials.trial_number == original].iloc[0].to_dict()
        rows.append({**row, "trial_number": number, "run_id": f"r{number}", "eval_perplexity": perplexity})
        rows[-1]["replicate_of"] = float(original)
    return pd.concat([trials.assign(replicate_of=float("nan")), pd.DataFrame(rows)], ignore_index=True)


def test_explore_trials_trained_again_measure_the_explore_budgets_noise_and_decide_matched_levels():
    """qkvo (trial 1) and qv (trial 3) at the same rank and learning rate, nothing confirmed that
    isolates them: the explore figures decide against the noise of trials 1 and 3 trained again."""
    trials = replicated(TRIALS.assign(learning_rate=[1e-3, 5e-4, 1e-4, 5e-4]), (1, 11.1), (3, 11.8))
    assert effects.explore_noise(trials) == (pytest.approx(((0.1**2 / 2 + 0.1**2 / 2) / 2) ** 0.5), 2)
    factors = effects.factors(study(trials=trials, confirmed=None))
    text = texts(factors)
    assert "seed std 0.071 from 2 explore trial(s) trained again with another seed (validation split" in text
    # 0.9 apart, against a difference noise of sqrt(2) x 0.071 = 0.1: decided, on the original trials' figures
    assert "qkvo beats qv by 7.6% perplexity (0.900 ppl; seed std 0.071)" in text
    (finding,) = [
        f for _, f, _ in effects.factor_findings(study(trials=trials, confirmed=None)) if f.factor == "target_modules"
    ]
    assert finding.decided and finding.figures == "explored"
    qv = next(b for b in factors.blocks if isinstance(b, render.Table) and list(b.frame.level) == ["qkvo", "qv"])
    assert list(qv.frame["trials at level"]) == [1, 2]  # a configuration trained again is not another one


def test_without_replicated_explore_trials_matched_explore_figures_stay_undecided():
    trials = TRIALS.assign(learning_rate=[1e-3, 5e-4, 1e-4, 5e-4])
    assert effects.explore_noise(trials) is None
    text = texts(effects.factors(study(trials=trials, confirmed=None)))
    assert "no explore trial was trained again with another seed (--explore-replicates)" in text
