from __future__ import annotations

import re
from collections.abc import Callable

from click.testing import Result

Admin = Callable[..., Result]


def test_help_lists_the_keys_and_tenants_command_trees(admin: Admin) -> None:
    top = admin("--help").stdout
    assert "keys" in top and "tenants" in top
    assert {"create", "revoke", "list"} <= set(_commands(admin("keys", "--help").stdout))
    assert {"show", "set-limits"} <= set(_commands(admin("tenants", "--help").stdout))


def _commands(help_text: str) -> list[str]:
    """The names in the help's Commands box (rows that start with a name, not a wrapped line)."""
    return re.findall(r"^│ (\S+) ", help_text.split("Commands")[1], re.MULTILINE)
