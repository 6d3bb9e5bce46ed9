"""Every `manifest ...` and `downstream ...` sub-verb explains itself: a description, examples,
and a help text for every option (the README promises `--help` with examples everywhere)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from speechssl.cli.main import main


def _subparsers(module_name: str) -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser()
    importlib.import_module(module_name).add_arguments(parser)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


CASES = [(verb, name) for verb in ("manifest", "downstream")
         for name in _subparsers(f"speechssl.cli.{verb}")]


@pytest.mark.parametrize(("verb", "name"), CASES)
def test_sub_verb_help_has_a_description_examples_and_option_help(verb, name, capsys):
    sub = _subparsers(f"speechssl.cli.{verb}")[name]
    assert sub.description and len(sub.description) > 40, f"{verb} {name}: no description"
    undocumented = [a.option_strings or [a.dest] for a in sub._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undocumented, f"{verb} {name}: options without help: {undocumented}"
    with pytest.raises(SystemExit) as exit_info:
        main([verb, name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:\n", 1)[1] if "examples:\n" in text else ""
    assert f"speechssl {verb} {name} " in examples, f"{verb} {name} --help shows no example:\n{text}"


def test_both_verbs_are_covered():
    assert {v for v, _ in CASES} == {"manifest", "downstream"}
    assert {"merge", "split", "info", "import", "export"} <= {n for v, n in CASES if v == "manifest"}
