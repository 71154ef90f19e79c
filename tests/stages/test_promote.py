"""The `promote` and `versions` commands: exit codes, the one-line refusal, the printed table."""

import dataclasses

from conftest import ECHO_TEST_DATA, register_echo

from lora_study import cli, registry


def champion(name):
    return registry.alias_version(name, "champion")


def test_promote_moves_the_alias_only_to_a_better_version_and_records_why(capsys):
    first = register_echo("promote-guard", test_perplexity="14.9")
    assert cli.main(["promote", "promote-guard", "--version", first, "--reason", "first evaluated adapter"]) == 0
    assert str(champion("promote-guard").version) == first
    worse = register_echo("promote-guard", test_perplexity="15.2")
    capsys.readouterr()
    assert cli.main(["promote", "promote-guard", "--version", worse]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lora-study: error: promote-guard version {worse} is not better than @champion (version "
        f"{first}): test_perplexity 15.2 vs 14.9 of version {first}; pass --force to move the alias "
        "anyway"
    )
    assert str(champion("promote-guard").version) == first
    better = register_echo("promote-guard", test_perplexity="13.1")
    assert cli.main(["promote", "promote-guard", "--version", better, "--reason", "sweep 2 won"]) == 0
    tags = champion("promote-guard").tags
    assert str(champion("promote-guard").version) == better
    assert tags["promoted_alias"] == "champion" and tags["promotion_reason"] == "sweep 2 won"
    assert tags["promotion_compared"] == f"test_perplexity 13.1 vs 14.9 of version {first}"
    assert tags["promoted_by"] and tags["promoted_at"].endswith("+00:00")


def test_versions_prints_the_table_and_refuses_an_unknown_model(capsys):
    first = register_echo("versions-cli", test_perplexity="14.9")
    registry.set_alias("versions-cli", "champion", first, "test")
    register_echo("versions-cli", test_perplexity="13.1")
    assert cli.main(["versions", "versions-cli"]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "13.1" in out and "MLflow run" not in out
    assert cli.main(["versions", "no-such-model"]) == 2


def test_versions_groups_versions_by_their_test_data_and_shows_the_alias_history(capsys):
    first = register_echo("versions-grouped", test_perplexity="14.9")
    longer = dataclasses.replace(ECHO_TEST_DATA, seq_len=64, prepared_digest="3" * 64)
    other = register_echo("versions-grouped", test_data=longer, test_perplexity="9.0")
    third = register_echo("versions-grouped", test_perplexity="13.1")
    assert cli.main(["promote", "versions-grouped", "--version", first, "--reason", "first"]) == 0
    assert cli.main(["promote", "versions-grouped", "--version", third, "--reason", "better"]) == 0
    capsys.readouterr()
    assert cli.main(["versions", "versions-grouped"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("\n\n")
    assert blocks[0].startswith(f"test data {ECHO_TEST_DATA.key}: python-docs (sha256 11111111), seq_len 32,")
    assert [line.split()[0] for line in blocks[0].splitlines()[2:]] == [first, third]
    assert blocks[1].startswith(f"test data {longer.key}: python-docs (sha256 11111111), seq_len 64,")
    assert [line.split()[0] for line in blocks[1].splitlines()[2:]] == [other]
    history = blocks[2].splitlines()
    assert history[0] == "alias history:" and len(history) == 3
    assert f"@champion  (new) -> version {first}  by " in history[1]
    assert history[1].endswith("first: test_perplexity 14.9; no version held @champion before")
    assert f"@champion  version {first} -> version {third}" in history[2] and history[2].endswith(
        f"better: test_perplexity 13.1 vs 14.9 of version {first}"
    )
