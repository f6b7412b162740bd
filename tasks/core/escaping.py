"""Escaping for the places a person reads: Slack mrkdwn and the artifacts' markdown.

A lead's notes, an exception message or a replica's log line is data, never markup: it must not
mention a channel in Slack, make a link, break a markdown table's row into more cells, or start
a heading. Each function escapes for one place.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029\x85\x0b\x0c]+\s*")
# Characters that start block markup at the beginning of a markdown line, or inline markup anywhere.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def for_slack(text: str) -> str:
    """Text for a Slack mrkdwn field: ``&``, ``<`` and ``>`` escaped as Slack asks, so
    ``<!channel>``, ``<@U123>`` and ``<https://…|…>`` arrive as plain characters."""
    text = _CONTROL.sub("", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def for_markdown(text: str) -> str:
    """Text on one line of a markdown artifact (a table cell, a heading, a list item): one line,
    every markup character backslash-escaped and HTML's ``<``/``&`` as entities."""
    text = _LINE_BREAKS.sub(" ", _CONTROL.sub("", str(text)))
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
