"""A tiny HTTP server on a free loopback port whose latency and failures a test controls.

It runs its own event loop in a thread of the test process; the generator runs in its own
processes, so the two never share a loop. It also answers the API mix's paths, with the
session cookie required where the real API requires it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

SESSION = "test-session-token"


@dataclass
class Behaviour:
    delay_s: float = 0.0
    jitter_s: float = 0.0  # uniform extra delay in [0, jitter_s]
    error_every: int = 0  # every n-th request answers 500
    stall_at: int = 0  # the n-th request starts a stall that holds every request until it ends
    stall_s: float = 0.0
    hang_after: int = 0  # requests after the n-th never answer
    seen: int = 0
    stall_until: float = 0.0
    paths: list[str] = field(default_factory=list)
    unauthorised: int = 0


class ControlledServer:
    def __init__(self, behaviour: Behaviour):
        self.b = behaviour
        self.rng = random.Random(7)
        self.ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        b = self.b
        b.seen += 1
        n = b.seen
        if len(b.paths) < 10_000:
            b.paths.append(request.path)
        if b.stall_at and n == b.stall_at:
            b.stall_until = time.monotonic() + b.stall_s
        if b.hang_after and n > b.hang_after:
            await asyncio.sleep(3600)
        wait = b.delay_s + self.rng.uniform(0, b.jitter_s) + max(0.0, b.stall_until - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        if b.error_every and n % b.error_every == 0:
            return web.Response(status=500, text="boom")
        return await self._answer(request)

    async def _answer(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        if path == "/api/v1/auth/login":
            body = await request.json()
            if body.get("password") != "pw":
                return web.json_response({"error": "bad credentials"}, status=401)
            response = web.json_response({"user": body["username"]})
            response.set_cookie("session", SESSION, httponly=True, samesite="Strict")
            return response
        needs_auth = path.startswith("/api/v1/") and not (path == "/api/v1/errors" and method == "POST")
        if needs_auth and request.cookies.get("session") != SESSION:
            self.b.unauthorised += 1
            return web.json_response({"error": "unauthorised"}, status=401)
        if method == "POST":
            await request.read()
            return web.json_response({"id": next(self.ids)}, status=201)
        if path == "/health":
            return web.json_response({"status": "healthy"})
        return web.Response(text=json.dumps({"items": [], "total": 0}), content_type="application/json")

    def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.thread.start()
        return f"http://127.0.0.1:{port}"

    async def _shutdown(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:  # handlers still sleeping (stalls, hangs) end now
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.runner.cleanup()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
