"""What counts as loopback: the one rule every "this machine only" check applies.

Traffic goes to loopback only (DESIGN.md). Blocks apply it to the addresses they are given,
the load generator to every address a target's name resolves to.
"""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK_NAME = "localhost"


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and any loopback IP address (127.0.0.0/8, ``::1``).

    Accepts a host as URLs and ``host:port`` strings spell it: ``[::1]`` and an IPv6 zone
    (``::1%lo``) are allowed. Any other name is not loopback, whatever it resolves to here.
    """
    if not host:
        return False
    host = host.strip()
    if host.startswith("[") and host.endswith("]") and ":" in host:  # an IPv6 literal as URLs write it
        host = host[1:-1]
    if host.lower() == LOOPBACK_NAME:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def resolve_host(host: str) -> str:
    """``host`` as one address: the lowest IPv4 address it resolves to (IPv6 if it has none);
    every loopback name is ``loopback``, since all of them reach the same servers."""
    if host.startswith("/"):  # a Unix socket directory: this machine
        return "loopback"
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return host.lower()  # unresolvable now: the name itself, so the lock still means something
    addresses = sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=lambda a: (a.version, int(a)))
    if all(a.is_loopback for a in addresses):
        return "loopback"
    return str(addresses[0])
