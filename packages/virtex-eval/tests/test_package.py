from __future__ import annotations

from click.testing import CliRunner

import virtex_eval
from virtex_eval.cli import main


def test_version_is_semver_start() -> None:
    assert virtex_eval.__version__ == "0.1.0"


def test_cli_help_explains_itself() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Evaluate VirTex" in result.output
