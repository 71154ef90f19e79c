"""The registry: promotion's guard and record, and the versions table, against a real registry."""

from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
from conftest import register_echo

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
        list(pool.map(lambda _: registry.set_alias("alias-together", "challenger", version), range(8)))
    assert str(registry.alias_version("alias-together", "challenger").version) == version


def test_a_missing_version_is_one_line():
    register_echo("promote-missing", test_perplexity="10")
    with pytest.raises(UserInputError, match="promote-missing version 7: Model Version .* not found"):
        registry.promote("promote-missing", 7, "champion", False, "")


def test_versions_lists_aliases_shape_and_metrics(capsys):
    first = register_echo("versions-list", test_perplexity="14.9", base_test_perplexity="18.7")
    second = register_echo("versions-list", test_perplexity="13.1")
    registry.set_alias("versions-list", "champion", first)
    registry.set_alias("versions-list", "challenger", second)
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
        "Test perplexity 13.1, against the base's 18.7 (30.0% better).",
        "",
        f"Logged by the run [{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}).",
    ]


def test_a_description_a_person_edited_is_kept_and_one_lora_study_wrote_is_renewed():
    number = register_echo("described-edited")
    registry.tag_version("described-edited", number, {"test_perplexity": "13.1"})
    registry.describe("described-edited", number)  # as `evaluate` does once it has measured
    assert "Test perplexity 13.1." in registry.get_version("described-edited", int(number)).description
    mlflow.MlflowClient().update_model_version("described-edited", number, description="Ship this one.")
    registry.tag_version("described-edited", number, {"test_perplexity": "12.9"})
    registry.describe("described-edited", number)
    assert registry.get_version("described-edited", int(number)).description == "Ship this one."


def test_an_unmeasured_version_says_how_to_measure_it():
    number = register_echo("described-unmeasured")
    description = registry.get_version("described-unmeasured", int(number)).description
    assert f"`lora-study evaluate --model-uri models:/described-unmeasured/{number}`" in description
