"""The secret search: the sandbox's secret values, and where among bytes any of them appears."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from sandbox import config


def secret_values() -> dict[str, str]:
    """The sandbox's secrets long enough to search for without false hits."""
    return {name: value for name, value in config.load_secrets().items() if len(value) >= 8}


def find_leaks(haystacks: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    """Each secret, plain or base64 (as Kubernetes Secrets and HTTP basic auth carry it): "<name> in <where>"."""
    return [
        f"{secret} in {where}"
        for where, data in haystacks.items()
        for secret, value in secrets.items()
        for form in (value.encode(), base64.b64encode(value.encode()))
        if form in data
    ]


def command_lines(seen: Iterable[bytes]) -> dict[str, bytes]:
    """Argument lists (NUL-joined) as haystacks, each named by its program, never by its arguments,
    so a report of a leak does not print the secret again."""
    return {f"argv #{n} of {program(argv)!r}": argv for n, argv in enumerate(sorted(seen))}


def program(argv: bytes) -> bytes:
    return argv.split(b"\0", 1)[0][-80:]
