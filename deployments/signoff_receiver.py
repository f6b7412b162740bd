"""The sign-off receiver: Slack's Approve/Reject buttons, verified, turned into a signed resume.

    python -m deployments.signoff_receiver --config /etc/architect/signoff-receiver.json \\
        [--host 127.0.0.1] [--port 58091]

A small ASGI service (Starlette). Slack posts every interaction with the run's message to
``POST /slack/interactions`` (the Slack app's Request URL). The receiver

1. checks Slack's request signature with slack-sdk's ``SignatureVerifier`` (the signing secret,
   ``v0`` HMAC-SHA256 over the timestamp and the body), refuses a timestamp more than 5 minutes
   off and any request it has seen before (it keeps every signature of the last 5 minutes);
2. maps the Slack user id to a role with the run's sign-off policy and, for a button, opens a
   confirmation modal with a notes field (a stray tap signs nothing);
3. on the modal's submit, resumes the run with the statement's fields, the Slack user id and its
   own Ed25519 signature over them (a key only the receiver holds; the environment lists the
   public half and the run checks it).

The run verifies everything again itself: the receiver only vouches that Slack said who pressed.
Every refusal is logged and told in the run's thread, never repeating a signature.

The configuration file (keep it 0600) holds ``slack_signing_secret``, ``slack_bot_token``
(chat:write only), ``slack_api_url`` (optional) and ``receipt_key`` (base64 of the Ed25519 seed);
``PREFECT_API_URL`` names the Prefect API. ``GET /health`` answers ``{"ok": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import resume_flow_run
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from blocks.approvers import Role
from tasks.core.errors import RequestRefused as Refused
from tasks.core.escaping import for_slack
from tasks.signoff.approval import read_ledger, refusal_reason
from tasks.signoff.document import Ledger
from tasks.signoff.messages import (
    APPROVE_ACTION,
    CONFIRM_CALLBACK,
    NOTES_BLOCK,
    REJECT_ACTION,
    ROLE_BLOCK,
    confirmation_view,
    parse_metadata,
)
from tasks.signoff.proofs import notes_refusal
from tasks.signoff.receipts import load_private_key, make_receipt
from tasks.signoff.statement import Decision, Statement

WINDOW_S = 5 * 60  # Slack's: a request older (or newer) than this is refused, and replays are remembered this long
RESUME_RETRY_S = 30  # the run may be between two pauses (another lead's sign-off): wait for the next one
logger = logging.getLogger("architect.signoff_receiver")


class ReceiverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slack_signing_secret: SecretStr
    slack_bot_token: SecretStr
    slack_api_url: str = "https://slack.com/api/"
    receipt_key: SecretStr

    @classmethod
    def load(cls, path: Path) -> ReceiverConfig:
        return cls.model_validate_json(path.read_text())


class ReplayGuard:
    """The signatures of every request accepted in the last WINDOW_S seconds."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def check_and_remember(self, signature: str, timestamp: int, now: float) -> None:
        self._seen = {s: ts for s, ts in self._seen.items() if now - ts <= WINDOW_S}
        if signature in self._seen:
            raise Refused("a replayed Slack request (its signature was already used)")
        self._seen[signature] = timestamp


class _Clock(Clock):
    def __init__(self, now) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class Receiver:
    def __init__(self, config: ReceiverConfig, clock=time.time):
        self.verifier = SignatureVerifier(config.slack_signing_secret.get_secret_value(), clock=_Clock(clock))
        self.slack = AsyncWebClient(
            token=config.slack_bot_token.get_secret_value(), base_url=config.slack_api_url, timeout=5
        )
        self.key = load_private_key(config.receipt_key.get_secret_value())
        self.clock = clock
        self.replays = ReplayGuard()

    # -- Slack's request, checked -----------------------------------------------------------

    def authenticate(self, body: bytes, headers) -> None:
        timestamp, signature = headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature")
        if not timestamp or not signature:
            raise Refused("an unsigned request (no Slack signature)")
        if not timestamp.isdigit():
            raise Refused("a request with a malformed Slack timestamp")
        now = self.clock()
        if abs(now - int(timestamp)) > WINDOW_S:
            raise Refused(f"a Slack request with an expired timestamp ({now - int(timestamp):.0f} s old)")
        if not self.verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            raise Refused("a request whose Slack signature does not verify")
        self.replays.check_and_remember(signature, int(timestamp), now)

    async def interactions(self, request: Request) -> Response:
        body = await request.body()
        try:
            self.authenticate(body, request.headers)
        except Refused as exc:
            logger.warning("Refused %s", exc)
            await self._tell_run_of_refusal(body, str(exc))
            return PlainTextResponse(f"refused: {exc}", status_code=401)
        try:
            payload = json.loads(_form_payload(body))
        except ValueError:
            return PlainTextResponse("no payload", status_code=400)
        kind = payload.get("type")
        if kind == "block_actions":
            return await self.button(payload)
        if kind == "view_submission" and payload.get("view", {}).get("callback_id") == CONFIRM_CALLBACK:
            return await self.confirm(payload)
        return Response(status_code=200)

    # -- a button: who pressed it, then the confirmation step ---------------------------------

    async def button(self, payload: dict) -> Response:
        action = (payload.get("actions") or [{}])[0]
        if action.get("action_id") not in (APPROVE_ACTION, REJECT_ACTION):
            return Response(status_code=200)  # "Open the run" is a link; nothing to do
        decision = Decision.APPROVE if action["action_id"] == APPROVE_ACTION else Decision.REJECT
        user_id = str(payload.get("user", {}).get("id", ""))
        container = payload.get("container") or {}
        try:
            ledger = await self._ledger(action.get("value", ""))
            roles = _roles_for(ledger, user_id)
        except Refused as exc:
            logger.warning("Refused a %s by Slack user %s: %s", decision.value, user_id, exc)
            await self._reply(container, f"⛔ Sign-off refused ({decision.value} by Slack user {user_id}): {exc}.")
            return Response(status_code=200)
        lead = ledger.policy.lead_by_slack(roles[0], user_id)
        view = confirmation_view(ledger, decision, roles, lead.name, container)
        try:
            await self.slack.views_open(trigger_id=payload.get("trigger_id", ""), view=view)
            logger.info(
                "Slack: opened the %s confirmation for %s (%s)",
                decision.value,
                lead.name,
                ", ".join(r.value for r in roles),
            )
        except Exception as exc:  # Slack gives 3 s for this; the lead can press again
            logger.warning("Slack: views.open failed (%s): %s", type(exc).__name__, str(exc)[:200])
        return Response(status_code=200)

    # -- the confirmation: the receipt and the resume -----------------------------------------

    async def confirm(self, payload: dict) -> Response:
        view, user_id = payload["view"], str(payload.get("user", {}).get("id", ""))
        try:
            run_id, decision, roles, evidence, container = parse_metadata(view.get("private_metadata", ""))
        except (ValueError, KeyError, TypeError):
            return Response(status_code=200)
        values = view.get("state", {}).get("values", {})
        notes = values.get(NOTES_BLOCK, {}).get(NOTES_BLOCK, {}).get("value") or ""
        chosen = (values.get(ROLE_BLOCK, {}).get(ROLE_BLOCK, {}).get("selected_option") or {}).get("value")
        role = Role(chosen) if chosen in {r.value for r in roles} else (roles[0] if len(roles) == 1 else None)
        try:
            if role is None:
                raise Refused("choose the role you sign for")
            if reason := notes_refusal(notes):
                raise Refused(reason)
            ledger = await self._ledger(str(run_id))
            if ledger.evidence_sha256 != evidence:
                raise Refused(
                    "the evidence changed since this was opened (a report was edited, or voided "
                    "signatures); press the button again to see what you sign now"
                )
            if role not in _roles_for(ledger, user_id):
                raise Refused(f"{role.value} cannot be signed by Slack user {user_id} now")
        except Refused as exc:
            logger.warning("Refused a %s by Slack user %s: %s", decision.value, user_id, exc)
            await self._reply(container, f"⛔ Sign-off refused ({decision.value} by Slack user {user_id}): {exc}.")
            return JSONResponse({"response_action": "errors", "errors": {NOTES_BLOCK: str(exc)[:150]}})
        statement = Statement.of(run_id, role, decision, ledger.digest, ledger.evidence_sha256, notes)
        receipt = make_receipt(self.key, statement, user_id, now=self.clock())
        run_input = {"role": role.value, "decision": decision.value, "notes": notes, "proof": receipt}
        logger.info("Signed a receipt: %s %s by Slack user %s for run %s", role.value, decision.value, user_id, run_id)
        # Slack wants its answer within 3 s; the resume (which may wait for the next pause) follows it.
        return Response(status_code=200, background=BackgroundTask(self._resume, run_id, run_input, container))

    async def _resume(self, run_id: UUID, run_input: dict, container: dict) -> None:
        deadline = time.monotonic() + RESUME_RETRY_S
        while True:
            try:
                await run_in_threadpool(_resume_sync, run_id, run_input)
                logger.info("Prefect API: resumed run %s with a %s receipt", run_id, run_input["role"])
                return
            except (NotPausedError, RuntimeError) as exc:
                ended = await run_in_threadpool(_run_ended, run_id)
                if ended or time.monotonic() > deadline:
                    logger.warning("Prefect API: could not resume run %s: %s", run_id, str(exc)[:200])
                    await self._reply(
                        container,
                        f"⚠️ The {run_input['role']} sign-off could not be handed to the run "
                        f"({'the run has ended' if ended else 'it did not pause again'}).",
                    )
                    return
                await asyncio.sleep(0.25)
            except FlowPauseTimeout:
                await self._reply(container, "⚠️ The sign-off has timed out; the release is being rolled back.")
                return

    # -- helpers --------------------------------------------------------------------------------

    async def _ledger(self, run_id: str) -> Ledger:
        try:
            ledger = await run_in_threadpool(_read_ledger_sync, UUID(str(run_id)))
        except (ValueError, ObjectNotFound):
            raise Refused("no such run") from None
        if ledger is None or ledger.policy is None:
            raise Refused("the run is not waiting for sign-off")
        return ledger

    async def _reply(self, container: dict, text: str) -> None:
        channel, ts = container.get("channel_id"), container.get("message_ts")
        if not channel or not ts:
            return
        try:
            await self.slack.chat_postMessage(channel=channel, thread_ts=ts, text=for_slack(text))
            logger.info("Slack: replied in the run's thread")
        except Exception as exc:
            logger.warning("Slack: the thread reply failed (%s)", type(exc).__name__)

    async def _tell_run_of_refusal(self, body: bytes, reason: str) -> None:
        """A refused request that names a waiting run is told in that run's thread (where the run,
        not the request, says its message is)."""
        try:
            payload = json.loads(_form_payload(body))
            run = (payload.get("actions") or [{}])[0].get("value") or json.loads(
                payload.get("view", {}).get("private_metadata") or "{}"
            ).get("run")
            ledger = await run_in_threadpool(_read_ledger_sync, UUID(str(run)))
        except Exception:  # not even a readable request: the log line is all
            return
        if ledger is not None and ledger.slack_message is not None:
            await self._reply(
                {"channel_id": ledger.slack_message.channel, "message_ts": ledger.slack_message.ts},
                f"⛔ The sign-off receiver refused {reason}; nothing was signed.",
            )


def _form_payload(body: bytes) -> str:
    return parse_qs(body.decode("utf-8", "replace")).get("payload", [""])[0]


def _roles_for(ledger: Ledger, user_id: str) -> list[Role]:
    """The unsigned roles this Slack user may sign now; Refused says why there are none."""
    policy = ledger.policy
    listed = policy.roles_of_slack_user(user_id)
    if not listed:
        raise Refused(f"Slack user {user_id} is not listed for any role")
    reasons = {
        role: refusal_reason(role, policy.lead_by_slack(role, user_id), policy, ledger.signed) for role in listed
    }
    if allowed := [role for role, reason in reasons.items() if reason is None]:
        return allowed
    unsigned = [reason for role, reason in reasons.items() if role in ledger.missing]
    raise Refused((unsigned or list(reasons.values()))[0])  # why not the open role, rather than "already signed"


def _read_ledger_sync(run_id: UUID) -> Ledger | None:
    with get_client(sync_client=True) as client:
        return read_ledger(client, run_id)


def _resume_sync(run_id: UUID, run_input: dict) -> None:
    resume_flow_run(run_id, run_input=run_input, _sync=True)


def _run_ended(run_id: UUID) -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state is None or state.is_final()


def create_app(config: ReceiverConfig, clock=time.time) -> Starlette:
    receiver = Receiver(config, clock)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/slack/interactions", receiver.interactions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="signoff-receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the receiver's configuration (JSON, 0600)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=58091)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ReceiverConfig.load(args.config)
    except (OSError, ValidationError) as exc:
        print(f"signoff-receiver: cannot read {args.config}: {type(exc).__name__}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
