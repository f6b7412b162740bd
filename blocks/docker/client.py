"""A client of one Docker engine that remembers the engine's address, so its failures name it.

The docker SDK's client forgets the address it was given (a unix socket becomes
``http+docker://localhost``); a connection keeps it for ``calls``, the error mapping of
``blocks.docker.errors`` around the calls made through it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import docker

from blocks.docker.errors import docker_errors


class DockerConnection:
    """``client``, a docker SDK client of the engine at ``address`` (made here: the SDK asks the
    engine its API version, so an engine that does not answer is a TemporaryError at once)."""

    def __init__(self, address: str, timeout_s: float = 60):
        self.address = address
        with docker_errors("connecting", address):
            self.client = docker.DockerClient(base_url=address, timeout=timeout_s)

    def calls(self, doing: str, *, stage: Any = None) -> AbstractContextManager[None]:
        """Around calls made through ``client``: their failures as the tree's errors, naming ``doing``."""
        return docker_errors(doing, self.address, stage=stage)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DockerConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DockerConnection({self.address!r})"
