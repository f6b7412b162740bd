"""Deploys started together, each in its own process, as two triggers of two environments would be.

Each process is one staging-deploy flow run reporting to the sandbox's server (no deployment
and no worker in between, so only the flow's own deploy lock keeps them apart).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sandbox import config

_RUN = """
import json, sys
from tests.support.deploys import deploy
state = deploy(sys.argv[1], sys.argv[2], environment=sys.argv[3])
print(json.dumps({"type": state.type.value, "message": state.message,
                  "flow_run_id": str(state.state_details.flow_run_id)}))
"""


@dataclass
class Outcome:
    environment: str
    type: str
    message: str
    flow_run_id: str


def deploy_together(
    git_ref: str, version: str, environments: list[str], logs: Path, timeout_s: float = 1200
) -> list[Outcome]:
    """Start one deploy per environment at once; wait for all of them; their outcomes in that order.

    Each process writes to files in ``logs`` (a pipe left unread could block the run holding the lock).
    """
    started = []
    for environment in environments:
        out, err = logs / f"{environment}.out", logs / f"{environment}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", _RUN, git_ref, version, environment],
                cwd=config.REPO_ROOT,
                env=dict(os.environ),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        started.append((environment, proc, out, err))
    outcomes = []
    for environment, proc, out, err in started:
        code = proc.wait(timeout=timeout_s)
        assert code == 0, f"the deploy to {environment} exited {code}: {err.read_text()[-3000:]}"
        result = [line for line in out.read_text().splitlines() if line.startswith('{"type"')]
        assert result, f"the deploy to {environment} printed no outcome: {out.read_text()[-2000:]}"
        outcomes.append(Outcome(environment=environment, **json.loads(result[-1])))
    return outcomes
