"""Deploy target block: replicas on one Docker engine, on the host network, behind a load balancer.

The block holds the settings and checks them; it hands out a Docker client (``get_client``) and
its engine (``engine``, in ``blocks.docker.engine``), which does the rolling updates, rollbacks,
one-offs and logs and keeps the revisions in ``blocks.docker.history``.
"""

from __future__ import annotations

import re

import docker
from pydantic import Field, field_validator, model_validator

from blocks.docker.client import DockerConnection, DockerTLSFiles
from blocks.docker.engine import DockerEngine
from blocks.docker.history import RevisionHistory
from blocks.target import DeployTarget
from blocks.validation import check_docker_host, check_docker_tls, check_name, check_text
from tasks.core.net import is_loopback_host, resolve_host


class DockerTarget(DeployTarget):
    """N replicas of the app on one Docker engine, replaced one at a time."""

    _block_type_name = "Docker Target"
    _block_type_slug = "architect-docker-target"
    _description = (
        "Runs the app as N containers on the host network of one Docker engine, behind a load "
        "balancer over fixed port slots; rolling updates one replica at a time; rollback redeploys "
        "the previous image."
    )

    docker_host: str = Field("unix:///var/run/docker.sock", description="Docker engine address")
    tls_ca_cert: str | None = Field(None, description="tcp:// engine: PEM file of the CA that signed its certificate")
    tls_client_cert: str | None = Field(None, description="tcp:// engine: PEM file of this client's certificate")
    tls_client_key: str | None = Field(None, description="tcp:// engine: PEM file of this client's key")
    app_name: str = Field("architect-api", description="Name prefix and label of the app's containers")
    replicas: int = Field(3, ge=1, le=20, description="Replicas to run (the guide: 3)")
    ports: list[int] = Field(
        default_factory=lambda: [18081, 18082, 18083, 18084],
        description="Port slots the load balancer knows; one more than replicas, for the surge",
    )
    bind_host: str = Field("127.0.0.1", description="Address the app listens on (HOST)")
    health_path: str = Field("/health", description="Readiness endpoint of a replica")
    ready_timeout_s: float = Field(60, gt=0, le=600, description="How long one replica may take to become healthy")
    stop_timeout_s: int = Field(15, ge=1, le=120, description="Grace period for a replica to drain on stop")
    history_file: str = Field(
        "~/.architect-deploy/docker-history.json", description="Where the revision history is kept"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every container")

    _validate_app_name = field_validator("app_name")(check_name)
    _validate_docker_host = field_validator("docker_host")(check_docker_host)
    _validate_history_file = field_validator("history_file")(check_text)
    _validate_tls_files = field_validator("tls_ca_cert", "tls_client_cert", "tls_client_key")(check_text)

    @field_validator("health_path")
    @classmethod
    def _path_only(cls, value: str) -> str:
        # Appended to http://host:port: anything but a path ("@evil/") would change the host.
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]{0,200}", value):
            raise ValueError(f"{value!r} is not a URL path (starts with '/'; letters, digits, '.', '_', '~', '-', '/')")
        return value

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: list[int]) -> list[int]:
        if any(not 1024 <= p <= 65535 for p in value):
            raise ValueError("port slots must be between 1024 and 65535")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?", key):
                raise ValueError(f"{key!r} is not a label key (lowercase letters, digits, '.', '_', '-')")
        return value

    @field_validator("bind_host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # Replicas are reached by this machine's load balancer and checks only.
        if not is_loopback_host(value):
            raise ValueError("replicas listen on loopback only (127.0.0.1, localhost or ::1)")
        return value

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> DockerTarget:
        check_docker_tls(self.docker_host, self.tls_ca_cert, self.tls_client_cert, self.tls_client_key)
        return self

    @model_validator(mode="after")
    def _enough_slots(self) -> DockerTarget:
        if len(set(self.ports)) < self.replicas + 1:
            raise ValueError(
                f"{self.replicas} replicas need {self.replicas + 1} distinct port slots (one for the surge)"
            )
        return self

    # -- what the block hands out -----------------------------------------------------------

    def get_client(self, timeout_s: float = 60) -> docker.DockerClient:
        """A client of this target's engine; an engine that does not answer is a TemporaryError."""
        return DockerConnection(self.docker_host, timeout_s, self.tls_files()).client

    def tls_files(self) -> DockerTLSFiles | None:
        """The engine's TLS client files, when the block names them (all three, or none: validated)."""
        if self.tls_ca_cert and self.tls_client_cert and self.tls_client_key:
            return DockerTLSFiles(self.tls_ca_cert, self.tls_client_cert, self.tls_client_key)
        return None

    def identity(self) -> str:
        scheme, _, address = self.docker_host.partition("://")
        if scheme == "tcp":
            host, _, port = address.rpartition(":")
            address = f"{resolve_host(host.strip('[]'))}:{port}"
        return f"docker {scheme}:{address} {self.app_name}"

    def engine(self) -> DockerEngine:
        return DockerEngine(self, RevisionHistory(self.history_file))
