"""Releases with a security mistake, each caught by the smoke gate's attacker checks and rolled back.

One bad release per class the app owns (sandbox/releases/RELEASES.md): CORS, headers, input,
auth. TLS is the balancer's (nginx terminates it; a release cannot change it), so its checks
are shown failing against a misconfigured server in tests/test_smoke_checks.py instead.
"""

from __future__ import annotations

import json

import pytest

from tests.support.app_state import serving_versions
from tests.support.deploys import deploy
from tests.test_staging_deploy import artifacts_of

pytestmark = pytest.mark.sandbox


def cors_rows(*labels: str) -> list[str]:
    return [
        f"security: CORS {kind} from {label} refused" for label in labels for kind in ("simple request", "preflight")
    ]


@pytest.mark.parametrize(
    ("release", "failing_rows"),
    [
        # Prefix matching of origins: a longer host, another port and a path all pass as the dashboard.
        (
            "corsprefix",
            cors_rows(
                "the allowed origin extended by prefix",
                "the allowed host on another port",
                "the allowed origin with a path",
            ),
        ),
        ("banner", ["security: no server or framework version banners"]),
        ("sqlfilter", ["security: SQL metacharacters in query parameters answered 4xx"]),
        ("opencookie", ["auth: session cookie is HttpOnly, Secure, SameSite"]),
    ],
)
def test_a_release_with_a_security_mistake_fails_smoke_and_is_rolled_back(
    sandbox_env, deployed_good_release, release, failing_rows
):
    state = deploy(f"v3.2.1-{release}", f"3.2.1-{release}")
    assert state.is_failed()
    assert state.message.startswith("smoke failed:"), state.message
    rows = json.loads(artifacts_of(state)["smoke-gate"].data)
    failed = [r for r in rows if r["verdict"] != "pass"]
    assert sorted(r["name"] for r in failed) == sorted(failing_rows), failed
    for row in failed:  # each row shows what was sent and what came back
        assert row["request"] and row["response"] or row["name"].startswith("auth: "), row
    assert "rolled back to revision" in state.message
    assert serving_versions(sandbox_env) == {deployed_good_release}
