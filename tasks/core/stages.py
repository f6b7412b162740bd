"""The stages of a staging deploy, in the guide's order, and what a stage may change.

What each stage runs and changes is declared once, in the flow's stage table; the runner
(tasks/runner.py) undoes a failed run from those declarations.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    PREFLIGHT = "preflight"
    BUILD = "build"
    BACKUP = "backup"
    MIGRATE = "migrate"
    DEPLOY = "deploy"
    HEALTH = "health"
    SMOKE = "smoke"
    LOAD = "load"
    METRICS = "metrics"
    SIGN_OFF = "sign-off"


class Effect(StrEnum):
    """What a stage changes that a rollback must undo. A backup writes a dump, but it changes
    nothing a rollback undoes, so backup is NOTHING."""

    NOTHING = "nothing"
    DATABASE = "database"
    APP = "app"
