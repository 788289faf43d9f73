"""Every command has help, and the defaults written in it are shown, not swallowed as markup."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from proxkit.cli import app

COMMANDS = (
    "refine",
    "execute",
    "prompts",
    "verify",
    "annotate",
    "sft-data",
    "train",
    "evaluate",
    "report",
    "inspect",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_defaults_are_visible_in_help():
    result = CliRunner().invoke(app, ["refine", "--help"], env={"COLUMNS": "200"})
    assert "[default: 0.95]" in result.output
    annotate = CliRunner().invoke(app, ["annotate", "--help"], env={"COLUMNS": "200"})
    assert "[default: doc-v1]" in annotate.output
