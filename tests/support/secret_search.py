"""The secret search: the sandbox's secret values, and where among bytes any of them appears.

It looks for each secret as it is, URL-encoded, and base64-encoded, alone or inside a longer
base64 string (the base64 of a whole DATABASE_URL holds the password's bits at some offset).
It is written apart from the pipeline's redactor (tasks/core/redaction.py), so a gap in one is
not hidden by the same gap in the other.

``ContainerInspections`` keeps ``docker inspect`` of every container the engine makes while it
records (one-offs are removed within seconds of running, so they are inspected as they are made),
plus every container there at the end.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

import docker
from docker.errors import DockerException, NotFound

from sandbox import config


def secret_values() -> dict[str, str]:
    """The sandbox's secrets long enough to search for without false hits."""
    return {name: value for name, value in config.load_secrets().items() if len(value) >= 8}


def _inner_base64(value: bytes) -> set[bytes]:
    """The base64 characters that depend on ``value``'s bytes only, for each of the three byte
    offsets ``value`` can start at inside a longer string."""
    found = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            encoded = encode(bytes(offset) + value)
            # A character covers 6 bits: skip the ones that share bits with the padding in front,
            # and the last one, which shares bits with whatever comes after.
            start, stop = (offset * 8 + 5) // 6, (offset + len(value)) * 8 // 6
            found.add(encoded[start:stop])
    return found


def forms(value: str) -> set[bytes]:
    """Every spelling of ``value`` the search looks for."""
    spelled = {value, quote(value, safe=""), quote_plus(value)}
    out = {s.encode() for s in spelled}
    for s in spelled:
        out |= {base64.b64encode(s.encode())} | _inner_base64(s.encode())
    return {f for f in out if len(f) >= 8}


def find_leaks(haystacks: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    """Each secret found in a haystack in any of its forms, once per place: "<name> in <where>"."""
    spellings = {name: forms(value) for name, value in secrets.items()}
    return [
        f"{secret} in {where}"
        for where, data in haystacks.items()
        for secret in secrets
        if any(form in data for form in spellings[secret])
    ]


def command_lines(seen: Iterable[bytes]) -> dict[str, bytes]:
    """Argument lists (NUL-joined) as haystacks, each named by its program, never by its arguments,
    so a report of a leak does not print the secret again."""
    return {f"argv #{n} of {program(argv)!r}": argv for n, argv in enumerate(sorted(seen))}


def program(argv: bytes) -> bytes:
    return argv.split(b"\0", 1)[0][-80:]


class ContainerInspections:
    """``docker inspect`` of every container the sandbox's engine creates or starts while this
    records, kept by container id; ``haystacks()`` adds the containers there at the end."""

    def __init__(self, docker_host: str = config.DOCKER_HOST):
        self._client = docker.DockerClient(base_url=docker_host, timeout=30)
        self._events = self._client.events(decode=True, filters={"type": "container", "event": ["create", "start"]})
        self.inspected: dict[str, tuple[str, bytes]] = {}
        self.missed: dict[str, dict[str, str]] = {}  # made and gone before it was inspected: id -> its labels
        self._thread = threading.Thread(target=self._record, name="container-inspections", daemon=True)
        self._thread.start()

    def _inspect(self, container_id: str, attributes: dict[str, str] | None = None) -> None:
        try:
            attrs = self._client.api.inspect_container(container_id)
        except NotFound:
            if container_id not in self.inspected:
                self.missed[container_id] = attributes or {}
            return
        self.inspected[container_id] = (attrs.get("Name", "").lstrip("/"), json.dumps(attrs).encode())
        self.missed.pop(container_id, None)

    def missed_of(self, app: str) -> list[str]:
        """Names of ``app``'s containers (by their label) that were gone before they were inspected."""
        return sorted(a.get("name", cid) for cid, a in self.missed.items() if a.get("architect.app") == app)

    def _record(self) -> None:
        try:
            for event in self._events:
                if container_id := event.get("id"):
                    self._inspect(container_id, (event.get("Actor") or {}).get("Attributes"))
        except (DockerException, OSError, ValueError):  # closed by stop(), or the engine restarted
            return

    def haystacks(self) -> dict[str, bytes]:
        """Every recorded inspection, and one of each container there now (exited ones too)."""
        for container in self._client.containers.list(all=True):
            self._inspect(container.id)
        return {f"docker inspect of {name} ({cid[:12]})": data for cid, (name, data) in self.inspected.items()}

    def stop(self) -> None:
        self._events.close()
        self._thread.join(5)
        self._client.close()
