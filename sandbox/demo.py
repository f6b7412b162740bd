"""`make demo`: one full staging deploy of the reference app into the sandbox, through the
manual deployment (as a UI trigger would start it), then where to see everything."""

from __future__ import annotations

import sys

import httpx
from prefect.deployments import run_deployment

from sandbox import config
from tasks.notify import flow_run_url

# Unattended: the sandbox (only the sandbox) may skip the leads' sign-off.
DEMO_PARAMETERS = {"git_ref": "v3.2.0", "version": "3.2.0", "environment": "sandbox", "skip_signoff": True}


def main() -> int:
    print(f"Triggering staging-deploy/manual with {DEMO_PARAMETERS} ...", flush=True)
    run = run_deployment("staging-deploy/manual", parameters=DEMO_PARAMETERS, timeout=1800, poll_interval=2)
    ui = flow_run_url(str(run.id)) or f"http://127.0.0.1:{config.PREFECT_PORT}"
    print(f"\nRun {run.name}: {run.state.name} — {run.state.message}")
    print(f"  Prefect UI (stages, logs, artifacts): {ui}")
    health = httpx.get(f"{config.API_URL}/health", verify=str(config.CA_CERT), timeout=5)
    print(f"  The API through nginx: {config.API_URL}/health -> {health.status_code} {health.text.strip()}")
    slack = httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=5).json()
    print(f"  Slack stand-in: {len(slack)} messages recorded ({config.SLACK_CONTROL_URL}/messages)")
    print(f"  Prometheus: {config.PROMETHEUS_URL}   Sandbox status: make sandbox-status")
    return 0 if run.state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
