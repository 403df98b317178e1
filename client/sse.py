"""Server-Sent Events, parsed from the lines of a streamed response."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str, str]]:
    """Server-Sent Events as (id, event type, data), per the WHATWG parsing rules."""
    event_id: str | None = None
    event_type = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, event_type or "message", "\n".join(data)
            event_type, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            event_id = value
    if data:
        yield event_id, event_type or "message", "\n".join(data)
