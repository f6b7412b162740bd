"""A stand-in for the Slack Web API, incoming webhooks and interactivity, on 127.0.0.1:58090.

slack_sdk talks to it unchanged with WebClient(token=..., base_url=config.SLACK_API_URL).
It answers the methods the pipeline uses in Slack's own response shapes (chat.postMessage,
to a channel or to a user id as a direct message, chat.update, conversations.open, views.open,
auth.test, conversations.info), keeps Block Kit as sent, checks the bot token against
secrets.json, and records every message (JSON lines in $STATE/slack/messages.jsonl) so tests
can assert what was said.

Interactivity works as Slack's does: a person "presses" a button or "submits" a modal through
the controls below, and the stand-in POSTs the interaction payload (form-encoded ``payload=``)
to the app's Request URL, signed with the signing secret exactly as Slack signs
(``X-Slack-Signature: v0=HMAC-SHA256(secret, "v0:" + timestamp + ":" + body)``). A trigger_id
is good for one views.open within 3 seconds, as in Slack.

Test controls (not part of Slack):
  GET    /_standin/messages   all records as a JSON list
  DELETE /_standin/messages   forget them
  POST   /_standin/mode       {"mode": "ok" | "error" | "hang"}: error -> HTTP 500,
                              hang -> every API call sleeps 30 s (then HTTP 500)
  POST   /_standin/click      {"user": "U…", "ts": message ts, "action_id": "…"}: press a button of
                              the message's latest blocks; answers what the app answered and the
                              exact request sent (so a test can replay it)
  POST   /_standin/submit     {"view_id": "V…", "values": {"block_id": "text or option value"}}:
                              submit an open modal as the person it was opened for
  GET    /_standin/views      the modals apps opened
  GET    /_standin/health
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from pathlib import Path

import aiohttp
from aiohttp import web

from . import config

TEAM_ID, BOT_USER, BOT_ID, APP_ID = "T0SANDBOX", "U0SANDBOX", "B0SANDBOX", "A0SANDBOX"
HANG_SECONDS = 30
TRIGGER_TTL_S = 3.0  # Slack's: a trigger_id opens a view only within 3 seconds


class Store:
    """Messages by ts, persisted as JSON lines (so chat.update works after a restart)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        self.by_ts: dict[str, dict] = {}
        self.latest: dict[str, dict] = {}  # ts -> the message as last posted or updated
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
            if record["kind"] in ("chat.postMessage", "chat.update"):
                self.latest[record["ts"]] = record

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
        self.latest.clear()
        self.path.write_text("")


def is_user_id(channel: str) -> bool:
    return channel[:1] in ("U", "W") and channel[1:].isalnum() and channel.isupper()


def dm_channel(user: str) -> str:
    """The app's direct-message channel with a user (Slack: D…)."""
    return "D" + hashlib.sha1(user.encode()).hexdigest()[:10].upper()


def channel_id(channel: str) -> str:
    """Map '#deploys' or 'deploys' to a stable Slack-looking id; ids pass through; a user id
    names the app's direct-message channel with that user."""
    if is_user_id(channel):
        return dm_channel(channel)
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
    for key in ("blocks", "attachments", "metadata", "view"):
        # Form-encoded clients send these as JSON strings.
        if isinstance(params.get(key), str):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params


def _token(request: web.Request, params: dict) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return params.get("token")


def _message(params: dict, ts: str) -> dict:
    message = {
        "type": "message",
        "subtype": "bot_message",
        "text": params.get("text", ""),
        "user": BOT_USER,
        "bot_id": BOT_ID,
        "team": TEAM_ID,
        "ts": ts,
    }
    for key in ("blocks", "attachments", "thread_ts", "metadata"):
        if params.get(key) is not None:
            message[key] = params[key]
    return message


def slack_signature(secret: str, timestamp: str, body: str) -> str:
    """Slack's v0 request signature (what Slack puts in X-Slack-Signature)."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class StandIn:
    def __init__(
        self, store: Store, token: str, signing_secret: str | None = None, interactivity_url: str | None = None
    ):
        self.store = store
        self.token = token
        self.mode = "ok"
        self.signing_secret = signing_secret
        self.interactivity_url = interactivity_url
        self.triggers: dict[str, dict] = {}  # trigger_id -> {"user", "issued", "used"}
        self.views: dict[str, dict] = {}  # view_id -> {"view", "user", "state"}

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
        handler = {
            "chat.postMessage": self.post_message,
            "chat.update": self.update,
            "auth.test": self.auth_test,
            "conversations.open": self.conversations_open,
            "views.open": self.views_open,
            "conversations.info": self.conversations_info,
        }.get(method)
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
        self.store.add(
            {
                "kind": "chat.postMessage",
                "channel": channel,
                "channel_requested": params["channel"],
                "ts": ts,
                "dm_user": params["channel"] if is_user_id(str(params["channel"])) else None,
                "thread_ts": params.get("thread_ts"),
                "text": params.get("text"),
                "blocks": params.get("blocks"),
                "attachments": params.get("attachments"),
            }
        )
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def update(self, params: dict) -> dict:
        ts, channel = str(params.get("ts", "")), channel_id(str(params.get("channel", "")))
        original = self.store.by_ts.get(ts)
        if original is None or original["channel"] != channel:
            return {"ok": False, "error": "message_not_found"}
        self.store.add(
            {
                "kind": "chat.update",
                "channel": channel,
                "ts": ts,
                "thread_ts": original.get("thread_ts"),
                "text": params.get("text"),
                "blocks": params.get("blocks"),
                "attachments": params.get("attachments"),
            }
        )
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": params.get("text", ""),
            "message": _message(params, ts),
        }

    def conversations_open(self, params: dict) -> dict:
        users = [u for u in str(params.get("users", "")).split(",") if u]
        if len(users) != 1 or not is_user_id(users[0]):
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "channel": {"id": dm_channel(users[0]), "is_im": True, "user": users[0]}}

    def views_open(self, params: dict) -> dict:
        trigger = self.triggers.get(str(params.get("trigger_id", "")))
        if trigger is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if trigger["used"] or time.time() - trigger["issued"] > TRIGGER_TTL_S:
            return {"ok": False, "error": "expired_trigger_id"}
        view = params.get("view")
        if not isinstance(view, dict) or view.get("type") != "modal" or not view.get("blocks"):
            return {"ok": False, "error": "invalid_arguments"}
        trigger["used"] = True
        view_id = "V" + secrets.token_hex(5).upper()
        opened = {
            **view,
            "id": view_id,
            "team_id": TEAM_ID,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
            "state": {"values": {}},
            "hash": secrets.token_hex(8),
        }
        self.views[view_id] = {"view": opened, "user": trigger["user"], "open": True}
        self.store.add(
            {
                "kind": "views.open",
                "ts": self.store.next_ts(),
                "view_id": view_id,
                "user": trigger["user"],
                "view": opened,
                "text": None,
            }
        )
        return {"ok": True, "view": opened}

    def auth_test(self, params: dict) -> dict:
        return {
            "ok": True,
            "url": "https://sandbox.slack.com/",
            "team": "Sandbox",
            "user": "architect-deploy",
            "team_id": TEAM_ID,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def conversations_info(self, params: dict) -> dict:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        cid = channel_id(str(params["channel"]))
        name = str(params["channel"]).lstrip("#") if cid != params["channel"] else cid.lower()
        return {
            "ok": True,
            "channel": {
                "id": cid,
                "name": name,
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": True,
                "created": 1700000000,
            },
        }

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
        self.store.add(
            {
                "kind": "webhook",
                "path": request.path,
                "ts": self.store.next_ts(),
                "thread_ts": body.get("thread_ts"),
                "text": body.get("text"),
                "blocks": body.get("blocks"),
                "attachments": body.get("attachments"),
            }
        )
        return web.Response(text="ok", content_type="text/html")

    # --- interactivity: what Slack sends the app ---------------------------------
    async def _deliver(self, payload: dict) -> dict:
        """POST one interaction payload to the app, signed as Slack signs it."""
        if not (self.signing_secret and self.interactivity_url):
            return {"ok": False, "error": "no signing secret or interactivity URL configured"}
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": slack_signature(self.signing_secret, timestamp, body),
        }
        started = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    self.interactivity_url, data=body.encode(), headers=headers, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp,
            ):
                answer, status = await resp.text(), resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            answer, status = f"{type(exc).__name__}: {exc}", 0
        return {
            "ok": 200 <= status < 300,
            "status": status,
            "body": answer,
            "seconds": round(time.monotonic() - started, 3),
            "request": {"url": self.interactivity_url, "headers": headers, "body": body},
        }

    def _user(self, user_id: str) -> dict:
        return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID}

    async def click(self, request: web.Request) -> web.Response:
        body = await request.json()
        user, ts, action_id = str(body.get("user", "")), str(body.get("ts", "")), str(body.get("action_id", ""))
        message = self.store.latest.get(ts)
        if message is None:
            return web.json_response({"ok": False, "error": "message_not_found"}, status=404)
        found = [
            (block, element)
            for block in (message.get("blocks") or [])
            if block.get("type") == "actions"
            for element in block.get("elements", [])
            if element.get("action_id") == action_id
        ]
        if not found:
            return web.json_response({"ok": False, "error": "no such button on the message"}, status=404)
        block, button = found[0]
        trigger_id = f"{int(time.time())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        self.triggers[trigger_id] = {"user": user, "issued": time.time(), "used": False}
        original = {
            "type": "message",
            "subtype": "bot_message",
            "text": message.get("text"),
            "blocks": message.get("blocks"),
            "ts": ts,
            "bot_id": BOT_ID,
        }
        payload = {
            "type": "block_actions",
            "user": self._user(user),
            "api_app_id": APP_ID,
            "token": "deprecated",
            "container": {"type": "message", "message_ts": ts, "channel_id": message["channel"], "is_ephemeral": False},
            "trigger_id": trigger_id,
            "team": {"id": TEAM_ID, "domain": "sandbox"},
            "channel": {"id": message["channel"], "name": message["channel"].lower()},
            "message": original,
            "response_url": f"http://{config.HOST}:{config.SLACK_PORT}/_standin/respond",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block.get("block_id", ""),
                    "type": "button",
                    "text": button.get("text"),
                    "value": button.get("value", ""),
                    "style": button.get("style"),
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        self.store.add(
            {
                "kind": "interaction",
                "ts": self.store.next_ts(),
                "interaction": "block_actions",
                "user": user,
                "action_id": action_id,
                "message_ts": ts,
                "text": None,
            }
        )
        return web.json_response({**await self._deliver(payload), "trigger_id": trigger_id})

    async def submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        opened = self.views.get(str(body.get("view_id", "")))
        if opened is None or not opened["open"]:
            return web.json_response({"ok": False, "error": "view_not_found"}, status=404)
        given, values = dict(body.get("values") or {}), {}
        for block in opened["view"].get("blocks", []):
            if block.get("type") != "input":
                continue
            element = block["element"]
            value = given.get(block["block_id"])
            if element["type"] == "static_select":
                state = {
                    "type": "static_select",
                    "selected_option": next((o for o in element.get("options", []) if o["value"] == value), None),
                }
            else:
                state = {"type": element["type"], "value": value}
            values[block["block_id"]] = {element["action_id"]: state}
        view = {**opened["view"], "state": {"values": values}}
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM_ID, "domain": "sandbox"},
            "user": self._user(opened["user"]),
            "api_app_id": APP_ID,
            "token": "deprecated",
            "trigger_id": f"{int(time.time())}.{secrets.token_hex(16)}",
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
        }
        self.store.add(
            {
                "kind": "interaction",
                "ts": self.store.next_ts(),
                "interaction": "view_submission",
                "user": opened["user"],
                "view_id": opened["view"]["id"],
                "text": None,
            }
        )
        delivered = await self._deliver(payload)
        answer = {}
        if delivered["body"].strip():
            try:
                answer = json.loads(delivered["body"])
            except ValueError:
                answer = {}
        # An empty 200 (or response_action "clear") closes the modal; "errors" keeps it open, as in Slack.
        if delivered["ok"] and answer.get("response_action") != "errors":
            opened["open"] = False
        return web.json_response({**delivered, "response": answer, "view_open": opened["open"]})

    async def list_views(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"view_id": k, "user": v["user"], "open": v["open"], "view": v["view"]} for k, v in self.views.items()]
        )

    # --- test controls ---------------------------------------------------------
    async def list_messages(self, request: web.Request) -> web.Response:
        return web.json_response(self.store.records)

    async def clear_messages(self, request: web.Request) -> web.Response:
        self.store.clear()
        return web.json_response({"ok": True})

    async def set_mode(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("mode") not in ("ok", "error", "hang"):
            return web.json_response({"ok": False, "error": "mode must be ok|error|hang"}, status=400)
        self.mode = body["mode"]
        return web.json_response({"ok": True, "mode": self.mode})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "mode": self.mode, "messages": len(self.store.records)})


def make_app(
    store: Store, token: str, signing_secret: str | None = None, interactivity_url: str | None = None
) -> web.Application:
    standin = StandIn(store, token, signing_secret, interactivity_url)
    app = web.Application()
    app.router.add_route("*", "/api/{method}", standin.api)
    app.router.add_post("/services/{tail:.*}", standin.webhook)
    app.router.add_get("/_standin/messages", standin.list_messages)
    app.router.add_delete("/_standin/messages", standin.clear_messages)
    app.router.add_post("/_standin/mode", standin.set_mode)
    app.router.add_post("/_standin/click", standin.click)
    app.router.add_post("/_standin/submit", standin.submit)
    app.router.add_get("/_standin/views", standin.list_views)
    app.router.add_get("/_standin/health", standin.health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=config.HOST)
    parser.add_argument("--port", type=int, default=config.SLACK_PORT)
    parser.add_argument("--store", type=Path, default=config.SLACK_MESSAGES, help="the record (JSON lines)")
    parser.add_argument(
        "--interactivity-url",
        default=config.SLACK_INTERACTIVITY_URL,
        help="where interaction payloads go (the Slack app's Request URL)",
    )
    args = parser.parse_args()
    secrets_ = config.load_secrets()
    app = make_app(
        Store(args.store), secrets_["slack_bot_token"], secrets_.get("slack_signing_secret"), args.interactivity_url
    )
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
