"""What the pipeline costs over doing the same work by hand: a full sandbox deploy through the
staging-deploy flow against the same steps run bare in this script (benchmarks/_bare_steps.py),
in the same session. Prints both wall times, the ratio flow/bare (target <= 1.15) and the
stages side by side: the flow's from its own "stage-timings" artifact, the bare ones timed here.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m benchmarks.pipeline_overhead [--rounds 3]

Needs the sandbox up (`make sandbox-up`). Each round runs both, bare first in odd rounds and
flow first in even ones; with several rounds the medians are printed. The bare run works beside
the flow's replicas without touching them: its own containers (bench-bare-*), ports 18191-18194,
a scratch copy of the staging database (bench_bare) and Redis database 15, all removed at the end.

Differences that remain, by design: the flow also runs preflight and the metrics gate (no bare
counterpart; "shared steps only" leaves them out), takes the deploy lock, writes reports and
Slack messages, and reaches the app through nginx over TLS, where the bare health checks, smoke
requests and load go to the replicas over plain HTTP (the load to one replica, at the same rate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback

import docker

os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from benchmarks._bare_steps import SCRATCH_DB, BareDeploy, flow_replicas
from blocks.environment import StagingEnvironment

FLOW_ONLY = ("preflight", "metrics")  # stages the bare script has no counterpart for
RETRY_WAIT_S = 60  # the sandbox is shared: a service may be down for a few seconds under a fault test


def read_table(flow_run_id, key: str) -> list[dict]:
    """The rows of the run's newest table artifact ``key`` ([] when it has none)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    if not found:
        return []
    data = max(found, key=lambda a: a.created).data
    return json.loads(data) if isinstance(data, str) else data


def schema_version(env: StagingEnvironment) -> int:
    with env.database.connect() as conn:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def run_flow(env: StagingEnvironment, args) -> dict:
    from flows.staging_deploy import staging_deploy

    old = len(flow_replicas(docker.DockerClient(base_url=env.target.docker_host, timeout=60)))
    schema_before = schema_version(env)
    started = time.perf_counter()
    state = staging_deploy(
        git_ref=args.git_ref,
        version=args.version,
        environment=args.environment,
        skip_signoff=True,
        load_profiles=["light"],
        load_duration_s=args.load_duration,
        return_state=True,
    )
    total = time.perf_counter() - started
    if not state.is_completed():
        raise RuntimeError(f"the flow run ended {state.name}: {state.message}")
    run_id = state.state_details.flow_run_id
    stages = {row["stage"]: float(row["seconds"]) for row in read_table(run_id, "stage-timings")}
    lock = next((r["detail"] for r in read_table(run_id, "preflight") if r.get("check") == "deploy lock"), "")
    waited = re.search(r"taken after ([\d.]+) s", lock)
    load = (read_table(run_id, "load-test-results") or [{}])[0]
    return {
        "total": total,
        "stages": stages,
        "steps": {},
        "lock_wait": float(waited.group(1)) if waited else 0.0,
        "load": f"{load.get('requests', '?')} requests, {load.get('served req/s', '?')} req/s served, "
        f"p99 {load.get('p99 ms', '?')} ms, errors {load.get('errors', '?')} (nginx, TLS)",
        "notes": f"flow run {run_id}; old replicas replaced {old}; schema of the staging database "
        f"{schema_before} -> {schema_version(env)}",
    }


def run_bare(env: StagingEnvironment, args) -> dict:
    bare = BareDeploy(env, args.git_ref, args.version, args.load_duration)
    try:
        bare.setup()
        total = bare.run()
        stages: dict[str, float] = {}
        for stage, _, seconds in bare.steps:
            stages[stage] = stages.get(stage, 0.0) + seconds
        run, notes = bare.load, bare.notes
        status = notes.get("migrate status", {})
        return {
            "total": total,
            "stages": stages,
            "steps": {(s, n): t for s, n, t in bare.steps},
            "lock_wait": 0.0,
            "load": f"{run.requests} requests, {run.throughput_rps:.1f} req/s served, p99 {run.ms(99):.1f} ms, "
            f"error rate {run.error_rate:.3%} (one replica, plain HTTP)",
            "notes": f"old replicas replaced {notes['old replicas']} ({notes.get('old replicas healthy', 0)} "
            f"healthy); schema of {SCRATCH_DB} {notes['schema before migrate']} -> "
            f"{status.get('current', '?')} (migrate status: expected {status.get('expected', '?')}); "
            f"{notes['smoke requests']} smoke requests",
        }
    finally:
        problems = bare.teardown()
        print(
            f"bare run cleaned up: {len(bare.started)} containers removed, {SCRATCH_DB} dropped"
            + (f"; PROBLEMS: {problems}" if problems else ""),
            flush=True,
        )


def attempt(kind: str, env: StagingEnvironment, args) -> dict:
    """One run; once more after a pause if it failed (a shared service may have been stopped)."""
    runner = run_flow if kind == "flow" else run_bare
    for tries in (1, 2):
        print(f"--- {kind} run (try {tries}) ---", flush=True)
        try:
            result = runner(env, args)
            print(f"--- {kind} run: {result['total']:.1f} s ---", flush=True)
            return result
        except Exception:
            traceback.print_exc()
            if tries == 2:
                raise
            print(f"{kind} run failed; retrying once in {RETRY_WAIT_S} s", flush=True)
            time.sleep(RETRY_WAIT_S)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(results: dict[str, list[dict]], args) -> None:
    flow, bare = results["flow"], results["bare"]
    print(
        f"\npipeline overhead: {args.git_ref} ({args.version}) to {args.environment}, light load "
        f"{args.load_duration:g} s (+2 s warm-up), {args.rounds} round(s){', medians' if args.rounds > 1 else ''}"
    )
    print(f"{'stage / step':34} {'flow s':>8} {'bare s':>8} {'flow/bare':>10}")
    stage_names = list(dict.fromkeys([s for r in flow for s in r["stages"]] + [s for r in bare for s in r["stages"]]))

    def row(label: str, f: float | None, b: float | None, note: str = "") -> None:
        ratio = f"{f / b:.2f}" if f is not None and b is not None and b >= 0.05 else ""  # no ratios of noise
        print(f"{label:34} {fmt(f):>8} {fmt(b):>8} {ratio:>10}{'  ' + note if note else ''}")

    for stage in stage_names:
        f = median([r["stages"][stage] for r in flow if stage in r["stages"]])
        b = median([r["stages"][stage] for r in bare if stage in r["stages"]])
        row(stage, f, b, "(flow only)" if stage in FLOW_ONLY else "")
        for s, step in dict.fromkeys(k for r in bare for k in r["steps"]):
            if s == stage:
                row(f"  {step}", None, median([r["steps"][(s, step)] for r in bare if (s, step) in r["steps"]]))
    outside = lambda r: r["total"] - sum(r["stages"].values())
    row(
        "outside the stages",
        median([outside(r) for r in flow]),
        median([outside(r) for r in bare]),
        "(flow: deploy lock, run bookkeeping, revision record, Slack; bare: glue)",
    )
    f_total, b_total = median([r["total"] for r in flow]), median([r["total"] for r in bare])
    row("TOTAL wall time", f_total, b_total, "(target <= 1.15)")
    shared = lambda r: r["total"] - r["lock_wait"] - sum(r["stages"].get(s, 0.0) for s in FLOW_ONLY)
    row(
        "shared steps only",
        median([shared(r) for r in flow]),
        b_total,
        "(flow total minus preflight, metrics and the lock wait)",
    )
    print("deploy lock wait (flow): " + ", ".join(f"{r['lock_wait']:.1f}" for r in flow) + " s")
    for kind, runs in (("flow", flow), ("bare", bare)):
        for i, r in enumerate(runs, 1):
            print(
                f"{kind} round {i} ({'bare' if i % 2 else 'flow'} first): total {r['total']:.1f} s; load {r['load']}; {r['notes']}"
            )
    print(
        "remaining differences: the flow reaches the app through nginx over TLS (health, smoke, load); the bare "
        "run goes to its replicas over plain HTTP and skips the suite's two nginx-only requests (the HTTP->HTTPS "
        "redirect and the certificate handshake); its load goes to one replica at the same rate"
    )
    print(
        f"load average now: {', '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs, "
        "shared with the whole sandbox)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--git-ref", default="v3.2.0")
    parser.add_argument("--version", default="3.2.0")
    parser.add_argument("--environment", default="sandbox")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--load-duration", type=float, default=5.0, help="seconds of the light profile")
    args = parser.parse_args()
    if args.rounds < 1 or not 0 < args.load_duration <= 60:
        parser.error("--rounds must be >= 1 and --load-duration in (0, 60]")
    env = StagingEnvironment.load(args.environment)
    results: dict[str, list[dict]] = {"flow": [], "bare": []}
    # As tests/conftest.py: an in-process flow run otherwise waits ~1 s on its heartbeat thread at the end.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for round_ in range(args.rounds):
            for kind in ("bare", "flow") if round_ % 2 == 0 else ("flow", "bare"):
                results[kind].append(attempt(kind, env, args))
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
