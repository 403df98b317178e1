"""The OpenAPI document is a contract: an accidental change fails here.

Regenerate deliberately with `UPDATE_OPENAPI_SNAPSHOT=1 make test`, and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.main import create_app

SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")


def test_openapi_matches_snapshot() -> None:
    document = create_app().openapi()
    rendered = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_OPENAPI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), "no snapshot: run with UPDATE_OPENAPI_SNAPSHOT=1"
    assert json.loads(rendered) == json.loads(SNAPSHOT.read_text())


def test_every_route_documents_its_errors() -> None:
    document = create_app().openapi()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if path.startswith("/v1/"):
                codes = {c for c in operation["responses"] if c.startswith(("4", "5"))}
                assert codes, f"{method.upper()} {path} documents no error response"
