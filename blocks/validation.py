"""Field validators shared by blocks and flow parameters.

Each raises ValueError with a message that says what was expected; pydantic names the field.
Values reach git, docker and Kubernetes as arguments, so the patterns are strict allow-lists,
always applied with fullmatch: re's '$' also matches before a trailing newline.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, TypeAdapter, ValidationError

from tasks.core.net import is_loopback_host

MAX_INPUT_LENGTH = 200

# Semantic Versioning 2.0.0, the grammar from semver.org (no leading "v").
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# A branch, tag or commit: what `git check-ref-format` accepts, minus anything a shell or git
# option parser could read specially (no leading '-', no '..', no '@{', no spaces or metacharacters).
GIT_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock$)(?!.*/$)(?!.*\.$)[A-Za-z0-9._/-]{1,100}$")
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOST_PORT = re.compile(r"^[A-Za-z0-9.-]{1,253}:\d{1,5}$")
HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^[0-9A-Fa-f:]{2,39}$")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DOCKER_HOST = re.compile(r"^(unix|tcp|ssh|npipe)://[^\s]{1,200}$")
MAX_URL_LENGTH = 2083


def _checked_length(value: str) -> str:
    if len(value) > MAX_INPUT_LENGTH:
        raise ValueError(f"is {len(value)} characters long; at most {MAX_INPUT_LENGTH} are allowed")
    return value


def check_semver(value: str) -> str:
    _checked_length(value)
    if not SEMVER.fullmatch(value):
        raise ValueError(f"{value!r} is not a semantic version such as 3.2.0 or 3.2.1-rc.1")
    return value


def check_git_ref(value: str) -> str:
    _checked_length(value)
    if not GIT_REF.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain git branch, tag or commit "
            "(letters, digits, '.', '_', '-', '/'; no leading '-', no '..')"
        )
    return value


def check_name(value: str) -> str:
    if not NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a lowercase name (a-z, 0-9, '-', at most 63 characters)")
    return value


def check_text(value: str | None) -> str | None:
    """A one-line setting (a path, a user, a context): bounded, no control characters."""
    if value is None:
        return value
    _checked_length(value)
    if CONTROL_CHARACTERS.search(value):
        raise ValueError(f"{value!r} contains a control character")
    return value


def check_hostname(value: str | None) -> str | None:
    if value is not None and not HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


def check_plain_url(url):
    """An http(s) URL (pydantic checked the scheme) without credentials in it: they would be logged."""
    if url is None:
        return url
    if url.username or url.password:
        raise ValueError("must not embed credentials (user:password@); they belong in a secret field")
    if len(str(url)) > MAX_URL_LENGTH:
        raise ValueError(f"is longer than {MAX_URL_LENGTH} characters")
    return url


def check_tls_url(url):
    """``check_plain_url``, and ``https://`` unless the host is loopback: off this machine the
    traffic (tokens, queries, sessions) would cross the network in the clear."""
    url = check_plain_url(url)
    if url is not None and url.scheme != "https" and not is_loopback_host(url.host):
        raise ValueError(f"must be https:// for {url.host} (plain http:// is only allowed on loopback)")
    return url


def check_repo_url(value: str) -> str:
    """A git repository: a path, ``git@host:path``, ``ssh://``, ``https://`` (or ``http://``/``git://`` on
    loopback), never with a password or token in it: the URL is logged and shown in errors."""
    check_text(value)
    if "://" not in value:
        return value  # a path, or scp-like user@host:path (a user name is no secret)
    parts = urlsplit(value)
    if parts.password is not None or (parts.username and parts.scheme in ("http", "https")):
        raise ValueError(
            "must not embed credentials (https://user:token@...): they would be logged; "
            "put a token in app_repo_token (a secret field)"
        )
    if parts.scheme in ("http", "git") and not is_loopback_host(parts.hostname):
        raise ValueError(f"must be https:// or ssh:// for {parts.hostname} ({parts.scheme}:// is not encrypted)")
    return value


def check_url_text(value: str | None) -> str | None:
    """A URL kept as text: http(s), a well-formed host, no credentials in it."""
    if value:
        try:
            check_plain_url(TypeAdapter(AnyHttpUrl).validate_python(value))
        except ValidationError as exc:
            raise ValueError(f"{value!r} is not an http(s) URL: {exc.errors()[0]['msg']}") from None
    return value


def check_relative_path(value: str) -> str:
    """A path inside a checkout: relative, no '..', no '~'."""
    check_text(value)
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "~")) or ".." in parts:
        raise ValueError(f"{value!r} must be a relative path inside the checkout (no leading '/' or '~', no '..')")
    return value


def check_env_names(value: dict) -> dict:
    for key in value:
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not an environment variable name (A-Z, 0-9, '_')")
    return value


def check_docker_host(value: str) -> str:
    if not DOCKER_HOST.fullmatch(value):
        raise ValueError(f"{value!r} is not a Docker engine address (unix://, tcp://, ssh:// or npipe://)")
    if value.startswith("tcp://") and urlsplit(value).hostname is None:
        raise ValueError(f"{value!r} names no host (tcp://HOST:PORT)")
    return value


def docker_engine_is_remote_tcp(docker_host: str) -> bool:
    """A ``tcp://`` engine off loopback: its API (root on that machine) crosses the network."""
    return docker_host.startswith("tcp://") and not is_loopback_host(urlsplit(docker_host).hostname)


def check_docker_tls(
    docker_host: str, ca_cert: str | None, client_cert: str | None, client_key: str | None, prefix: str = ""
) -> None:
    """A ``tcp://`` engine off loopback needs TLS with client certificates (all three files);
    the files are for ``tcp://`` only, and come all together or not at all."""
    names = [f"{prefix}tls_ca_cert", f"{prefix}tls_client_cert", f"{prefix}tls_client_key"]
    given = [bool(v) for v in (ca_cert, client_cert, client_key)]
    if any(given) and not docker_host.startswith("tcp://"):
        raise ValueError(f"{', '.join(names)}: TLS client certificates are for a tcp:// engine, not {docker_host}")
    if any(given) and not all(given):
        missing = [n for n, g in zip(names, given, strict=True) if not g]
        raise ValueError(f"{', '.join(missing)}: set all of {', '.join(names)} or none")
    if not all(given) and docker_engine_is_remote_tcp(docker_host):
        raise ValueError(
            f"{prefix}docker_host: a tcp:// engine off loopback ({docker_host}) needs TLS client certificates: "
            f"set {', '.join(names)}"
        )


def check_host_port(value: str) -> str:
    if not HOST_PORT.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


def reject_unknown_fields(cls, values):
    """A block's settings name only its own fields: a misspelt one (``replicass``) would otherwise
    be kept as an extra and silently ignored (Prefect's blocks allow extras)."""
    if isinstance(values, dict):
        known = {"block_type_slug"}  # Prefect's marker of which block a nested dict is
        for name, field in cls.model_fields.items():
            known |= {name, field.alias} - {None}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"its fields are {', '.join(cls.model_fields)}"
            )
    return values
