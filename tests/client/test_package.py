"""The client installs and runs without the server: it never imports app, workers or their
frameworks, and it runs on its base dependencies alone (pyproject's [project].dependencies)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("app", "workers", "fastapi", "starlette", "sqlalchemy", "celery", "redis")
HEAVY = ("torch", "transformers", "psycopg", "alembic", "uvicorn")
OURS = ("client", "contract")

# Runs in a fresh interpreter. A finder first in line refuses the given top-level packages as
# if they were not installed (an optional import then falls back, a needed one fails); then the
# probe imports the client and its CLI, renders every command's --help, and reports what loaded.
_PROBE = """
import contextlib, io, json, sys
from importlib.abc import MetaPathFinder

refused = set(json.loads(sys.argv[1]))

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ImportError(f"{name} is not installed here")
        return None

sys.meta_path.insert(0, Refuse())
import client, client.cli
for args in (["--help"], ["jobs", "--help"], ["datasets", "--help"], ["models", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            client.cli.app(args, prog_name="distillery")
        except SystemExit as exc:
            assert exc.code == 0, (args, exc.code)
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules})))
"""


def probe(refused: list[str]) -> set[str]:
    """The top-level modules loaded by importing the client and rendering its CLI's help."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(refused)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def test_the_client_and_its_cli_import_nothing_of_the_server() -> None:
    loaded = probe([*SERVER_SIDE, *HEAVY])
    assert {"client", "contract", "httpx", "typer", "rich"} <= loaded
    assert loaded.isdisjoint(SERVER_SIDE + HEAVY)


def test_the_client_runs_on_its_base_dependencies_alone() -> None:
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = _closure([Requirement(r).name for r in base])
    # Every installed package that the base dependencies do not bring, app and workers among
    # them (this checkout's own distribution is not in the base either).
    absent = {
        module
        for module, dists in packages_distributions().items()
        if not any(canonicalize_name(d) in installed for d in dists)
    }
    assert {"fastapi", "sqlalchemy", "celery", "torch"} <= absent  # the base stays thin
    loaded = probe(sorted((absent | {"app", "workers"}) - set(OURS)))
    assert {"client", "contract", "httpx", "tenacity", "pydantic"} <= loaded


def _closure(names: list[str]) -> set[str]:
    """The distributions that installing `names` pulls in, extras left out."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in needs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen
