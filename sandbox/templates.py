"""Render the config templates in sandbox/conf and monitoring/ into the state directory.

Placeholders are `{{NAME}}` rather than `$NAME` or `{name}` because nginx and
Prometheus configs use `$` and braces themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


def render_text(text: str, values: dict[str, object]) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, text)


def render(template: Path, dest: Path, values: dict[str, object], mode: int = 0o644) -> bool:
    """Write the rendered template to dest; returns True if the content changed."""
    text = render_text(template.read_text(), values)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.read_text() == text:
        return False
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
    return True
