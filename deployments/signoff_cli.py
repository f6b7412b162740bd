"""`architect-signoff`: sign off a paused staging deploy from a terminal, with your SSH key.

    architect-signoff list                      runs waiting for sign-off: version, what is signed, what is missing
    architect-signoff show RUN_ID               what is being signed (the text the UI shows above the form)
    architect-signoff sign RUN_ID --role security --decision approve --notes "..." [--key ~/.ssh/id_ed25519]

`sign` builds the run's canonical statement (run id, role, decision, image digest, evidence hash,
notes hash), signs it with `ssh-keygen -Y sign -n architect-signoff` (your key, or its .pub with
ssh-agent), checks it against the role's allowed signers and the rules exactly as the flow will,
then resumes the run with the signature and waits briefly to report what the flow made of it.
The flow verifies the signature itself with `ssh-keygen -Y verify`; this command only saves you a
refused round trip. It talks to the Prefect API named by PREFECT_API_URL. The key is --key, else
$ARCHITECT_SIGNOFF_KEY, else ~/.ssh/id_ed25519. Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from blocks.approvers import Role
from blocks.validation import CONTROL_CHARACTERS
from tasks.notify import flow_run_url
from tasks.signoff.approval import SignOffInput, read_ledger, refusal_reason
from tasks.signoff.document import Ledger
from tasks.signoff.proofs import notes_refusal
from tasks.signoff.ssh import SshSignatureError, sign_statement, verify_statement
from tasks.signoff.statement import Decision, Statement

FLOW = "staging-deploy"
KEY_VARIABLE = "ARCHITECT_SIGNOFF_KEY"
RESUME_RETRY_S = 15  # the run may be between two pauses (another lead just signed)


def waiting_runs(client: SyncPrefectClient, flow_name: str = FLOW) -> list[tuple[FlowRun, Ledger | None]]:
    """Paused runs of the flow, oldest first, each with its sign-off ledger (None: not a sign-off pause)."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
        sort=FlowRunSort.START_TIME_ASC,
        limit=200,
    )
    return [(run, read_ledger(client, run.id)) for run in runs]


def cmd_list(args: argparse.Namespace) -> int:
    with get_client(sync_client=True) as client:
        rows = waiting_runs(client, args.flow)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "flow_run_id": str(run.id),
                        "name": run.name,
                        "parameters": run.parameters,
                        "ledger": ledger.model_dump(mode="json") if ledger else None,
                        "missing": [r.value for r in ledger.missing] if ledger else None,
                    }
                    for run, ledger in rows
                ],
                indent=2,
            )
        )
        return 0
    if not rows:
        print(f"No {args.flow} run is waiting for sign-off.")
        return 0
    for run, ledger in rows:
        print(f"{run.id}  {run.name}")
        if ledger is None:
            print("    paused, but not for sign-off (no ledger for this pause)")
            continue
        signed = ", ".join(f"{s.role.value}: {s.name}" for s in ledger.signed) or "nobody yet"
        missing = ", ".join(f"{r.value} ({' or '.join(ledger.approvers.get(r, []))})" for r in ledger.missing)
        print(f"    version {ledger.version} to {ledger.environment}, commit {ledger.commit[:12]}")
        print(f"    image   {ledger.digest}")
        print(f"    signed  {len(ledger.signed)}/4: {signed}")
        print(f"    missing {missing}")
        print(f"    until   {ledger.deadline:%Y-%m-%d %H:%M:%S} UTC   {flow_run_url(str(run.id)) or ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(args.run_id)
        if run.state is None or not run.state.is_paused():
            print(f"Run {args.run_id} is not paused ({run.state.name if run.state else 'no state'}).", file=sys.stderr)
            return 1
        key = keyset_from_paused_state(run.state)["description"]
        try:
            print(json.loads(client.read_flow_run_input(flow_run_id=run.id, key=key)))
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:  # a pause without a description is not ours
            print(f"Run {args.run_id} has no sign-off description ({type(exc).__name__}).", file=sys.stderr)
            return 1
    return 0


def _usage(argument: str, message: str) -> int:
    print(f"architect-signoff sign: error: argument --{argument}: {message}", file=sys.stderr)
    return 2


def _refused(reason: str) -> int:
    print(f"Refused: {reason}. The run keeps waiting.", file=sys.stderr)
    return 1


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def cmd_sign(args: argparse.Namespace) -> int:
    role = Role(args.role)
    try:  # the form the server will check, checked first: a bad argument never reaches a run
        SignOffInput.model_validate({"role": role, "decision": args.decision, "notes": args.notes, "proof": ""})
    except ValidationError as exc:
        error = exc.errors()[0]
        return _usage(str(error["loc"][0]), error["msg"])
    name = None if args.name is None else " ".join(args.name.split())
    if name is not None and (not name or len(name) > 100 or CONTROL_CHARACTERS.search(args.name.strip())):
        return _usage("name", "your name as listed: 1 to 100 characters, no control characters")
    key = Path(args.key or os.environ.get(KEY_VARIABLE) or Path.home() / ".ssh" / "id_ed25519").expanduser()
    if not key.exists():
        return _usage("key", f"no SSH key at {key}")
    if reason := notes_refusal(args.notes):
        return _refused(reason)
    with get_client(sync_client=True) as client:
        ledger = read_ledger(client, args.run_id)
        if ledger is None:
            print(f"Run {args.run_id} is not waiting for sign-off.", file=sys.stderr)
            return 1
        if ledger.policy is None:
            return _refused("this run's sign-off has no identities to verify a signature against")
        statement = Statement.of(args.run_id, role, args.decision, ledger.digest, ledger.evidence_sha256, args.notes)
        try:
            signature = sign_statement(key, statement.text(), os.environ.get("SSH_AUTH_SOCK"))
            lead, principal = verify_statement(statement.text(), signature, ledger.policy.leads(role))
        except SshSignatureError as exc:
            listed = ", ".join(ledger.policy.names(role)) or "nobody"
            return _refused(f"{exc} (the key at {key} may not sign for {role.value}; the environment lists: {listed})")
        if name is not None and _norm(name) != _norm(lead.name):
            return _refused(f"{name!r} may not sign for {role.value} with this key (the key is {lead.name}'s)")
        if reason := refusal_reason(role, lead, ledger.policy, ledger.signed):
            return _refused(reason)
        run_input = {"role": role.value, "decision": args.decision, "notes": args.notes, "proof": signature}
        try:
            before = _resume(client, args.run_id, run_input, ledger)
        except FlowPauseTimeout:
            print("Refused: the sign-off has timed out; the run is rolling back.", file=sys.stderr)
            return 1
        except (RuntimeError, NotPausedError) as exc:  # the server rejected the input, or the run moved on
            print(f"Refused by the Prefect server: {exc}", file=sys.stderr)
            return 1
        print(
            f"Sent: {role.value} {args.decision} by {lead.name} (ssh {principal}, statement "
            f"sha256:{statement.sha256()[:16]}…)."
        )
        return _report_outcome(client, args.run_id, before, role, args.wait)


def _resume(client: SyncPrefectClient, run_id: UUID, run_input: dict, ledger: Ledger) -> Ledger:
    """Resume the run, waiting out the moment between two pauses; the ledger of the pause resumed."""
    deadline = time.monotonic() + RESUME_RETRY_S
    while True:
        try:
            resume_flow_run(run_id, run_input=run_input, _sync=True)
            return ledger
        except (NotPausedError, RuntimeError):
            state = client.read_flow_run(run_id).state
            if time.monotonic() > deadline or state is None or state.is_final():
                raise
            if state.is_paused() and state.state_details.pause_key == ledger.pause_key:
                raise  # paused where we tried: the server refused the input itself
            time.sleep(0.3)
            ledger = read_ledger(client, run_id) or ledger


def _report_outcome(client: SyncPrefectClient, run_id: UUID, before: Ledger, role: Role, wait_s: float) -> int:
    """Wait (bounded) until the flow paused again or ended, and say what it made of the sign-off."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            print(f"The run ended {state.name}: {state.message or ''}")
            return 0
        if state is not None and state.is_paused() and state.state_details.pause_key != before.pause_key:
            now = read_ledger(client, run_id)
            if now is not None:
                if any(s.role == role for s in now.signed):
                    missing = ", ".join(r.value for r in now.missing)
                    print(f"Accepted: {len(now.signed)}/4 signed; still missing {missing}.")
                    return 0
                print("The flow refused the sign-off (see the run's logs); the run keeps waiting.", file=sys.stderr)
                return 1
        time.sleep(0.5)
    print(f"The run has not moved on within {wait_s:.0f} s; check `architect-signoff list`.")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="architect-signoff",
        description="Sign off paused staging deploys.",
        epilog="Uses the Prefect API at PREFECT_API_URL.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="runs waiting for sign-off")
    ls.add_argument("--flow", default=FLOW, help=f"flow name (default {FLOW})")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="what a paused run asks you to sign")
    show.add_argument("run_id", type=UUID)
    show.set_defaults(func=cmd_show)
    sign = sub.add_parser("sign", help="sign a paused run off (approve or reject)")
    sign.add_argument("run_id", type=UUID)
    sign.add_argument("--role", required=True, choices=[r.value for r in Role])
    sign.add_argument("--decision", required=True, choices=[d.value for d in Decision])
    sign.add_argument("--notes", default="", help="what you checked, or why you reject")
    sign.add_argument(
        "--key",
        help=f"your SSH private key, or its .pub with ssh-agent (default ${KEY_VARIABLE}, else ~/.ssh/id_ed25519)",
    )
    sign.add_argument("--name", help="your name as listed; refused unless the key is that lead's")
    sign.add_argument("--wait", type=float, default=20, help="seconds to wait for the flow's answer (default 20)")
    sign.set_defaults(func=cmd_sign)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not PREFECT_API_URL.value():
        # Without it Prefect would start a throwaway local server, where no run waits.
        print(
            "PREFECT_API_URL is not set; point it at the Prefect server (e.g. http://127.0.0.1:4200/api).",
            file=sys.stderr,
        )
        return 2
    try:
        return args.func(args)
    except ObjectNotFound:
        print(f"No flow run {getattr(args, 'run_id', '')}.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
