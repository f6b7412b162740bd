"""The run's secrets, registered with the redactor when the run loads its environment.

Every task and subflow of the run runs in the same process (threads of the flow run's process),
so registering once, at the start, is enough for all of them: the run's log lines, artifacts,
error messages and Slack texts are redacted from then on (``tasks.core.redaction``).
"""

from __future__ import annotations

from blocks.environment import StagingEnvironment
from tasks.core.redaction import Redactor, register

# The app environment's variables that hold secrets besides the block's own secret fields.
SECRET_APP_VARIABLES = ("DATABASE_URL", "SMOKE_PASSWORD")


def run_secrets(env: StagingEnvironment) -> list[str]:
    """Every secret value the run knows: the block's secret fields and the app environment's
    secret values (DATABASE_URL whole, the app_secrets)."""
    values = list(env.secret_values())
    app = env.app_environment()
    secret_names = [*SECRET_APP_VARIABLES, *env.app_secrets.get_secret_value()]
    values += [app[name] for name in secret_names if app.get(name)]
    return values


def protect_run(env: StagingEnvironment) -> Redactor:
    """Register ``env``'s secrets with this process's redactor (and its log filter); returns it."""
    return register(run_secrets(env))
