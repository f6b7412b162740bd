"""The one logger helper: Prefect's run logger inside a run, a module logger outside one."""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def run_logger(fallback: str = "architect_deploy") -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger (its lines reach the Prefect UI); ``fallback`` names the logger used
    when a task body is called directly (``.fn``) in tests or benchmarks."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(fallback)
