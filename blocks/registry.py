"""The image registry the pipeline pushes releases to."""

from __future__ import annotations

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.validation import check_host_port, check_name, check_text, reject_unknown_fields
from tasks.core.http_errors import http_errors
from tasks.core.net import is_loopback_host


class ImageRegistry(Block):
    """An OCI image registry: where built releases are pushed and targets pull from."""

    _block_type_name = "Image Registry"
    _block_type_slug = "architect-image-registry"
    _description = "Image registry for Architect API releases (address, repository, optional credentials)."

    address: str = Field(description="host:port of the registry, e.g. 127.0.0.1:55000")
    repository: str = Field("architect-api", description="Repository name of the app's images")
    username: str | None = Field(None, description="Registry user; empty for an anonymous registry")
    password: SecretStr | None = Field(None, description="Registry password or token")
    use_tls: bool = Field(False, description="Talk HTTPS to the registry's API (plain HTTP is only for loopback)")

    _validate_address = field_validator("address")(check_host_port)
    _validate_repository = field_validator("repository")(check_name)
    _validate_username = field_validator("username")(check_text)
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> ImageRegistry:
        if not self.use_tls and not is_loopback_host(self.address.rsplit(":", 1)[0]):
            raise ValueError(f"use_tls: plain HTTP to {self.address} is only allowed on loopback")
        return self

    def image(self, tag: str) -> str:
        return f"{self.address}/{self.repository}:{tag}"

    def pinned(self, tag: str, digest: str) -> str:
        """``repo:tag@sha256:...``: the digest decides what runs, the tag tells people what it is."""
        return f"{self.image(tag)}@{digest}"

    def auth_config(self) -> dict[str, str] | None:
        if not self.username:
            return None
        return {"username": self.username, "password": self.password.get_secret_value() if self.password else ""}

    def check_reachable(self, timeout_s: float = 5.0) -> str:
        scheme = "https" if self.use_tls else "http"
        auth = (self.username, self.password.get_secret_value()) if self.username and self.password else None
        with http_errors(f"registry {self.address}"):
            httpx.get(f"{scheme}://{self.address}/v2/", auth=auth, timeout=timeout_s).raise_for_status()
        return f"registry {self.address} answers /v2/"
