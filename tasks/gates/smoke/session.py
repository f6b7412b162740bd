"""The smoke session: the HTTP client the smoke and security checks share, and how a check runs.

``SmokeSession`` holds one logged-in client, the ids the checks created and the requests each
made. A check is a function of the session that returns what it saw or raises ``CheckFailed``
(or ``Inconclusive`` when it could not run); ``registry`` collects checks in definition order,
``run_check`` turns the outcome into a ``CheckResult``. The request log and the last response are
kept per thread, so independent checks may run at the same time on the one session.
``expect``, ``body_json``, ``created_body`` and ``items_of`` read responses.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Callable
from http.cookies import SimpleCookie

import httpx

from blocks.environment import StagingEnvironment
from tasks.core.errors import CheckFailed, Inconclusive
from tasks.core.models import CheckResult, Verdict
from tasks.core.redaction import Redactor
from tasks.gates.evidence import environment_secrets, excerpt

# Response headers a failed row shows beside the body: what the security checks judge.
SHOWN_HEADERS = (
    "content-type",
    "location",
    "strict-transport-security",
    "x-content-type-options",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "vary",
    "server",
    "x-powered-by",
    "allow",
    "retry-after",
)


def expect(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in codes:
        raise CheckFailed(f"expected {'/'.join(map(str, codes))}, got {response.status_code}")
    return response


def body_json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        raise CheckFailed(f"{response.request.method} {response.request.url.path}: body is not JSON") from None


def created_body(response: httpx.Response, what: str) -> dict:
    """The body of a 201 for a new object, which must carry its id."""
    created = body_json(expect(response, 201))
    if not created.get("id"):
        raise CheckFailed(f"created {what} has no id")
    return created


def items_of(body) -> list:
    items = body if isinstance(body, list) else (body or {}).get("items")
    if not isinstance(items, list):
        raise CheckFailed("list response has no 'items' array")
    return items


class SmokeSession:
    """State shared by the smoke checks: one logged-in client, created ids, a request log."""

    def __init__(self, environment: StagingEnvironment, http_url: str | None):
        self.env = environment
        self.base = str(environment.api_url).rstrip("/")
        self.http_url = http_url
        self.verify = environment.ssl_context()
        self.redact = Redactor(environment_secrets(environment))
        self.tag = uuid.uuid4().hex[:8]  # marks this run's data
        self._local = threading.local()  # each check's request log and last response, per thread
        self._login_lock = threading.Lock()
        self.token: str | None = None
        self.login_cookie: str | None = None
        self.ids: dict[str, str] = {}
        self.created_events: list[str] = []
        self.client = self.new_client()

    @property
    def requests(self) -> list[str]:
        if not hasattr(self._local, "requests"):
            self._local.requests = []
        return self._local.requests

    @requests.setter
    def requests(self, value: list[str]) -> None:
        self._local.requests = value

    @property
    def last(self) -> httpx.Response | None:
        return getattr(self._local, "last", None)

    @last.setter
    def last(self, value: httpx.Response | None) -> None:
        self._local.last = value

    def new_client(self, base_url: str | None = None) -> httpx.Client:
        hooks = {"request": [self._on_request], "response": [self._on_response]}
        return httpx.Client(base_url=base_url or self.base, verify=self.verify, timeout=10.0, event_hooks=hooks)

    def _on_request(self, request: httpx.Request) -> None:
        where = request.url.raw_path.decode()
        if not str(request.url).startswith(self.base):  # another listener (the plain-HTTP port): say which
            where = f"{request.url.scheme}://{request.url.netloc.decode()}{where}"
        if origin := request.headers.get("origin"):  # the CORS probes: which origin was asked for
            where += f" (Origin: {origin})"
        self.requests.append(f"{request.method} {where}")

    def _on_response(self, response: httpx.Response) -> None:
        self.last = response

    def login(self, client: httpx.Client | None = None) -> tuple[httpx.Response, str]:
        """Log the smoke user in; returns the response and the session token it set."""
        creds = {"username": self.env.smoke_user, "password": self.env.smoke_password.get_secret_value()}
        response = expect((client or self.client).post("/api/v1/auth/login", json=creds), 200)
        for header in response.headers.get_list("set-cookie"):
            cookie = SimpleCookie()
            cookie.load(header)
            if "session" in cookie and cookie["session"].value:
                self.redact = self.redact.with_secrets([cookie["session"].value])
                return response, cookie["session"].value
        raise CheckFailed("login answered 200 but set no 'session' cookie")

    def session(self) -> httpx.Client:
        """The logged-in client; logs in on first use so one failed check does not hide the rest."""
        with self._login_lock:  # concurrent checks share one login
            if self.token is None:
                try:
                    response, token = self.login()
                except (CheckFailed, httpx.HTTPError) as exc:
                    raise CheckFailed(f"no session (login failed: {exc})") from None
                cookies = response.headers.get_list("set-cookie")
                self.login_cookie = next(h for h in cookies if h.startswith("session="))
                self.client.headers["Cookie"] = f"session={token}"
                self.token = token
        return self.client

    def create_event(self, type_: str = "smoke.check", payload: dict | None = None) -> dict:
        body = {"type": type_, "source": f"smoke-{self.tag}", "payload": payload or {"run": self.tag}}
        created = created_body(self.session().post("/api/v1/events", json=body), "event")
        self.created_events.append(str(created["id"]))
        return created

    def known(self, kind: str, make: Callable[[], dict]) -> str:
        """The id an earlier check created, or a fresh one when that check failed."""
        if kind not in self.ids:
            self.ids[kind] = str(make()["id"])
        return self.ids[kind]


SmokeCheck = Callable[[SmokeSession], str]


def registry(checks: list[tuple[str, SmokeCheck]]) -> Callable[[str], Callable[[SmokeCheck], SmokeCheck]]:
    """A decorator factory: ``@name("...")`` appends the check to ``checks``, in definition order."""

    def named(name: str) -> Callable[[SmokeCheck], SmokeCheck]:
        def register(fn: SmokeCheck) -> SmokeCheck:
            checks.append((name, fn))
            return fn

        return register

    return named


def _could_not_run(exc: Exception) -> bool:
    """The server could not be asked (refused, reset, timed out): the check says nothing either way.

    A certificate that does not verify is an answer, and a failure."""
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return False
    return isinstance(exc, (Inconclusive, httpx.TransportError, ConnectionError, TimeoutError))


def shown_response(response: httpx.Response, redact: Redactor) -> str:
    """Status, body excerpt and the headers the security checks judge, redacted."""
    headers = "; ".join(f"{h}: {v}" for h in SHOWN_HEADERS for v in response.headers.get_list(h))
    text = excerpt(response, redact)
    return redact(f"{text} | {headers}") if headers else text


def run_check(s: SmokeSession, name: str, fn: Callable[[], str]) -> CheckResult:
    s.requests, s.last = [], None
    try:
        verdict, detail, response = Verdict.PASS, fn(), ""
    except Exception as exc:  # each check fails alone with its reason; the others still run
        reason = str(exc) if isinstance(exc, (CheckFailed, Inconclusive)) else f"{type(exc).__name__}: {exc}"
        if _could_not_run(exc):  # never a pass, and not a finding either
            verdict, detail = Verdict.INCONCLUSIVE, f"could not run: {reason}"
        else:
            verdict, detail = Verdict.FAIL, reason
        response = shown_response(s.last, s.redact) if s.last is not None else ""
    seen: list[str] = []
    for r in s.requests:
        seen += [] if r in seen else [r]
    request = ", ".join(f"{r} x{s.requests.count(r)}" if s.requests.count(r) > 1 else r for r in seen)
    return CheckResult(
        name=name,
        verdict=verdict,
        detail=s.redact(detail),
        request=s.redact(request)[:500],
        response=s.redact(response),
    )
