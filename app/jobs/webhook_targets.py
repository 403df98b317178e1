"""Which webhook targets a job may name: https, no userinfo, only globally routable addresses.

The API checks what it can see in the URL (a literal private address is refused at once); the
worker checks again at delivery, against the addresses the name resolves to then, and connects
to exactly the address it checked (workers/webhook_http.py): a name that resolves to a public
address at creation and to 127.0.0.1 at delivery (DNS rebinding) is refused there.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: IPAddress) -> bool:
    """Globally routable, an IPv4-mapped IPv6 address judged by the IPv4 address inside."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally ('10.0.0.1', '[::1]'), or None for a DNS name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook target, or None. Only what the text shows: a name's
    addresses are checked at delivery."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "the URL cannot be parsed"
    allowed = ("http", "https") if allow_private else ("https",)
    if parts.scheme not in allowed:
        return "the URL must use https"
    if parts.username is not None or parts.password is not None:
        return "the URL may not carry a user name or password"
    if not host:
        return "the URL has no host"
    address = literal_address(host)
    if not allow_private and address is not None and not is_public(address):
        return "the URL names a private, loopback or link-local address"
    return None
