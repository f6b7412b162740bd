"""An open-model HTTP load generator that knows when it is the bottleneck (no Prefect in here).

Open model: request ``i`` of a profile is due at ``t0 + i / rate`` whatever happened to the
ones before it, and its latency is measured from that intended send time, so a stalled
server shows up in every request that was due during the stall (no coordinated omission).

Why aiohttp and not httpx (the project's HTTP client everywhere else): measured on these
2-core machines against nginx on loopback, httpx as usually written cannot hold 500 req/s,
and even tuned (one single-connection client per worker, uvloop) about 1,000 req/s per process;
aiohttp on uvloop does about 13,000 req/s per core. The generator has to stay far from its own
limit so that what it measures is the service, so it uses aiohttp + uvloop, one process per
``PER_PROCESS_RPS`` of rate (each takes every n-th request of the one schedule), and merges
log-bucketed histograms (tasks/gates/load/model.py: counts add up; percentiles are never averaged).

It watches itself: a process whose CPU exceeds ``max_cpu_share`` of a core, that sent fewer than
``min_send_ratio`` of its due requests in the window, or whose p99 send lag (actual start minus
intended) exceeds ``max_send_lag_ms`` makes the run *saturated*: the caller must call that
inconclusive, never a pass or a fail of the service. Each reason also says how long the process
waited for a CPU (Linux schedstat), which tells "too slow" from "crowded out by other work".
Latency waiting for a pooled connection is counted (it is measured from the intended time), but
is not send lag: a stalled server that fills the pool is the server's latency, not the generator's.

Bounds: loopback targets only; each process stops dispatching one second after the window
and abandons what is still in flight ``timeout_s`` later; the parent kills stragglers.
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing
import os
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from yarl import URL

from tasks.core.errors import SetupError
from tasks.core.http import retry_after_seconds
from tasks.core.net import is_loopback_host
from tasks.gates.load.model import (
    API_MIX,
    EVENT_BODY,
    LatencyHistogram,
    LoadProfile,
    ProcessResult,
    ProfileRun,
    RequestSpec,
)

PER_PROCESS_RPS = 1500  # one aiohttp process holds this with p99 lag well under a millisecond or two
SETUP_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 20_000  # per process: a bound on memory whatever the rate


@dataclass
class GeneratorConfig:
    base_url: str
    mix: tuple[RequestSpec, ...] = API_MIX
    ca_file: str | None = None  # the environment's CA; None is the system store, never "no verify"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    session_cookie: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    connections: int = 256  # per process; requests beyond it queue, and that wait is in the latency
    max_cpu_share: float = 0.70
    min_send_ratio: float = 0.95
    max_send_lag_ms: float = 20.0
    slot_s: float = 1.0  # timeline resolution
    seed: int = 1


def check_loopback(url: str) -> None:
    """Load goes to this machine only: every address the host resolves to must be loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ValueError(f"load target {parts.hostname} does not resolve: {exc}") from exc
    bad = {i[4][0] for i in infos if not is_loopback_host(i[4][0])}
    if bad or not infos:
        raise ValueError(f"load targets must be loopback; {parts.hostname} resolves to {sorted(bad)}")


class _Worker:
    def __init__(self, config: GeneratorConfig, profile: LoadProfile, index: int, nprocs: int):
        self.c, self.p, self.index, self.nprocs = config, profile, index, nprocs
        self.r = ProcessResult(index)
        self.base = config.base_url.rstrip("/")
        self.auth_headers: dict[str, str] = {}

    async def _login(self, attempts: int = 3, max_wait_s: float = 10.0) -> str:
        """One login; a 429 (the smoke suite has just tested the limiter) is waited out, boundedly."""
        for attempt in range(attempts):
            async with self.session.post(
                self.base + "/api/v1/auth/login", json={"username": self.c.username, "password": self.c.password}
            ) as resp:
                await resp.read()
                if resp.status == 200 and "session" in resp.cookies:
                    return resp.cookies["session"].value
                wait = retry_after_seconds(resp.headers.get("Retry-After"))
                if resp.status != 429 or attempt == attempts - 1 or wait is None:
                    raise SetupError(f"login answered HTTP {resp.status}")
            await asyncio.sleep(min(wait, max_wait_s))
        raise SetupError("login failed")

    async def setup(self, aiohttp) -> None:
        ssl_ctx = ssl.create_default_context(cafile=self.c.ca_file) if self.base.startswith("https") else None
        connector = aiohttp.TCPConnector(limit=self.c.connections, ssl=ssl_ctx if ssl_ctx else True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.c.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )  # the session cookie goes in a header we control
        self.aiohttp = aiohttp
        if self.c.session_cookie:
            self.auth_headers = {"Cookie": f"session={self.c.session_cookie}"}
        elif self.c.username and any(s.auth for s in self.c.mix):
            self.auth_headers = {"Cookie": f"session={await self._login()}"}
        event_id = ""
        if any("{event_id}" in s.path for s in self.c.mix):
            headers = {"Content-Type": "application/json", **self.auth_headers}
            async with self.session.post(self.base + "/api/v1/events", data=EVENT_BODY, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 201:
                    raise SetupError(f"creating the event to read answered HTTP {resp.status}")
                event_id = str(body["id"])
        self.requests = []
        for s in self.c.mix:
            headers = dict(self.auth_headers) if s.auth else {}
            if s.body is not None:
                headers["Content-Type"] = "application/json"
            url = URL(self.base + s.path.replace("{event_id}", event_id))
            self.requests.append((s.name, s.method, url, s.body, headers))
        self.weights = [s.weight for s in self.c.mix]
        # Open some keep-alive connections now, so TLS handshakes do not land in the measurement.
        warm = max(2, min(self.c.connections, math.ceil(self.p.rate_rps / self.nprocs * 0.02)))
        await asyncio.gather(*(self._warm_one() for _ in range(warm)))

    async def _warm_one(self) -> None:
        name, method, url, body, headers = self.requests[0]
        async with self.session.request(method, url, data=body, headers=headers) as resp:
            await resp.read()

    async def run(self, t0: float) -> ProcessResult:
        p, rate, r = self.p, self.p.rate_rps, self.r
        self.w0, self.w1 = t0 + p.warmup_s, t0 + p.warmup_s + p.duration_s
        total = int(rate * (p.warmup_s + p.duration_s))
        late = self.w1 + 1.0
        rng = random.Random(self.c.seed * 1009 + self.index)
        in_flight: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()
        # The most a responsive-or-timing-out service can hold open; more means the generator is behind.
        cap = min(MAX_IN_FLIGHT, max(2 * self.c.connections, math.ceil(rate / self.nprocs * self.c.timeout_s)))
        cpu0 = wall0 = None
        for n, i in enumerate(range(self.index, total, self.nprocs)):
            due = t0 + i / rate
            now = time.monotonic()
            while due > now:  # never early: sleep at least 1 ms (the loop's timer resolution)
                await asyncio.sleep(max(due - now, 0.001))
                now = time.monotonic()
            if n % 8 == 7 or len(in_flight) >= cap:  # behind schedule: let the requests run too
                await asyncio.sleep(0)
                while len(in_flight) >= cap and time.monotonic() <= late:
                    await asyncio.sleep(0.001)
                now = time.monotonic()
            if cpu0 is None and now >= self.w0:
                cpu0, wall0, wait0 = time.process_time(), now, _run_queue_wait()
            if now > late:
                r.unsent += sum(1 for j in range(i, total, self.nprocs) if t0 + j / rate >= self.w0)
                break
            req = rng.choices(self.requests, self.weights)[0]
            task = loop.create_task(self._one(req, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if cpu0 is not None:
            wall = time.monotonic() - wall0
            r.cpu_share = (time.process_time() - cpu0) / wall if wall > 0.05 else 0.0
            r.cpu_wait_share = (_run_queue_wait() - wait0) / wall if wall > 0.05 else 0.0
        if in_flight:
            done, pending = await asyncio.wait(in_flight, timeout=self.c.timeout_s + 1.0)
            for task in pending:  # cannot happen with aiohttp's own timeout; a bound all the same
                task.cancel()
                r.errors["abandoned"] += 1
        await self.session.close()
        return r

    async def _one(self, req, due: float) -> None:
        name, method, url, body, headers = req
        start = time.monotonic()
        measured = self.w0 <= due < self.w1
        if measured:
            self.r.due += 1
            self.r.lag.record(start - due)
            if start < self.w1:
                self.r.sent += 1
        outcome = None
        try:
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                await resp.read()
                outcome = None if 200 <= resp.status < 400 else str(resp.status)
        except TimeoutError:
            outcome = "timeout"
        except (self.aiohttp.ClientError, OSError) as exc:
            outcome = f"connection ({type(exc).__name__})"
        end = time.monotonic()
        if outcome is None and self.w0 <= end < self.w1:
            self.r.completed_in_window += 1
        if not measured:
            return
        latency = end - due
        if not outcome or outcome == "timeout" or outcome.isdigit():  # refused sockets have no latency
            self.r.latency.record(latency)
            self.r.by_endpoint.setdefault(name, LatencyHistogram()).record(latency)
            self.r.timeline.setdefault(int((due - self.w0) / self.c.slot_s), LatencyHistogram()).record(latency)
        if outcome:
            self.r.errors[outcome] += 1
            self.r.endpoint_errors[name] += 1
            self.r.timeline_errors[int((due - self.w0) / self.c.slot_s)] += 1
        else:
            self.r.ok += 1


def _run_queue_wait() -> float:
    """Seconds this thread has spent runnable but not running (Linux schedstat; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _process_main(conn, config: GeneratorConfig, profile: LoadProfile, index: int, nprocs: int) -> None:
    import aiohttp
    import uvloop

    def quiet(loop, context):  # connections torn down mid-TLS under overload: counted, not printed
        if not isinstance(context.get("exception"), (OSError, RuntimeError, ssl.SSLError)):
            loop.default_exception_handler(context)

    async def main():
        asyncio.get_running_loop().set_exception_handler(quiet)
        worker = _Worker(config, profile, index, nprocs)
        try:
            await asyncio.wait_for(worker.setup(aiohttp), SETUP_TIMEOUT_S)
        except Exception as exc:  # report, don't hang the parent
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
            if getattr(worker, "session", None):
                await worker.session.close()
            return
        gc.collect()
        gc.freeze()  # setup's objects never need scanning again: shorter collector pauses in the window
        conn.send(("ready", None))
        if not conn.poll(SETUP_TIMEOUT_S):
            return
        kind, t0 = conn.recv()
        if kind != "go":
            return
        conn.send(("result", await worker.run(t0)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    conn.close()


def processes_for(rate_rps: float) -> int:
    return max(1, min(os.cpu_count() or 1, math.ceil(rate_rps / PER_PROCESS_RPS)))


def run_profile(
    config: GeneratorConfig,
    profile: LoadProfile,
    processes: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> ProfileRun:
    """Run one profile in ``processes`` generator processes (default: one per ``PER_PROCESS_RPS``).

    Raises ``SetupError`` when a process cannot log in or reach the service, ``ValueError``
    for a target that is not loopback. ``on_progress`` gets the elapsed share (0-1) about once a second.
    """
    check_loopback(config.base_url)
    if profile.rate_rps <= 0 or profile.duration_s <= 0 or profile.warmup_s < 0:
        raise ValueError(f"profile {profile.name}: rate and duration must be positive")
    n = processes or processes_for(profile.rate_rps)
    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Prefect's threads
    procs, conns = [], []
    try:
        for k in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(child, config, profile, k, n), daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        setup_deadline = time.monotonic() + SETUP_TIMEOUT_S + 15
        for conn in conns:
            if not conn.poll(max(0.0, setup_deadline - time.monotonic())):
                raise SetupError("a generator process did not get ready in time")
            kind, detail = conn.recv()
            if kind != "ready":
                raise SetupError(detail)
        t0 = time.monotonic() + 0.2
        for conn in conns:
            conn.send(("go", t0))
        length = profile.warmup_s + profile.duration_s
        deadline = t0 + length + 1.0 + config.timeout_s + 10
        results: list[ProcessResult] = []
        for conn in conns:
            while not conn.poll(1.0):
                if on_progress:
                    on_progress(min(1.0, max(0.0, (time.monotonic() - t0) / length)))
                if time.monotonic() > deadline:
                    raise SetupError("a generator process did not report in time")
            kind, payload = conn.recv()
            results.append(payload)
        if on_progress:
            on_progress(1.0)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()  # only the processes started above, by handle
                proc.join(timeout=5)
    return merge(profile, results, config)


def merge(profile: LoadProfile, results: list[ProcessResult], config: GeneratorConfig) -> ProfileRun:
    """Add the processes' histograms and counters; decide whether the generator kept up."""
    latency, lag, errors, endpoint_errors = LatencyHistogram(), LatencyHistogram(), Counter(), Counter()
    by_endpoint: dict[str, LatencyHistogram] = {}
    timeline: dict[int, LatencyHistogram] = {}
    timeline_errors: Counter = Counter()
    saturation = []
    shortfall = False
    for r in results:
        latency.merge(r.latency)
        lag.merge(r.lag)
        errors.update(r.errors)
        endpoint_errors.update(r.endpoint_errors)
        timeline_errors.update(r.timeline_errors)
        for name, h in r.by_endpoint.items():
            by_endpoint.setdefault(name, LatencyHistogram()).merge(h)
        for slot, h in r.timeline.items():
            timeline.setdefault(slot, LatencyHistogram()).merge(h)
        tag = f"{profile.name}: generator process {r.index}"
        busy = f" (it waited for a CPU {r.cpu_wait_share:.0%} of the time)" if r.cpu_wait_share > 0.05 else ""
        if r.cpu_share > config.max_cpu_share:
            saturation.append(f"{tag} used {r.cpu_share:.0%} of a core (limit {config.max_cpu_share:.0%})")
        due = r.due + r.unsent
        if due and r.sent / due < config.min_send_ratio:
            shortfall = True
            saturation.append(f"{tag} sent {r.sent} of {due} due requests on time ({r.sent / due:.0%}){busy}")
        lag_p99 = r.lag.percentile(99) * 1000
        if r.lag.total and lag_p99 > config.max_send_lag_ms:
            saturation.append(f"{tag} p99 send lag {lag_p99:.1f} ms (limit {config.max_send_lag_ms:g} ms){busy}")
    return ProfileRun(
        profile,
        results,
        latency,
        lag,
        errors,
        by_endpoint,
        endpoint_errors,
        timeline,
        timeline_errors,
        saturation,
        config.slot_s,
        shortfall,
    )
