from __future__ import annotations

from client import parse_sse


def test_parse_sse_follows_the_wire_format() -> None:
    lines = [
        ": ping",
        "id: 7",
        "event: loss",
        'data: {"a":',
        "data: 1}",
        "",
        "retry: 5",
        "data:x",
        "",
    ]
    assert list(parse_sse(lines)) == [("7", "loss", '{"a":\n1}'), ("7", "message", "x")]
