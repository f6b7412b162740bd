"""A client of one Docker engine that remembers the engine's address, so its failures name it.

The docker SDK's client forgets the address it was given (a unix socket becomes
``http+docker://localhost``); a connection keeps it for ``calls``, the error mapping of
``blocks.docker.errors`` around the calls made through it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import docker
from docker.constants import DEFAULT_DOCKER_API_VERSION
from docker.tls import TLSConfig

from blocks.docker.errors import docker_errors


class DockerTLSFiles(NamedTuple):
    """PEM files for a ``tcp://`` engine: the CA that signed the engine's certificate, and this
    client's certificate and key (the engine's ``--tlsverify`` asks for one)."""

    ca_cert: str
    client_cert: str
    client_key: str


class DockerConnection:
    """``client``, a docker SDK client of the engine at ``address`` (made here: the SDK asks the
    engine its API version, so an engine that does not answer is a TemporaryError at once).
    With ``tls``, the engine's certificate is verified against its CA and this client shows its own."""

    def __init__(self, address: str, timeout_s: float = 60, tls: DockerTLSFiles | None = None):
        self.address = address
        with docker_errors("connecting", address):
            if tls is None:
                self.client = docker.DockerClient(base_url=address, timeout=timeout_s)
            else:
                config = TLSConfig(client_cert=(tls.client_cert, tls.client_key), ca_cert=tls.ca_cert, verify=True)
                # A version given skips the SDK's first request, so the session can be set up first.
                self.client = docker.DockerClient(
                    base_url=address, timeout=timeout_s, tls=config, version=DEFAULT_DOCKER_API_VERSION
                )
                # requests lets REQUESTS_CA_BUNDLE replace the session's CA: only the engine's CA counts.
                self.client.api.trust_env = False
                self.client.api._version = self.client.api._retrieve_server_version()

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
