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


_ENTITY_OR_MARKUP = re.compile(r"&(?!(?:amp|lt|gt);)|[<>]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def for_slack_once(text: str, keep_links: tuple[str, ...] = ()) -> str:
    """``for_slack`` for text that may be partly escaped already (a caller escaped a lead's notes
    and the notifier escapes again): ``&amp;``, ``&lt;`` and ``&gt;`` stay as they are, so nothing is
    escaped twice. Links ``<URL|label>`` whose URL is one of ``keep_links`` (the run's own link,
    made by the pipeline) stay links; every other ``<`` is escaped."""
    text = _CONTROL.sub("", str(text))
    kept = [link for link in keep_links if link]
    if not kept:
        return _ENTITY_OR_MARKUP.sub(lambda m: _ESCAPES[m.group(0)], text)
    # Only "<" + a kept URL + "|" + a label without markup + ">" is left alone.
    allowed = re.compile("|".join(rf"<{re.escape(url)}\|[^<>|]*>" for url in kept))
    out, end = [], 0
    for match in allowed.finditer(text):
        out.append(_ENTITY_OR_MARKUP.sub(lambda m: _ESCAPES[m.group(0)], text[end : match.start()]))
        out.append(match.group(0))
        end = match.end()
    out.append(_ENTITY_OR_MARKUP.sub(lambda m: _ESCAPES[m.group(0)], text[end:]))
    return "".join(out)
