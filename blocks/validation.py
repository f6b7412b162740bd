"""Field validators shared by blocks and flow parameters.

Each raises ValueError with a message that says what was expected; pydantic names the field.
Values reach git, docker and Kubernetes as arguments, so the patterns are strict allow-lists,
always applied with fullmatch: re's '$' also matches before a trailing newline.
"""

from __future__ import annotations

import re

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
# The same rule without look-arounds, for JSON schemas (the UI's form) and pydantic's regex engine.
GIT_REF_CHARS = r"^[A-Za-z0-9._/][A-Za-z0-9._/-]{0,99}$"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HOST_PORT = re.compile(r"^[A-Za-z0-9.-]{1,253}:\d{1,5}$")


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


def check_host_port(value: str) -> str:
    if not HOST_PORT.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value
