"""How the CLI reads `key=value` pairs and its options (no server needed)."""

from __future__ import annotations

import pytest

from missmod.cli import build_parser, parse_pairs


def test_values_are_typed_like_json_and_sweeps_take_comma_lists():
    assert parse_pairs(["dataset=digits", "missing_rate=0.9", "epochs=30", "evaluate_missing=true", "name=a b"]) == {
        "dataset": "digits", "missing_rate": 0.9, "epochs": 30, "evaluate_missing": True, "name": "a b"}
    assert parse_pairs(["method=mle,zero_padding", "missing_rate=0.8,0.9", "seed=[0, 1]"], lists=True) == {
        "method": ["mle", "zero_padding"], "missing_rate": [0.8, 0.9], "seed": [0, 1]}
    assert parse_pairs(["name=a,b"]) == {"name": "a,b"}  # a run's field is one value
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_pairs(["digits"])


def test_global_options_before_or_after_the_command():
    parser = build_parser()
    before = parser.parse_args(["--json", "--url", "http://h:1", "runs", "list"])
    after = parser.parse_args(["runs", "list", "--json", "--token", "t"])
    assert before.json is True and before.url == "http://h:1"
    assert after.json is True and after.token == "t"
    assert not hasattr(parser.parse_args(["runs", "list"]), "json")  # main() fills the defaults


def test_option_values_may_start_with_a_dash():
    parser = build_parser()
    args = parser.parse_args(["runs", "list", "--where", "accuracy>0.8", "--sort", "-test_accuracy", "--q", "-draft"])
    assert (args.sort, args.q, args.where) == ("-test_accuracy", "-draft", ["accuracy>0.8"])
    assert parser.parse_args(["runs", "list", "--sort=-id"]).sort == "-id"
    assert parser.parse_args(["--token", "-secret", "runs", "list"]).token == "-secret"
    with pytest.raises(SystemExit):  # an option is not taken for a missing value
        parser.parse_args(["runs", "list", "--sort", "--json"])
