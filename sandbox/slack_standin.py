"""A stand-in for the Slack Web API and incoming webhooks, on 127.0.0.1:58090.

slack_sdk talks to it unchanged with WebClient(token=..., base_url=config.SLACK_API_URL).
It answers the methods the pipeline uses in Slack's own response shapes, checks the
bot token against secrets.json, and records every message (JSON lines in
$STATE/slack/messages.jsonl) so tests can assert what was said.

Test controls (not part of Slack):
  GET    /_standin/messages   all records as a JSON list
  DELETE /_standin/messages   forget them
  POST   /_standin/mode       {"mode": "ok" | "error" | "hang"}: error -> HTTP 500,
                              hang -> every API call sleeps 30 s (then HTTP 500)
  GET    /_standin/health
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

from aiohttp import web

from . import config

TEAM_ID, BOT_USER, BOT_ID = "T0SANDBOX", "U0SANDBOX", "B0SANDBOX"
HANG_SECONDS = 30


class Store:
    """Messages by ts, persisted as JSON lines (so chat.update works after a restart)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        self.by_ts: dict[str, dict] = {}
        self.last_ts = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self._index(json.loads(line))

    def _index(self, record: dict) -> None:
        self.records.append(record)
        if record.get("ts"):
            self.last_ts = max(self.last_ts, float(record["ts"]))
            if record["kind"] == "chat.postMessage":
                self.by_ts[record["ts"]] = record

    def next_ts(self) -> str:
        # Slack ts: "<seconds>.<6 digits>", unique per channel; strictly increasing here.
        ts = max(time.time(), self.last_ts + 0.000001)
        self.last_ts = ts
        return f"{ts:.6f}"

    def add(self, record: dict) -> None:
        record.setdefault("received_at", time.time())
        self._index(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def clear(self) -> None:
        self.records.clear()
        self.by_ts.clear()
        self.path.write_text("")


def channel_id(channel: str) -> str:
    """Map '#deploys' or 'deploys' to a stable Slack-looking id; ids pass through."""
    name = channel.lstrip("#")
    if name[:1] in ("C", "G", "D") and name[1:].isalnum() and name.isupper():
        return name
    return "C" + hashlib.sha1(name.encode()).hexdigest()[:10].upper()


async def _params(request: web.Request) -> dict:
    """Merge query string, form and JSON bodies the way Slack accepts them."""
    params: dict = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                params.update(body)
        else:
            params.update(dict(await request.post()))
    for key in ("blocks", "attachments", "metadata"):
        # Form-encoded clients send these as JSON strings.
        if isinstance(params.get(key), str):
            try:
                params[key] = json.loads(params[key])
            except ValueError:
                pass
    return params


def _token(request: web.Request, params: dict) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return params.get("token")


def _message(params: dict, ts: str) -> dict:
    message = {"type": "message", "subtype": "bot_message", "text": params.get("text", ""),
               "user": BOT_USER, "bot_id": BOT_ID, "team": TEAM_ID, "ts": ts}
    for key in ("blocks", "attachments", "thread_ts", "metadata"):
        if params.get(key) is not None:
            message[key] = params[key]
    return message


class StandIn:
    def __init__(self, store: Store, token: str):
        self.store = store
        self.token = token
        self.mode = "ok"

    async def _fault(self) -> web.Response | None:
        if self.mode == "hang":
            await asyncio.sleep(HANG_SECONDS)
            return web.json_response({"ok": False, "error": "standin_hang"}, status=500)
        if self.mode == "error":
            return web.json_response({"ok": False, "error": "standin_error"}, status=500)
        return None

    async def api(self, request: web.Request) -> web.Response:
        fault = await self._fault()
        if fault is not None:
            return fault
        method = request.match_info["method"]
        params = await _params(request)
        if _token(request, params) != self.token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = {"chat.postMessage": self.post_message, "chat.update": self.update,
                   "auth.test": self.auth_test,
                   "conversations.info": self.conversations_info}.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response(handler(params))

    def post_message(self, params: dict) -> dict:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            return {"ok": False, "error": "no_text"}
        ts = self.store.next_ts()
        channel = channel_id(str(params["channel"]))
        message = _message(params, ts)
        self.store.add({"kind": "chat.postMessage", "channel": channel,
                        "channel_requested": params["channel"], "ts": ts,
                        "thread_ts": params.get("thread_ts"), "text": params.get("text"),
                        "blocks": params.get("blocks"), "attachments": params.get("attachments")})
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def update(self, params: dict) -> dict:
        ts, channel = str(params.get("ts", "")), channel_id(str(params.get("channel", "")))
        original = self.store.by_ts.get(ts)
        if original is None or original["channel"] != channel:
            return {"ok": False, "error": "message_not_found"}
        self.store.add({"kind": "chat.update", "channel": channel, "ts": ts,
                        "thread_ts": original.get("thread_ts"), "text": params.get("text"),
                        "blocks": params.get("blocks"), "attachments": params.get("attachments")})
        return {"ok": True, "channel": channel, "ts": ts, "text": params.get("text", ""),
                "message": _message(params, ts)}

    def auth_test(self, params: dict) -> dict:
        return {"ok": True, "url": "https://sandbox.slack.com/", "team": "Sandbox",
                "user": "architect-deploy", "team_id": TEAM_ID, "user_id": BOT_USER,
                "bot_id": BOT_ID, "is_enterprise_install": False}

    def conversations_info(self, params: dict) -> dict:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        cid = channel_id(str(params["channel"]))
        name = str(params["channel"]).lstrip("#") if cid != params["channel"] else cid.lower()
        return {"ok": True, "channel": {
            "id": cid, "name": name, "is_channel": True, "is_private": False,
            "is_archived": False, "is_member": True, "created": 1700000000}}

    async def webhook(self, request: web.Request) -> web.Response:
        fault = await self._fault()
        if fault is not None:
            return fault
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return web.Response(status=400, text="no_text")
        self.store.add({"kind": "webhook", "path": request.path, "ts": self.store.next_ts(),
                        "thread_ts": body.get("thread_ts"), "text": body.get("text"),
                        "blocks": body.get("blocks"), "attachments": body.get("attachments")})
        return web.Response(text="ok", content_type="text/html")

    # --- test controls ---------------------------------------------------------
    async def list_messages(self, request: web.Request) -> web.Response:
        return web.json_response(self.store.records)

    async def clear_messages(self, request: web.Request) -> web.Response:
        self.store.clear()
        return web.json_response({"ok": True})

    async def set_mode(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("mode") not in ("ok", "error", "hang"):
            return web.json_response({"ok": False, "error": "mode must be ok|error|hang"},
                                     status=400)
        self.mode = body["mode"]
        return web.json_response({"ok": True, "mode": self.mode})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "mode": self.mode,
                                  "messages": len(self.store.records)})


def make_app(store: Store, token: str) -> web.Application:
    standin = StandIn(store, token)
    app = web.Application()
    app.router.add_route("*", "/api/{method}", standin.api)
    app.router.add_post("/services/{tail:.*}", standin.webhook)
    app.router.add_get("/_standin/messages", standin.list_messages)
    app.router.add_delete("/_standin/messages", standin.clear_messages)
    app.router.add_post("/_standin/mode", standin.set_mode)
    app.router.add_get("/_standin/health", standin.health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=config.HOST)
    parser.add_argument("--port", type=int, default=config.SLACK_PORT)
    args = parser.parse_args()
    token = config.load_secrets()["slack_bot_token"]
    web.run_app(make_app(Store(config.SLACK_MESSAGES), token), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
