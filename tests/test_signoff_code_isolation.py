"""The code under review cannot reach the control plane (issue 14): the deployed ref's own `go test`
sees no PREFECT_* variable, no secret and no network.

A commit of the app adds a Go test that fails if its environment names Prefect or Slack, holds any
sandbox secret (it knows them only by SHA-256), or if it can open a connection to the Prefect
API. The build stage's own `go test` of that commit passes; the same Go test run the way the
worker used to run it (its whole environment, the host's network) fails, so the check is real.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid

import pytest

from sandbox import config
from tasks.release.build import checkout_source, run_go_tests

pytestmark = pytest.mark.sandbox

GO_TEST = """package isolation

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// A fresh source every time, so Go's test cache never answers for an earlier run.
const nonce = "%(nonce)s"

var secretHashes = map[string]bool{
%(hashes)s
}

func TestTheCodeUnderReviewCannotReachTheControlPlane(t *testing.T) {
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PREFECT_") || strings.Contains(name, "SLACK") {
			t.Errorf("the environment names %%s", name)
		}
		sum := sha256.Sum256([]byte(value))
		if secretHashes[hex.EncodeToString(sum[:])] {
			t.Errorf("the environment variable %%s holds a secret", name)
		}
	}
	conn, err := net.DialTimeout("tcp", "127.0.0.1:%(port)d", 2*time.Second)
	if err == nil {
		conn.Close()
		t.Errorf("reached the Prefect API at 127.0.0.1:%(port)d")
	}
	t.Logf("%%s: checked %%d environment variables; dial: %%v", nonce, len(os.Environ()), err)
}
"""


def commit_isolation_test(repo) -> str:
    secrets = config.load_secrets()
    hashes = "\n".join(f'\t"{hashlib.sha256(v.encode()).hexdigest()}": true,' for v in secrets.values())
    package = repo / "internal" / "isolation"
    package.mkdir(parents=True)
    (package / "doc.go").write_text(
        "// Package isolation checks what the code under review reaches.\npackage isolation\n"
    )
    source = GO_TEST % {"hashes": hashes, "port": config.PREFECT_PORT, "nonce": uuid.uuid4().hex}
    (package / "isolation_test.go").write_text(source)
    git = ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@architect.sandbox"]
    subprocess.run([*git, "checkout", "-q", "-b", "isolation-check"], check=True)
    subprocess.run([*git, "add", "internal/isolation"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "isolation check"], check=True)
    return "isolation-check"


def test_the_deployed_refs_go_test_sees_no_prefect_no_secret_and_no_network(app_repo_copy, tmp_path, monkeypatch):
    # The worker's environment as a flow run has it: the Prefect API's address, and secrets around.
    assert os.environ.get("PREFECT_API_URL")
    for name, value in config.load_secrets().items():
        monkeypatch.setenv(f"ARCHITECT_{name.upper()}", value)
    monkeypatch.setenv("SLACK_BOT_TOKEN", config.load_secrets()["slack_bot_token"])
    ref = commit_isolation_test(app_repo_copy)

    source = checkout_source(str(app_repo_copy), ref, str(tmp_path / "workspace"))
    report = run_go_tests(source)  # a standalone task run, as in the build stage; raises when a Go test fails
    isolation = [p for p in report.packages if p.package.endswith("/internal/isolation")]
    assert isolation and isolation[0].status == "pass" and isolation[0].passed == 1, report

    # The same Go test, run with the worker's whole environment on the host's network, sees it all.
    exposed = subprocess.run(
        ["go", "test", "-count=1", "./internal/isolation/"],
        cwd=source.path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off"},
    )
    assert exposed.returncode != 0
    for seen in (
        "the environment names PREFECT_API_URL",
        "holds a secret",
        f"reached the Prefect API at 127.0.0.1:{config.PREFECT_PORT}",
    ):
        assert seen in exposed.stdout, exposed.stdout[-2000:]
