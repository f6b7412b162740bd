"""Deploy target block: the guide's Kubernetes cluster, through the official ``kubernetes`` client.

The block holds the settings and checks them: how to reach the cluster (kubeconfig, in-cluster,
or host + token), the namespace and object names, and where the app repo's manifests are. It
hands out an ``ApiClient`` (``get_client``) and its engine (``engine``, in
``blocks.kubernetes.engine``), which applies the manifests, watches the rollout, undoes it and
runs one-off Jobs, one API call at a time through ``blocks.kubernetes.api``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.kubernetes.engine import KubernetesEngine
from blocks.kubernetes.errors import kubernetes_errors
from blocks.target import DeployTarget
from blocks.validation import check_name, check_relative_path, check_text, check_url_text
from tasks.core.errors import PermanentError
from tasks.core.models import RolloutResult
from tasks.core.net import is_loopback_host, resolve_host


class KubernetesTarget(DeployTarget):
    """The app as a Deployment in one namespace of a Kubernetes cluster."""

    _block_type_name = "Architect Kubernetes Target"
    _block_type_slug = "architect-kubernetes-target"
    _description = (
        "Deploys the app to a Kubernetes namespace: Secret from the environment, server-side apply "
        "of the app repo's k8s/staging manifests with the pushed image, rollout watched like "
        "`kubectl rollout status`, undo like `kubectl rollout undo`, one-off commands as Jobs."
    )

    kubeconfig_path: str | None = Field(None, description="kubeconfig file; empty for ~/.kube/config")
    context: str | None = Field(None, description="kubeconfig context, e.g. 'staging'; empty for the current one")
    in_cluster: bool = Field(False, description="Use the pod's service account (when the worker runs in the cluster)")
    host: str | None = Field(None, description="API server URL; http:// only on loopback (kubectl proxy, tests)")
    token: SecretStr | None = Field(None, description="Bearer token for host (a service account token)")
    ca_cert_path: str | None = Field(None, description="PEM CA bundle for host's certificate")
    verify_tls: bool = Field(True, description="Always true: TLS is never unverified")
    namespace: str = Field("architect-staging", description="Namespace the app lives in")
    deployment_name: str = Field("architect-api", description="The Deployment in the manifests")
    container_name: str = Field("architect-api", description="The container whose image is set")
    repo_dir: str | None = Field(None, description="The app repo checkout; see with_checkout()")
    manifest_dir: str = Field("k8s/staging", description="Manifests, relative to repo_dir")
    secret_name: str = Field("architect-secrets", description="Secret the app's pods read with envFrom")
    field_manager: str = Field("architect-deploy", description="Server-side apply field manager")
    poll_interval_s: float = Field(1.0, gt=0, le=30, description="How often the rollout is looked at")
    request_timeout_s: float = Field(30, gt=0, le=300, description="Timeout of one API call")
    log_tail: int = Field(50, ge=1, le=5000, description="Log lines per pod gathered on failure")
    reachable_replica_urls: list[str] = Field(
        default_factory=list, description="Replica URLs reachable from the worker; empty: health goes through api_url"
    )

    @field_validator("namespace", "deployment_name", "container_name", "secret_name")
    @classmethod
    def _names(cls, value: str) -> str:
        return check_name(value)

    _validate_manifest_dir = field_validator("manifest_dir")(check_relative_path)
    _validate_text = field_validator("kubeconfig_path", "context", "ca_cert_path", "repo_dir")(check_text)

    @field_validator("field_manager")
    @classmethod
    def _field_manager(cls, value: str) -> str:
        if len(value) > 128 or not value.isprintable():  # the API's limits for fieldManager
            raise ValueError(f"{value!r} is not a field manager (printable, at most 128 characters)")
        return value

    @field_validator("reachable_replica_urls")
    @classmethod
    def _replica_urls(cls, value: list[str]) -> list[str]:
        return [check_url_text(url) for url in value]

    _validate_host = field_validator("host")(check_url_text)

    @field_validator("verify_tls")
    @classmethod
    def _always_verify(cls, value: bool) -> bool:
        if not value:
            raise ValueError("TLS verification cannot be turned off; give ca_cert_path instead")
        return value

    @model_validator(mode="after")
    def _access(self) -> KubernetesTarget:
        if self.in_cluster and self.host:
            raise ValueError("give either in_cluster or host, not both")
        if self.host:
            url = urlsplit(self.host)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"host {self.host!r} is not an http(s) URL")
            if url.scheme == "http" and not is_loopback_host(url.hostname):
                raise ValueError(
                    f"host {self.host!r}: plain http is only allowed to a loopback address (kubectl proxy, tests)"
                )
        return self

    # ---- what the block hands out ----------------------------------------------------------------

    def get_client(self) -> k8s.ApiClient:
        """An ApiClient for the configured cluster (kubeconfig, in-cluster, or host + token)."""
        cfg = k8s.Configuration()
        if self.in_cluster:
            with kubernetes_errors("reading the service account"):
                k8s_config.load_incluster_config(client_configuration=cfg)
        elif self.host:
            cfg.host = self.host.rstrip("/")
            if self.token:
                cfg.api_key = {"authorization": f"Bearer {self.token.get_secret_value()}"}
            if self.ca_cert_path:
                cfg.ssl_ca_cert = str(Path(self.ca_cert_path).expanduser())
        else:
            path = str(Path(self.kubeconfig_path).expanduser()) if self.kubeconfig_path else None
            with kubernetes_errors(f"reading kubeconfig {path or '~/.kube/config'}"):
                k8s_config.load_kube_config(config_file=path, context=self.context, client_configuration=cfg)
        cfg.verify_ssl = True
        cfg.retries = 1  # a down API answers TemporaryError quickly; the flow decides on retries
        return k8s.ApiClient(cfg)

    def with_checkout(self, repo_dir: str | Path) -> KubernetesTarget:
        """A copy that reads manifests from this checkout of the app repo."""
        return self.model_copy(update={"repo_dir": str(repo_dir)})

    def manifests_path(self) -> Path:
        """``repo_dir/manifest_dir``, resolved; refused when it points outside the checkout."""
        if not self.repo_dir:
            raise PermanentError("repo_dir is not set: give the app repo checkout (with_checkout)")
        base = Path(self.repo_dir).expanduser().resolve()
        path = (base / self.manifest_dir).resolve()
        if path != base and base not in path.parents:
            raise PermanentError(f"manifest_dir {self.manifest_dir!r} leaves the repo checkout")
        return path

    def identity(self) -> str:
        if self.host:
            parts = urlsplit(self.host)
            cluster = f"{parts.scheme}://{resolve_host(parts.hostname or '')}:{parts.port or 443}"
        else:
            cluster = "in-cluster" if self.in_cluster else f"context {self.context or '(current)'}"
        return f"kubernetes {cluster} {self.namespace}/{self.deployment_name}"

    def engine(self) -> KubernetesEngine:
        return KubernetesEngine(self)

    def replicas_to_check(self, rollout: RolloutResult) -> int | None:
        return None  # pods are reached through the configured URLs, not one URL per pod


__all__ = ["KubernetesTarget"]
