"""``--help`` of every subcommand says what it does, its flags and its exit codes."""

from __future__ import annotations

import argparse

import pytest

from replicator import cli


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()  # noqa: SLF001 - the parser is what --help prints
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_says_what_it_does_its_flags_and_its_exit_codes(name):
    sub = subcommands()[name]
    text = sub.format_help()
    assert sub.description and len(sub.description) > 40, name
    assert "exit codes:" in text and "  0  " in text and "  2  bad configuration" in text, text
    for action in sub._actions:  # noqa: SLF001
        for flag in action.option_strings:
            assert flag in text
    assert "S3_SYNC_*" in text  # where the configuration comes from


def test_reconcile_names_the_guard_exit_code():
    assert "3  a delete guard refused" in subcommands()["reconcile"].format_help()
