"""The app repo's token reaches git as configuration in its environment, never in the URL or argv."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
from pydantic import SecretStr

from tasks.core.redaction import redact
from tasks.release.build import git_token_env

pytestmark = pytest.mark.unit

TOKEN = "ghp_" + "t0ken" * 6


def test_git_reads_the_token_as_an_authorization_header_from_its_environment():
    env = git_token_env(SecretStr(TOKEN))
    assert all(TOKEN not in value for value in env.values())  # only its Basic-auth form travels
    seen = subprocess.run(
        ["git", "config", "--get", "http.extraHeader"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    scheme, _, credentials = seen.partition(": ")[2].partition(" ")
    assert scheme == "Basic" and base64.b64decode(credentials).decode() == f"x-access-token:{TOKEN}"
    assert credentials not in redact(f"git said: {seen}")  # the header's form is a secret of the run too


def test_without_a_token_git_gets_no_extra_configuration():
    assert git_token_env(None) == {}
