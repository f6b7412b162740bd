"""A small fake of the Architect API on loopback, with switches that break one behaviour at a time.

``FakeApi`` serves the app over HTTPS (a throwaway CA made with ``cryptography``), the same app
over plain HTTP (a "replica"), and a plain-HTTP listener that redirects to HTTPS (the
balancer's port 80). ``faults`` is a set of names from ``FAULTS``; each breaks one thing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALLOWED_ORIGIN = "https://dashboard.architect.localhost"
USER, PASSWORD = "smoke", "fake-smoke-password-7f3a"
FAULTS = {
    "login_invalid_200",
    "cookie_no_httponly",
    "logout_keeps_session",
    "pagination_ignores_limit",
    "event_delete_noop",
    "resolve_500",
    "aggregate_broken",
    "notification_read_noop",
    "component_degraded",
    "no_metrics",
    "http_no_redirect",
    "no_hsts",
    "cors_reflect_any",
    "malformed_json_500",
    "sql_500",
    "xss_raw",
    "no_nosniff",
    "no_rate_limit",
    "replica_unhealthy",
    "login_500_echo",
    "cors_prefix_match",
    "cors_null",
    "cors_wildcard_credentials",
    "version_banner",
    "html_errors",
    "query_ignored",
    "method_501",
}
# The query parameters each list takes (the real app refuses any other with 400).
LIST_PARAMETERS = {
    "/api/v1/events": {"limit", "offset", "severity"},
    "/api/v1/errors": {"limit", "offset", "resolved"},
    "/api/v1/notifications": {"limit", "offset"},
}
SEVERITIES = {"debug", "info", "warning", "error", "critical"}


def make_tls(directory: Path, days: int = 365) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for localhost/127.0.0.1 valid ``days``; returns (ca, cert, key) paths."""
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: str, key, signer, ca: bool, valid_days: int):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("fake test CA", "fake test CA", ca_key, ca_key, True, 3650)
    leaf = build("localhost", "fake test CA", leaf_key, ca_key, False, days)
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class App:
    """The fake's state; one instance behind all three listeners."""

    def __init__(self):
        self.faults: set[str] = set()
        self.lock = threading.Lock()
        self.https_port = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.sessions: set[str] = set()
            self.events: dict[int, dict] = {}
            self.errors: dict[int, dict] = {}
            self.notes: dict[int, dict] = {}
            self.next_id = 1
            self.logins: deque[float] = deque()
            self.faults.clear()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body go out in two writes
    server_version, sys_version = "fake-api", ""  # no "BaseHTTP/0.6 Python/3.x" banner
    server: Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    @property
    def app(self) -> App:
        return self.server.app

    def send(self, status: int, body=None, headers: dict | None = None) -> None:
        faults = self.app.faults
        text = "" if body is None else json.dumps(body)
        if "xss_raw" not in faults:  # Go's encoding/json escapes these
            text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        data = text.encode()
        self.send_response(status)
        html = "html_errors" in faults and status == 404
        self.send_header("Content-Type", "text/html" if html else "application/json")
        self.send_header("Content-Length", str(len(data)))
        if "version_banner" in faults:
            self.send_header("X-Powered-By", "fake-framework/2.4.1")
        if "no_nosniff" not in faults:
            self.send_header("X-Content-Type-Options", "nosniff")
        if self.server.tls and "no_hsts" not in faults:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        origin = self.headers.get("Origin")
        if "cors_wildcard_credentials" in faults and origin:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Credentials", "true")
        elif origin and self.origin_allowed(origin):
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Vary", "Origin")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def token(self) -> str | None:
        match = re.search(r"session=([^;\s]+)", self.headers.get("Cookie", ""))
        return match.group(1) if match and match.group(1) in self.app.sessions else None

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if length > 64 * 1024:
            raise ValueError("body too large")
        return json.loads(raw or b"{}")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PUT(self):
        self.method_not_allowed()

    def do_PATCH(self):
        self.method_not_allowed()

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler answers a method it has no do_X for with an HTML 501.
        if name.startswith("do_") and "method_501" not in self.app.faults:
            return self.method_not_allowed
        raise AttributeError(name)

    def method_not_allowed(self) -> None:
        self.send(405, {"error": "method not allowed"}, {"Allow": "DELETE, GET, OPTIONS, POST"})

    def origin_allowed(self, origin: str) -> bool:
        faults = self.app.faults
        return (
            origin == ALLOWED_ORIGIN
            or "cors_reflect_any" in faults
            or ("cors_prefix_match" in faults and origin.startswith(ALLOWED_ORIGIN))
            or ("cors_null" in faults and origin == "null")
        )

    def do_OPTIONS(self):
        origin = self.headers.get("Origin", "")
        allowed = self.origin_allowed(origin) or "cors_wildcard_credentials" in self.app.faults
        self.send(204 if allowed else 403, None if allowed else {"error": "origin not allowed"})

    def route(self, method: str) -> None:
        if self.server.redirect:
            if "http_no_redirect" in self.app.faults:
                return self.send(200, {"ok": True})
            return self.send(301, None, {"Location": f"https://localhost:{self.app.https_port}{self.path}"})
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self.body() if method == "POST" else None
        except ValueError as exc:
            if "malformed_json_500" in self.app.faults:
                return self.send(500, {"error": "internal"})
            return self.send(400, {"error": f"invalid JSON: {exc}"})
        with self.app.lock:
            self.handle_api(method, url.path, query, body)

    def handle_api(self, method: str, path: str, query: dict, body) -> None:  # noqa: C901 - a router
        app, faults = self.app, self.app.faults
        if path == "/health":
            unhealthy = not self.server.tls and "replica_unhealthy" in faults
            cache = "degraded" if "component_degraded" in faults else "healthy"
            comps = {
                "database": "unhealthy" if unhealthy else "healthy",
                "cache": cache,
                "external_services": "healthy",
            }
            return self.send(
                503 if unhealthy else 200,
                {"status": "unhealthy" if unhealthy else "healthy", "version": "fake", "components": comps},
            )
        if path == "/metrics":
            if "no_metrics" in faults:
                return self.send(404, {"error": "not found"})
            return self._metrics()
        if path == "/api/v1/auth/login" and method == "POST":
            now = time.monotonic()
            while app.logins and app.logins[0] < now - 5:
                app.logins.popleft()
            if len(app.logins) >= 20 and "no_rate_limit" not in faults:
                return self.send(429, {"error": "too many attempts"}, {"Retry-After": "1"})
            app.logins.append(now)
            if "login_500_echo" in faults:  # a careless error page that echoes the request
                return self.send(500, {"error": "internal", "request": body})
            good = body.get("username") == USER and body.get("password") == PASSWORD
            if not good and "login_invalid_200" not in faults:
                return self.send(401, {"error": "invalid credentials"})
            token = f"tok{app.new_id()}x{int(now * 1000)}"
            app.sessions.add(token)
            flags = "Path=/; Secure; SameSite=Strict" + ("" if "cookie_no_httponly" in faults else "; HttpOnly")
            return self.send(200, {"user": USER}, {"Set-Cookie": f"session={token}; {flags}"})
        if path == "/api/v1/errors" and method == "POST":
            eid = app.new_id()
            app.errors[eid] = {"id": eid, "kind": body.get("kind"), "message": body.get("message"), "resolved": False}
            return self.send(201, app.errors[eid])
        token = self.token()
        if token is None:
            return self.send(401, {"error": "unauthorized"})
        if method == "GET" and path in LIST_PARAMETERS and (problem := self.query_problem(path, query)):
            return self.send(400, {"error": problem})
        if path == "/api/v1/auth/me":
            return self.send(200, {"user": USER})
        if path == "/api/v1/auth/logout" and method == "POST":
            if "logout_keeps_session" not in faults:
                app.sessions.discard(token)
            return self.send(200, {"ok": True}, {"Set-Cookie": "session=; Max-Age=0; Path=/; HttpOnly; Secure"})
        if path == "/api/v1/events":
            if method == "POST":
                if "sql_500" in faults and "'" in str(body.get("type")):
                    return self.send(500, {"error": 'pq: syntax error at or near "OR"'})
                eid = app.new_id()
                app.events[eid] = {
                    "id": eid,
                    "type": body.get("type"),
                    "source": body.get("source"),
                    "payload": body.get("payload") or {},
                }
                return self.send(201, app.events[eid])
            if "sql_500" in faults and any(c in v for v in query.values() for c in "';"):
                return self.send(500, {"error": 'pq: syntax error at or near ";"'})
            try:
                limit, offset = int(query.get("limit", 50)), int(query.get("offset", 0))
            except ValueError:
                return self.send(400, {"error": "limit and offset must be integers"})
            rows = [e for e in app.events.values() if "type" not in query or e["type"] == query["type"]]
            page = rows[offset:] if "pagination_ignores_limit" in faults else rows[offset : offset + limit]
            return self.send(200, {"items": page, "total": len(rows), "limit": limit, "offset": offset})
        if m := re.fullmatch(r"/api/v1/events/(\d+)", path):
            event = app.events.get(int(m.group(1)))
            if event is None:
                return self.send(404, {"error": "not found"})
            if method == "DELETE":
                if "event_delete_noop" not in faults:
                    del app.events[event["id"]]
                return self.send(204)
            return self.send(200, event)
        if path == "/api/v1/errors":
            return self.send(200, {"items": list(app.errors.values()), "total": len(app.errors)})
        if path == "/api/v1/errors/aggregate":
            groups: dict[tuple, dict] = {}
            for e in app.errors.values():
                g = groups.setdefault(
                    (e["kind"], e["message"]), {"kind": e["kind"], "message": e["message"], "count": 0, "unresolved": 0}
                )
                g["count"] = 1 if "aggregate_broken" in faults else g["count"] + 1
            return self.send(200, {"groups": list(groups.values())})
        if (m := re.fullmatch(r"/api/v1/errors/(\d+)/resolve", path)) and int(m.group(1)) in app.errors:
            if "resolve_500" in faults:
                return self.send(500, {"error": "internal"})
            app.errors[int(m.group(1))]["resolved"] = True
            return self.send(200, app.errors[int(m.group(1))])
        if path == "/api/v1/notifications":
            if method == "POST":
                nid = app.new_id()
                app.notes[nid] = {"id": nid, "title": body.get("title"), "body": body.get("body"), "read": False}
                return self.send(201, app.notes[nid])
            return self.send(200, {"items": list(app.notes.values()), "total": len(app.notes)})
        if (m := re.fullmatch(r"/api/v1/notifications/(\d+)(/read)?", path)) and int(m.group(1)) in app.notes:
            nid = int(m.group(1))
            if m.group(2) and method == "POST":
                app.notes[nid]["read"] = "notification_read_noop" not in faults
                return self.send(200, app.notes[nid])
            if method == "DELETE":
                del app.notes[nid]
                return self.send(204)
        return self.send(404, {"error": "not found"})

    def query_problem(self, path: str, query: dict) -> str | None:
        """What the real app refuses in a list's query, as it does; None when it takes it."""
        faults = self.app.faults
        if "sql_500" in faults and any(c in v for v in query.values() for c in "';"):
            return None  # the fault answers 500 in the route below
        if "query_ignored" not in faults and (unknown := set(query) - LIST_PARAMETERS[path]):
            return f"unknown query parameter {sorted(unknown)[0]!r}"
        for name in ("limit", "offset"):
            if name in query and not query[name].isdigit():
                return f"{name} must be a non-negative integer"
        if "query_ignored" in faults:  # the filters are not validated either: they are dropped
            return None
        if "severity" in query and query["severity"] not in SEVERITIES:
            return "severity must be one of " + ", ".join(sorted(SEVERITIES))
        if "resolved" in query and query["resolved"] not in ("true", "false"):
            return "resolved must be true or false"
        return None

    def _metrics(self) -> None:
        data = b'# TYPE http_requests_total counter\nhttp_requests_total{method="GET",route="/health",status="200"} 1\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App, tls: ssl.SSLContext | None = None, redirect: bool = False):
        super().__init__(("127.0.0.1", 0), Handler)
        self.app, self.tls, self.redirect = app, tls, redirect

    def finish_request(self, request, client_address) -> None:
        if self.tls is not None:  # handshake in the worker thread, not the accept loop
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:  # a probe that hangs up is not an error
        pass


class FakeApi:
    """Three listeners around one ``App``: ``https_url``, ``replica_url`` (plain) and ``http_url`` (redirects)."""

    def __init__(self, tmp: Path, cert_days: int = 365, tls_minimum: ssl.TLSVersion | None = None):
        self.ca, cert, key = make_tls(tmp, cert_days)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        if tls_minimum is not None:  # a misconfigured balancer: old protocols and ciphers accepted
            tls.minimum_version = tls_minimum
            tls.set_ciphers("DEFAULT:@SECLEVEL=0")
        self.app = App()
        self.servers = [Server(self.app, tls), Server(self.app), Server(self.app, redirect=True)]
        self.app.https_port = self.servers[0].server_address[1]
        ports = [s.server_address[1] for s in self.servers]
        self.https_url = f"https://localhost:{ports[0]}"
        self.replica_url = f"http://127.0.0.1:{ports[1]}"
        self.http_url = f"http://localhost:{ports[2]}"
        self.threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in self.servers]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()
