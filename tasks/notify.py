"""Slack: one message per run, updated in place as stages pass, details in its thread.

Slack must never fail or slow a deploy. Every call runs on a background thread with a short
timeout; the flow only enqueues. A dead Slack costs the run at most the bounded wait in
``close()``. Failures are logged, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from prefect.settings import PREFECT_UI_URL
from pydantic import BaseModel

from blocks.slack import SlackChannel
from tasks.core.escaping import for_slack_once
from tasks.core.redaction import redact

ICONS = {
    "pending": "⚪",
    "running": "🔄",
    "passed": "✅",
    "failed": "❌",
    "skipped": "➖",
    "waiting": "⏸️",
    "cancelled": "🛑",
}


def flow_run_url(flow_run_id: str | None) -> str | None:
    base = PREFECT_UI_URL.value()
    if not base or not flow_run_id:
        return None
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


class SlackMessage(BaseModel):
    """A posted message, by its channel ID and timestamp (how chat.update finds it)."""

    channel: str
    ts: str


@dataclass
class _Stage:
    name: str
    status: str = "pending"
    detail: str = ""


@dataclass
class RunNotifier:
    """The run's Slack message. Methods return at once; sending happens in the background."""

    slack: SlackChannel | None
    title: str
    run_url: str | None
    logger: logging.Logger | logging.LoggerAdapter
    stage_names: list[str]
    outcome: str = "running"
    _stages: dict[str, _Stage] = field(default_factory=dict)
    _queue: queue.Queue[tuple[str, str, SlackMessage | None] | None] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _channel: str | None = None
    _ts: str | None = None
    _blocks: list[dict] | None = None  # Block Kit under the text (the sign-off's buttons); [] once removed
    sent: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self._stages = {name: _Stage(name) for name in self.stage_names}
        self._thread = threading.Thread(target=self._drain, name="slack-notifier", daemon=True)
        if self.slack is not None:
            self._client = self.slack.get_client()
            self._thread.start()

    # -- what the flow calls -------------------------------------------------------------

    def stage(self, name: str, status: str, detail: str | None = None) -> None:
        """Show ``name`` as ``status``; without a detail it keeps the one shown (the sign-off's
        "4/4 signed: …" once the runner marks that stage passed)."""
        with self._lock:
            stage = self._stages.setdefault(name, _Stage(name))
            stage.status = status
            if detail is not None:
                stage.detail = detail
        self._enqueue("update", "")

    def finish(self, outcome: str) -> None:
        with self._lock:
            self.outcome = outcome
        self._enqueue("update", "")

    def reply(self, text: str) -> None:
        self._enqueue("reply", text)

    def attach_blocks(self, blocks: list[dict] | None) -> None:
        """Show Block Kit ``blocks`` under the run's text (None removes them); the message is updated."""
        with self._lock:
            self._blocks = list(blocks) if blocks else ([] if self._blocks is not None else None)
        self._enqueue("update", "")

    @property
    def message(self) -> SlackMessage | None:
        """Where the run's message is, once Slack has taken it (a later run may need to close it)."""
        ts = self._ts  # set once, by the sender thread
        return SlackMessage(channel=self._channel, ts=ts) if ts and self._channel else None

    def overwrite(self, message: SlackMessage, text: str) -> None:
        """Replace another run's message (one whose run died and can no longer say how it ended)."""
        self._enqueue("overwrite", text, message)

    def close(self, timeout_s: float = 5.0) -> None:
        """Let queued messages go out, waiting at most ``timeout_s``."""
        if self.slack is None:
            return
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.logger.warning("Slack did not take the last messages within %.0f s; dropped", timeout_s)

    # -- rendering -----------------------------------------------------------------------

    def render(self) -> str:
        with self._lock:
            lines = [f"*{self._slack_text(self.title)}* — {self._slack_text(self.outcome)}"]
            for stage in self._stages.values():
                suffix = f": {self._slack_text(stage.detail)}" if stage.detail else ""
                lines.append(f"{ICONS.get(stage.status, '•')} {stage.name}{suffix}")
        if self.run_url:
            lines.append(f"<{self.run_url}|Open the run in Prefect>")
        return "\n".join(lines)

    def _body(self) -> dict:
        text = self.render()
        with self._lock:
            extra = self._blocks
        if extra is None:
            return {"text": text}
        # The text stays the notification's fallback; [] tells Slack to drop blocks shown before.
        head = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}] if extra else []
        return {"text": text, "blocks": head + extra}

    # -- the background sender -----------------------------------------------------------

    def _slack_text(self, text: str) -> str:
        """The one escaping point: every text this notifier sends (failure reasons, a lead's notes,
        tool output) is redacted and escaped for mrkdwn; only the run's own link stays a link."""
        return for_slack_once(redact(text), keep_links=(self.run_url or "",))

    def _enqueue(self, kind: str, text: str, message: SlackMessage | None = None) -> None:
        if self.slack is not None:
            self._queue.put((kind, self._slack_text(text), message))

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, text, message = item
            # Updates render the latest state, so a backlog of them collapses into one.
            if kind == "update" and self._next_is_update():
                continue
            self._send(kind, text, message)

    def _next_is_update(self) -> bool:
        with self._queue.mutex:
            return bool(self._queue.queue) and self._queue.queue[0] is not None and self._queue.queue[0][0] == "update"

    def _send(self, kind: str, text: str, message: SlackMessage | None) -> None:
        try:
            if kind == "overwrite":
                self._client.chat_update(channel=message.channel, ts=message.ts, text=text)
                self.logger.info("Slack: updated an earlier run's message")
                self.sent += 1
                return
            if self._ts is None:
                response = self._client.chat_postMessage(channel=self.slack.channel, **self._body())
                self._channel, self._ts = response["channel"], response["ts"]
                self.logger.info("Slack: posted the run's message")
                if kind == "update":
                    self.sent += 1
                    return
            if kind == "update":
                self._client.chat_update(channel=self._channel, ts=self._ts, **self._body())
                self.logger.info("Slack: updated the run's message")
            else:
                self._client.chat_postMessage(channel=self._channel, thread_ts=self._ts, text=text)
                self.logger.info("Slack: replied in the run's thread")
            self.sent += 1
        except Exception as exc:  # a Slack failure is reported and dropped, never raised
            self.failed += 1
            self.logger.warning("Slack call failed (%s): %s", type(exc).__name__, str(exc)[:200])
