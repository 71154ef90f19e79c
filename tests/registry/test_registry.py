"""The registry: promotion's guard and record, comparisons on equal terms, alias history, and the
versions table, against a real registry."""

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
from conftest import ECHO_TEST_DATA, Echo, register_echo

from lora_study import registry
from lora_study.errors import UserInputError


def champion(name):
    return registry.alias_version(name, "champion")


def test_force_moves_the_alias_to_a_worse_or_unevaluated_version():
    first = register_echo("promote-force", test_perplexity="10")
    registry.promote("promote-force", int(first), "champion", False, "")
    unevaluated = register_echo("promote-force")
    with pytest.raises(UserInputError, match="has no test_perplexity tag: run `lora-study evaluate"):
        registry.promote("promote-force", int(unevaluated), "champion", False, "")
    done = registry.promote("promote-force", int(unevaluated), "champion", True, "rollback drill")
    assert str(champion("promote-force").version) == unevaluated and "(forced)" in done


def test_a_study_trial_registered_by_several_sweeps_at_once_is_one_version():
    """Sweeps on four machines finish together and each registers the study's trial 3: one
    version stands, and every one of them is handed that version."""
    tags = {"lora_study.study": "together", "trial_number": "3"}
    with ThreadPoolExecutor(4) as pool:
        handed = set(pool.map(lambda _: register_echo("registered-together", **tags), range(4)))
    versions = mlflow.MlflowClient().search_model_versions("name = 'registered-together'")
    assert [str(v.version) for v in versions] == list(handed) and len(handed) == 1


def test_sweeps_setting_one_alias_at_once_all_succeed():
    version = register_echo("alias-together")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: registry.set_alias("alias-together", "challenger", version, "together"), range(8)))
    assert str(registry.alias_version("alias-together", "challenger").version) == version


def test_a_missing_version_is_one_line():
    register_echo("promote-missing", test_perplexity="10")
    with pytest.raises(UserInputError, match="promote-missing version 7: Model Version .* not found"):
        registry.promote("promote-missing", 7, "champion", False, "")


def test_versions_lists_aliases_shape_and_metrics(capsys):
    first = register_echo("versions-list", test_perplexity="14.9", base_test_perplexity="18.7")
    second = register_echo("versions-list", test_perplexity="13.1")
    registry.set_alias("versions-list", "champion", first, "test")
    registry.set_alias("versions-list", "challenger", second, "test")
    table = registry.versions_table("versions-list")
    assert list(table.version) == [int(first), int(second)]
    assert list(table.aliases) == ["champion", "challenger"]
    assert table.iloc[0].to_dict() == {
        "version": int(first),
        "aliases": "champion",
        "base_model": "tiny",
        "rank": "8",
        "alpha": "16.0",
        "target_modules": "qv",
        "quantization": "none",
        "test_perplexity": "14.9",
        "base_test_perplexity": "18.7",
        "eval_perplexity": "",
        "test_data": ECHO_TEST_DATA.key,
        "test_data_description": ECHO_TEST_DATA.describe(),
        "serves_on": "mlflow",
    }


def test_a_version_is_registered_from_its_logged_model_with_a_description_of_it():
    version = registry.get_version(
        "described",
        int(
            register_echo(
                "described", test_perplexity="13.1", base_test_perplexity="18.7", perplexity_improvement_pct="30"
            )
        ),
    )
    run = mlflow.get_run(version.run_id)
    assert version.source.startswith("models:/m-")  # the LoggedModel, not the run's artifact path
    assert version.description.splitlines() == [
        "A LoRA adapter on `tiny`: rank 8, alpha 16.0, target modules `qv`.",
        "",
        "Test perplexity 13.1, against the base's 18.7 (30.0% better), on the test data "
        f"`{ECHO_TEST_DATA.key}`: python-docs (sha256 11111111), seq_len 32, seed 0, val/test 0.1/0.1, "
        "decontaminate_ngram 50, max_samples 15; base tiny (sha256 00000000), quantization none.",
        "",
        "Serves on: mlflow. Not on vllm: not a lora-study adapter (its model holds no adapter_config.json and "
        "base_model.json). Not on lorax: not a lora-study adapter (its model holds no adapter_config.json and "
        "base_model.json).",
        "",
        f"Logged by the run [{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        "?workflowType=machine_learning).",
    ]


def test_a_description_a_person_edited_is_kept_and_one_lora_study_wrote_is_renewed():
    number = register_echo("described-edited")
    registry.tag_version("described-edited", number, {"test_perplexity": "13.1"})
    registry.describe("described-edited", number)  # as `evaluate` does once it has measured
    assert "Test perplexity 13.1," in registry.get_version("described-edited", int(number)).description
    mlflow.MlflowClient().update_model_version("described-edited", number, description="Ship this one.")
    registry.tag_version("described-edited", number, {"test_perplexity": "12.9"})
    registry.describe("described-edited", number)
    assert registry.get_version("described-edited", int(number)).description == "Ship this one."


def test_an_unmeasured_version_says_how_to_measure_it():
    number = register_echo("described-unmeasured")
    description = registry.get_version("described-unmeasured", int(number)).description
    assert f"`lora-study evaluate --model-uri models:/described-unmeasured/{number}`" in description


def test_promote_refuses_a_version_measured_on_other_test_data_unless_forced(capsys):
    first = register_echo("promote-apart", test_perplexity="14.9")
    registry.promote("promote-apart", int(first), "champion", False, "")
    longer = dataclasses.replace(ECHO_TEST_DATA, seq_len=64, prepared_digest="3" * 64)
    other = register_echo("promote-apart", test_data=longer, test_perplexity="9.0")
    with pytest.raises(UserInputError) as refused:
        registry.promote("promote-apart", int(other), "champion", False, "")
    assert refused.value.problems == [
        f"promote-apart version {other} was measured on other test data than @champion (version {first}): "
        "seq_len 64 vs 32; pass --force to move the alias anyway"
    ]
    assert str(champion("promote-apart").version) == first
    done = registry.promote("promote-apart", int(other), "champion", True, "new sequence length")
    compared = f"test_perplexity 9.0 vs 14.9 of version {first}, on other test data (seq_len 64 vs 32) (forced)"
    assert done.endswith(f"({compared})")
    unrecorded = register_echo("promote-apart", test_data=None, test_perplexity="8.0")
    with pytest.raises(UserInputError, match=f"the test data of version {unrecorded} is not recorded"):
        registry.promote("promote-apart", int(unrecorded), "champion", False, "")


def test_advance_moves_an_alias_only_forward_and_says_so_in_one_line():
    first = register_echo("advance", test_perplexity="14.9")
    assert registry.advance("advance", first, "challenger", "sweep a") == (
        f"advance@challenger -> version {first} (test_perplexity 14.9; no version held @challenger before)"
    )
    worse = register_echo("advance", test_perplexity="17.5")
    line = registry.advance("advance", worse, "challenger", "sweep b")
    assert line == (
        f"advance@challenger stays on version {first}: version {worse} is not better than @challenger (version "
        f"{first}): test_perplexity 17.5 vs 14.9 of version {first}; `lora-study promote advance --version {worse} "
        "--alias challenger --force` moves it anyway"
    )
    other_data = dataclasses.replace(ECHO_TEST_DATA, seed=1, prepared_digest="4" * 64)
    other = register_echo("advance", test_data=other_data, test_perplexity="9")
    assert "was measured on other test data than @challenger" in registry.advance("advance", other, "challenger", "c")
    better = register_echo("advance", test_perplexity="13.2")
    moved = registry.advance("advance", better, "challenger", "sweep d")
    assert moved.startswith(f"advance@challenger -> version {better}")
    assert str(registry.alias_version("advance", "challenger").version) == better


def test_alias_history_lists_each_move_once_with_who_when_and_why():
    first = register_echo("history", test_perplexity="14.9")
    second = register_echo("history", test_perplexity="13.1")
    registry.set_alias("history", "challenger", first, "sweep a")
    registry.set_alias("history", "challenger", first, "sweep a, again")  # no move: nothing recorded
    registry.promote("history", int(first), "champion", False, "first evaluated")
    registry.set_alias("history", "challenger", second, "sweep b")
    registry.promote("history", int(second), "champion", False, "sweep b won")
    moves = registry.alias_history("history")
    assert [(m.alias, m.before, m.after) for m in moves] == [
        ("challenger", None, first),
        ("champion", None, first),
        ("challenger", first, second),
        ("champion", first, second),
    ]
    assert moves[3].why == f"sweep b won: test_perplexity 13.1 vs 14.9 of version {first}"
    assert moves[0].by and moves[0].at.endswith("+00:00") and moves[0].at <= moves[3].at
    # each move is a tag of the version it moved to; the model's own tags, shown above its versions, hold none
    client = mlflow.MlflowClient()
    assert not [key for key in client.get_registered_model("history").tags if "alias_move" in key]
    moved_here = [key for key in client.get_model_version("history", second).tags if "alias_move" in key]
    assert sorted(key.split(".")[2] for key in moved_here) == ["challenger", "champion"]
    # a move recorded on the model, as lora-study did before, is still read, in its place in time
    old = json.dumps(
        {
            "alias": "legacy",
            "before": None,
            "after": first,
            "at": "2026-01-01T00:00:00+00:00",
            "by": "someone",
            "why": "before the history moved to versions",
            "target": "mlflow",
        }
    )
    client.set_registered_model_tag("history", "lora_study.alias_move.legacy.1767225600000", old)
    assert [m.alias for m in registry.alias_history("history")][0] == "legacy"


def test_moves_of_one_alias_to_one_version_in_the_same_millisecond_are_both_kept(monkeypatch):
    """The history's tag key holds the alias and the millisecond: a second move that would take
    the same key goes to the next millisecond instead of overwriting the first."""
    first = register_echo("same-ms", test_perplexity="14.9")
    second = register_echo("same-ms", test_perplexity="13.1")
    monkeypatch.setattr(registry.promotion.time, "time_ns", lambda: 1_796_550_988_161_000_000)
    registry.set_alias("same-ms", "challenger", first, "a")
    registry.set_alias("same-ms", "challenger", second, "b")
    registry.set_alias("same-ms", "challenger", first, "back")
    moves = registry.alias_history("same-ms")
    assert [(m.before, m.after, m.why) for m in moves] == [
        (None, first, "a"),
        (first, second, "b"),
        (second, first, "back"),
    ]
    assert [m.ms for m in moves] == [1_796_550_988_161, 1_796_550_988_162, 1_796_550_988_163]


def test_a_registered_model_describes_itself_and_a_persons_edit_stands():
    register_echo("described", test_perplexity="14.9")
    client = mlflow.MlflowClient()
    text = client.get_registered_model("described").description
    assert text.startswith("LoRA adapters")
    assert "`lora-study serve models:/described@challenger`" in text
    assert "`mlflow models serve -m models:/described@challenger`" in text
    assert "History of alias moves: `lora-study versions described`" in text
    client.update_registered_model("described", description="ours")
    register_echo("described", test_perplexity="13.1")
    assert client.get_registered_model("described").description == "ours"


def test_sweeps_advancing_one_alias_at_once_leave_it_on_the_best():
    """Two sweeps finish together, each beats the holder it read; the last to write must not leave
    the alias on the worse one."""
    first = register_echo("advance-together", test_perplexity="14.9")
    registry.advance("advance-together", first, "challenger", "sweep a")
    for attempt in range(3):  # a race: try it a few times
        better = register_echo("advance-together", test_perplexity=f"{12 - attempt}")
        worse = register_echo("advance-together", test_perplexity=f"{13 - attempt}.5")
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(lambda v: registry.advance("advance-together", v, "challenger", f"sweep {v}"), (worse, better))
            )
        assert str(registry.alias_version("advance-together", "challenger").version) == better


def test_a_version_registered_before_test_data_was_recorded_compares_by_its_run(mlflow_experiment):
    """Its trial run logged the prepared data's digest and settings: the registry reads them."""
    params = {
        "base_model": "tiny",
        "base_model_sha256": ECHO_TEST_DATA.base_weights,
        "quantization": "none",
        "dataset": "python-docs",
        "dataset_digest": ECHO_TEST_DATA.prepared_digest,
        **{name: getattr(ECHO_TEST_DATA, name) for name in ("seq_len", "seed", "val_fraction", "test_fraction")},
        "decontaminate_ngram": 50,
        "max_samples": 15,
    }
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.pyfunc.log_model(name="adapter", python_model=Echo(), pip_requirements=[])
    old = str(
        registry.register(f"runs:/{run.info.run_id}/adapter", "before-records", {"test_perplexity": "14.9"}).version
    )
    registry.set_alias("before-records", "champion", old, "set by an earlier lora-study")
    assert registry.measured_on(registry.get_version("before-records", int(old))).key == ECHO_TEST_DATA.key
    new = register_echo("before-records", test_perplexity="13.0")
    assert "vs 14.9 of version" in registry.promote("before-records", int(new), "champion", False, "compares")


def test_the_sweep_keeps_the_server_an_alias_was_promoted_for(tmp_path):
    """@champion promoted for vLLM: a sweep's --promote does not move it to what vLLM cannot load."""
    first = register_echo("keeps-target", test_perplexity="14.9")
    registry.set_alias("keeps-target", "champion", first, "promoted for vllm", target="vllm")
    better = register_echo("keeps-target", test_perplexity="9.0")  # not an adapter: vLLM cannot load it
    line = registry.advance("keeps-target", better, "champion", "sweep --promote")
    assert f"keeps-target@champion stays on version {first}: version {better} cannot be served by vllm" in line
