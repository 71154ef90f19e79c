"""`promote` and `versions` against a real registry: the guard, the record, the table."""

import mlflow
import pytest

from lora_study import cli, registry
from lora_study.errors import UserInputError

from conftest import Echo


def register(name: str, **tags) -> str:
    """A version of `name` from a run with adapter params, tagged like `evaluate` tags it."""
    with mlflow.start_run() as run:
        mlflow.log_params({"rank": 8, "alpha": 16.0, "target_modules": "qv", "quantization": "none",
                           "base_model": "tiny"})  # fmt: skip
        mlflow.pyfunc.log_model(name="adapter", python_model=Echo())
    return str(registry.register(f"runs:/{run.info.run_id}/adapter", name, tags).version)


def champion(name):
    return registry.alias_version(name, "champion")


def test_promote_moves_the_alias_only_to_a_better_version_and_records_why(capsys):
    first = register("promote-guard", test_perplexity="14.9")
    assert cli.main(["promote", "promote-guard", "--version", first, "--reason", "first evaluated adapter"]) == 0
    assert str(champion("promote-guard").version) == first
    worse = register("promote-guard", test_perplexity="15.2")
    capsys.readouterr()
    assert cli.main(["promote", "promote-guard", "--version", worse]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lora-study: error: promote-guard version {worse} is not better than @champion (version "
                   f"{first}): test_perplexity 15.2 vs 14.9 of version {first}; pass --force to move the alias "
                   "anyway")  # fmt: skip
    assert str(champion("promote-guard").version) == first
    better = register("promote-guard", test_perplexity="13.1")
    assert cli.main(["promote", "promote-guard", "--version", better, "--reason", "sweep 2 won"]) == 0
    tags = champion("promote-guard").tags
    assert str(champion("promote-guard").version) == better
    assert tags["promoted_alias"] == "champion" and tags["promotion_reason"] == "sweep 2 won"
    assert tags["promotion_compared"] == f"test_perplexity 13.1 vs 14.9 of version {first}"
    assert tags["promoted_by"] and tags["promoted_at"].endswith("+00:00")


def test_force_moves_the_alias_to_a_worse_or_unevaluated_version():
    first = register("promote-force", test_perplexity="10")
    registry.promote("promote-force", int(first), "champion", False, "")
    unevaluated = register("promote-force")
    with pytest.raises(UserInputError, match="has no test_perplexity tag: run `lora-study evaluate"):
        registry.promote("promote-force", int(unevaluated), "champion", False, "")
    done = registry.promote("promote-force", int(unevaluated), "champion", True, "rollback drill")
    assert str(champion("promote-force").version) == unevaluated and "(forced)" in done


def test_a_missing_version_is_one_line():
    register("promote-missing", test_perplexity="10")
    with pytest.raises(UserInputError, match="promote-missing version 7: Model Version .* not found"):
        registry.promote("promote-missing", 7, "champion", False, "")


def test_versions_lists_aliases_shape_and_metrics(capsys):
    first = register("versions-list", test_perplexity="14.9", base_test_perplexity="18.7")
    second = register("versions-list", test_perplexity="13.1")
    registry.set_alias("versions-list", "champion", first)
    registry.set_alias("versions-list", "challenger", second)
    table = registry.versions_table("versions-list")
    assert list(table.version) == [int(first), int(second)]
    assert list(table.aliases) == ["champion", "challenger"]
    assert table.iloc[0].to_dict() | {} == {
        "version": int(first), "aliases": "champion", "base_model": "tiny", "rank": "8", "alpha": "16.0",
        "target_modules": "qv", "quantization": "none", "test_perplexity": "14.9",
        "base_test_perplexity": "18.7", "eval_perplexity": "",
    }  # fmt: skip
    assert cli.main(["versions", "versions-list"]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "13.1" in out and "MLflow run" not in out
    assert cli.main(["versions", "no-such-model"]) == 2
