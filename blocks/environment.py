"""The environment block: everything one environment (``sandbox``, ``staging``) needs."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.approvers import Approver, Role, check_approvers, check_receiver_key  # noqa: F401  (Role: its old home)
from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.kubernetes.target import KubernetesTarget
from blocks.registry import ImageRegistry
from blocks.slack import SlackChannel
from blocks.validation import (
    check_docker_host,
    check_env_names,
    check_plain_url,
    check_repo_url,
    check_text,
    check_tls_url,
    docker_engine_is_remote_tcp,
    reject_unknown_fields,
)


class BaselineTolerance(BaseModel):
    """How much worse than the live release one measurement may be before it counts as a regression.

    A regression must exceed BOTH margins: ``relative`` (a share of the baseline) and ``absolute`` (in the
    measurement's unit), so a 2 ms -> 3 ms jitter (+50 %) is not one, nor is 400 -> 404 ms (+4 ms).
    """

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    relative: float = Field(ge=0, le=10, description="Allowed increase as a share of the baseline (0.2 = +20 %)")
    absolute: float = Field(ge=0, description="Allowed increase in the measurement's unit (ms, or a ratio)")

    def allowed(self, baseline: float) -> float:
        """The largest value that is not a regression against ``baseline``."""
        return baseline + max(abs(baseline) * self.relative, self.absolute)

    def describe(self, unit: str = "") -> str:
        if unit == "ratio":
            return (
                f"+{self.relative:.0%} and +{self.absolute * 100:g} points"
                if self.relative
                else f"+{self.absolute * 100:g} points"
            )
        return f"+{self.relative:.0%} and +{self.absolute:g}{(' ' + unit) if unit else ''}"


class BaselineTolerances(BaseModel):
    """Per measurement, how far a release may fall behind the one it replaces (metrics and load gates)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    p50_ms: BaselineTolerance = Field(
        default_factory=lambda: BaselineTolerance(relative=0.25, absolute=5), description="P50 latency"
    )
    p95_ms: BaselineTolerance = Field(
        default_factory=lambda: BaselineTolerance(relative=0.20, absolute=5), description="P95 latency"
    )
    p99_ms: BaselineTolerance = Field(
        default_factory=lambda: BaselineTolerance(relative=0.25, absolute=10), description="P99 latency"
    )
    error_rate: BaselineTolerance = Field(
        default_factory=lambda: BaselineTolerance(relative=0, absolute=0.002),
        description="Error ratio (0.002 = +0.2 points)",
    )
    db_connections: BaselineTolerance = Field(
        default_factory=lambda: BaselineTolerance(relative=0.25, absolute=0.10),
        description="Peak share of the database pool in use",
    )
    significance: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description=(
            "Mann-Whitney U: a latency regression counts only if the candidate's distribution is slower "
            "with a one-sided p-value below this (when both samples are large enough to test)"
        ),
    )
    large_effect: float = Field(
        0.71,
        gt=0.5,
        lt=1,
        description=(
            "...and only if a candidate request is slower than a baseline one at least this often (Vargha and "
            "Delaney's A; 0.71 is a large effect): a busy machine shifts a distribution significantly but a little"
        ),
    )


class PerformanceTargets(BaseModel):
    """The guide's performance targets; the load and metrics gates judge against these."""

    # An infinite target would make its gate pass whatever was measured.
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    p50_ms: float = Field(100, gt=0, description="P50 latency must stay below this")
    p95_ms: float = Field(500, gt=0, description="P95 latency must stay below this")
    p99_ms: float = Field(1000, gt=0, description="P99 latency must stay below this")
    max_ms: float = Field(2000, gt=0, description="Maximum latency must stay below this")
    min_rps: float = Field(100, gt=0, description="Throughput the service must at least reach")
    target_rps: float = Field(500, gt=0, description="Expected traffic")
    peak_rps: float = Field(1000, gt=0, description="Spike the service must absorb")
    error_rate_target: float = Field(0.001, ge=0, le=1, description="Error-rate goal (0.1%)")
    error_rate_max: float = Field(0.01, ge=0, le=1, description="Largest acceptable error rate (1%)")
    cpu_max: float = Field(0.70, gt=0, le=1, description="Sustained CPU share")
    memory_max: float = Field(0.80, gt=0, le=1, description="Sustained memory share")
    db_connections_max: float = Field(0.80, gt=0, le=1, description="Share of the DB pool in use")
    baseline: BaselineTolerances = Field(
        default_factory=BaselineTolerances,
        description="How much worse than the live release each measurement may be (judged besides the targets)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PerformanceTargets:
        if not self.p50_ms <= self.p95_ms <= self.p99_ms <= self.max_ms:
            raise ValueError("latency targets must satisfy p50 <= p95 <= p99 <= max")
        if not self.min_rps <= self.target_rps <= self.peak_rps:
            raise ValueError("throughput targets must satisfy min <= target <= peak")
        if self.error_rate_target > self.error_rate_max:
            raise ValueError("error_rate_target must not exceed error_rate_max")
        return self


class StagingEnvironment(Block):
    """One deployment environment: where the app runs and everything that checks it."""

    _block_type_name = "Staging Environment"
    _block_type_slug = "architect-staging-environment"
    _description = (
        "An environment the staging-deploy flow can target: API URL, deploy target, registry, "
        "database, Prometheus, Slack, performance targets and the leads who may sign off."
    )
    # A refused value is not repeated in the error: an app_repo with a token in it would be.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["sandbox", "staging"] = Field(
        "staging",
        description="'sandbox' is the local one-machine environment (whether a run may skip sign-off is "
        "the worker's setting ARCHITECT_ALLOW_SKIP_SIGNOFF, never a field of this block)",
    )
    app_repo: str = Field(
        description="Git URL or path of the app's source repository (https://, ssh:// or a path; no credentials)"
    )
    app_repo_token: SecretStr | None = Field(
        None, description="Token for an https:// app_repo that needs one (never in the URL itself)"
    )
    api_url: AnyHttpUrl = Field(description="Load-balanced HTTPS URL of the API, e.g. https://staging-api.example")
    api_http_url: AnyHttpUrl | None = Field(
        None, description="Plain-HTTP URL of the same load balancer; the smoke suite checks it redirects to HTTPS"
    )
    ca_bundle: str | None = Field(
        None, description="PEM file of the CA to trust for api_url; empty for the system store"
    )
    cert_warning_days: float = Field(
        30,
        ge=0,
        le=365,
        description="The smoke suite warns (without failing) when api_url's certificate expires within this many days",
    )
    target: DockerTarget | KubernetesTarget = Field(
        description="Where replicas run: one Docker engine or a Kubernetes cluster"
    )
    builder_docker_host: str = Field(
        "unix:///var/run/docker.sock",
        description="Docker engine that builds, pushes and verifies images (unix://, ssh://, or tcp:// on loopback)",
    )
    registry: ImageRegistry
    database: PostgresDatabase
    prometheus_url: AnyHttpUrl = Field(description="Prometheus base URL, e.g. http://127.0.0.1:9090")
    slack: SlackChannel | None = Field(None, description="Where deploy notifications go; empty for none")
    performance: PerformanceTargets = Field(default_factory=PerformanceTargets)
    approvers: dict[Role, list[Approver]] = Field(
        default_factory=dict,
        description="The leads who may sign off for each role: name, Slack user id, SSH keys (allowed_signers lines)",
    )
    signoff_receiver_key: str | None = Field(
        None,
        description="Public key (ed25519:BASE64) of the sign-off receiver: Slack sign-offs count only with its "
        "signature; empty for no Slack buttons",
    )
    app_settings: dict[str, str] = Field(default_factory=dict, description="Non-secret app environment variables")
    app_secrets: SecretDict = Field(
        default_factory=lambda: SecretDict({}), description="Secret app environment variables (JWT_SECRET, ...)"
    )
    smoke_user: str = Field("smoke", description="User the smoke suite logs in as")
    smoke_password: SecretStr = Field(description="Password of the smoke user")
    allowed_origin: str = Field(
        "https://dashboard.architect.localhost", description="An origin CORS must allow (the smoke suite checks it)"
    )
    load_profiles: list[Literal["light", "medium", "heavy", "sustained"]] = Field(
        default_factory=lambda: ["light", "medium", "heavy"],
        description="Load profiles a run uses unless it names its own (a 2-core sandbox cannot offer 'heavy')",
    )
    rollout_timeout_s: float = Field(300, gt=0, le=3600, description="Deadline for a rollout or an undo")
    health_timeout_s: float = Field(60, gt=0, le=3600, description="Deadline for the health gate")

    # https:// off loopback; api_http_url is the plain port that must redirect, so plain http.
    _validate_tls_urls = field_validator("api_url", "prometheus_url")(check_tls_url)
    _validate_urls = field_validator("api_http_url")(check_plain_url)
    _validate_repo = field_validator("app_repo")(check_repo_url)
    _validate_text = field_validator("ca_bundle", "smoke_user")(check_text)
    _validate_docker_host = field_validator("builder_docker_host")(check_docker_host)

    @field_validator("builder_docker_host")
    @classmethod
    def _builder_engine_not_in_the_clear(cls, value: str) -> str:
        # The build engine takes no TLS client certificates (the build opens it by address alone).
        if docker_engine_is_remote_tcp(value):
            raise ValueError(
                f"{value} is a tcp:// engine off loopback, which would be driven without TLS; "
                "use ssh://, a unix socket or a loopback engine"
            )
        return value

    _validate_env_names = field_validator("app_settings")(check_env_names)
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    @field_validator("allowed_origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]{1,253}(:\d{1,5})?", value):
            raise ValueError(f"{value!r} is not an origin (scheme://host[:port], no path)")
        return value

    @field_validator("app_secrets")
    @classmethod
    def _secret_names(cls, value: SecretDict) -> SecretDict:
        check_env_names(value.get_secret_value())
        return value

    _validate_approvers = field_validator("approvers")(check_approvers)
    _validate_receiver_key = field_validator("signoff_receiver_key")(check_receiver_key)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS verification for the API: the configured CA, never verification turned off."""
        if self.ca_bundle:
            return ssl.create_default_context(cafile=str(Path(self.ca_bundle).expanduser()))
        return ssl.create_default_context()

    def app_environment(self) -> dict[str, str]:
        """Everything the app's processes get as environment (holds secrets: never log it)."""
        env = dict(self.app_settings)
        env.update({k: str(v) for k, v in self.app_secrets.get_secret_value().items()})
        env["DATABASE_URL"] = self.database.app_database_url()
        env["SMOKE_USER"] = self.smoke_user
        env["SMOKE_PASSWORD"] = self.smoke_password.get_secret_value()
        return env

    def secret_values(self) -> list[str]:
        """Every secret this environment holds, for redaction and for the tests that search for leaks."""
        values = [self.database.password.get_secret_value(), self.smoke_password.get_secret_value()]
        values += [str(v) for v in self.app_secrets.get_secret_value().values()]
        if self.registry.password:
            values.append(self.registry.password.get_secret_value())
        if self.slack:
            values.append(self.slack.bot_token.get_secret_value())
        if self.app_repo_token:
            values.append(self.app_repo_token.get_secret_value())
        return [v for v in values if v]
