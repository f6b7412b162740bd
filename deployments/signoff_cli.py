"""`architect-signoff`: sign off a paused staging deploy from a terminal.

    architect-signoff list                      runs waiting for sign-off: version, what is signed, what is missing
    architect-signoff show RUN_ID               what is being signed (the text the UI shows above the form)
    architect-signoff sign RUN_ID --role security --name "Sam Security" --decision approve --notes "..."

It talks to the Prefect API named by PREFECT_API_URL, checks the sign-off exactly as the flow will
(tasks.signoff.approval.refusal_reason against the run's ledger) before resuming the run, and then waits
briefly to report what the flow made of it. Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL

from blocks.environment import Role
from pydantic import ValidationError

from tasks.signoff.approval import SignOffInput, read_ledger, refusal_reason
from tasks.notify import flow_run_url
from tasks.signoff.document import Decision, Ledger

FLOW = "staging-deploy"


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
        print(json.dumps([{"flow_run_id": str(run.id), "name": run.name, "parameters": run.parameters,
                           "ledger": ledger.model_dump(mode="json") if ledger else None,
                           "missing": [r.value for r in ledger.missing] if ledger else None}
                          for run, ledger in rows], indent=2))
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


def cmd_sign(args: argparse.Namespace) -> int:
    role, name = Role(args.role), " ".join(args.name.split())
    try:  # the form the server will check, checked first: a bad argument never reaches a run
        SignOffInput.model_validate({"role": role, "name": name, "decision": args.decision, "notes": args.notes})
    except ValidationError as exc:
        error = exc.errors()[0]
        print(f"architect-signoff sign: error: argument --{error['loc'][0]}: {error['msg']}", file=sys.stderr)
        return 2
    with get_client(sync_client=True) as client:
        ledger = read_ledger(client, args.run_id)
        if ledger is None:
            print(f"Run {args.run_id} is not waiting for sign-off.", file=sys.stderr)
            return 1
        if reason := refusal_reason(role, name, ledger.approvers, ledger.signed):
            print(f"Refused: {reason}. The run keeps waiting.", file=sys.stderr)
            return 1
        run_input = {"role": role.value, "name": name, "decision": args.decision, "notes": args.notes}
        try:
            resume_flow_run(args.run_id, run_input=run_input, _sync=True)
        except FlowPauseTimeout:
            print("Refused: the sign-off has timed out; the run is rolling back.", file=sys.stderr)
            return 1
        except RuntimeError as exc:  # the server rejected the input, or the run is no longer paused
            print(f"Refused by the Prefect server: {exc}", file=sys.stderr)
            return 1
        print(f"Sent: {role.value} {args.decision} by {name}.")
        return _report_outcome(client, args.run_id, ledger, role, args.wait)


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
    p = argparse.ArgumentParser(prog="architect-signoff", description="Sign off paused staging deploys.",
                                epilog="Uses the Prefect API at PREFECT_API_URL.")
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
    sign.add_argument("--name", required=True, help="your name as the environment's approvers list it")
    sign.add_argument("--decision", required=True, choices=[d.value for d in Decision])
    sign.add_argument("--notes", default="", help="what you checked, or why you reject")
    sign.add_argument("--wait", type=float, default=20, help="seconds to wait for the flow's answer (default 20)")
    sign.set_defaults(func=cmd_sign)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not PREFECT_API_URL.value():
        # Without it Prefect would start a throwaway local server, where no run waits.
        print("PREFECT_API_URL is not set; point it at the Prefect server (e.g. http://127.0.0.1:4200/api).",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ObjectNotFound:
        print(f"No flow run {getattr(args, 'run_id', '')}.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
