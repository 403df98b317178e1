"""Run the `distillery` CLI in process and check its exit code. A test tool, not a test file."""

from __future__ import annotations

import json
from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from client.cli import app

# Wide enough that rich never folds an id in a table; no address or key from the environment.
runner = CliRunner(env={"COLUMNS": "200", "DISTILLERY_URL": None, "DISTILLERY_API_KEY": None})


def run(*args: str, env: dict[str, str] | None = None, code: int = 0) -> Result:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code).stdout)
