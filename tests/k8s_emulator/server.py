"""The HTTP side of the emulator: Kubernetes REST paths over plain HTTP/1.1 on loopback.

Threaded ``http.server``: each request gets a thread, so watches (chunked JSON lines, ended by
``timeoutSeconds`` or by shutdown) do not block other calls. Every request is recorded in
``Emulator.requests`` and anything unrouted in ``Emulator.unhandled``, which is how the set of
endpoints kubectl needs was found.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import yaml

from . import resources
from .store import ApiError, ResourceType

if TYPE_CHECKING:
    from . import Emulator

MAX_WATCH_SECONDS = 300


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, emulator: Emulator):
        super().__init__(address, Handler)
        self.emulator = emulator


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass

    # ---- plumbing -----------------------------------------------------------------------------

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def _send(self, code: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.emulator.requests.append((self.command, self.path, code))

    def _error(self, err: ApiError) -> None:
        self._send(err.code, err.status())

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # kubectl's typed commands (create namespace, create secret) send protobuf; not emulated.
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the emulator accepts JSON and YAML bodies only (use kubectl apply/create -f)",
            )
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"cannot decode body: {exc}") from exc

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if self.command == "GET" and self._discovery(parts):
                return
            route = self._route(parts)
            if route is None:
                self.emulator.unhandled.append((self.command, self.path))
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._resource(*route, query)
        except ApiError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- discovery ----------------------------------------------------------------------------

    def _discovery(self, parts: list[str]) -> bool:
        doc: dict | None = None
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if parts == ["version"]:
            doc = {
                **resources.EMULATED_VERSION,
                "gitCommit": "emulator",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.23",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        elif parts in (["healthz"], ["readyz"], ["livez"]):
            self._send(200, "ok", "text/plain")
            return True
        elif parts == ["api"]:
            doc = resources.api_versions(host)
        elif parts == ["apis"]:
            doc = resources.api_group_list()
        elif len(parts) == 2 and parts[0] == "api":
            doc = resources.api_resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            doc = resources.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = resources.api_resource_list(parts[1], parts[2])
        elif parts == ["openapi", "v3"]:
            doc = resources.openapi_v3_index()
        elif parts[:2] == ["openapi", "v3"]:
            doc = resources.openapi_v3_document("/".join(parts[2:]))
        else:
            return False
        if doc is None:
            self.emulator.unhandled.append((self.command, self.path))
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._send(200, doc)
        return True

    # ---- resources ----------------------------------------------------------------------------

    def _route(self, parts: list[str]):
        """(resource type, namespace, name, subresource) for a resource path, else None."""
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
            group, rest = parts[1], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, rest[2]) in resources.BY_PLURAL:
            namespace, rest = rest[1], rest[2:]
        if not rest or (group, rest[0]) not in resources.BY_PLURAL or len(rest) > 3:
            return None
        rt = resources.BY_PLURAL[(group, rest[0])]
        if namespace is not None and not rt.namespaced:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            return None
        if name is not None and rt.namespaced and namespace is None:
            return None
        return rt, namespace or "", name, sub

    def _resource(self, rt: ResourceType, namespace: str, name: str | None, sub: str | None, query: dict) -> None:
        store, method = self.emulator.store, self.command
        dry_run = query.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1", "True"):
                    return self._watch(rt, namespace, query)
                items = store.list(rt, namespace or None, query.get("labelSelector"), query.get("fieldSelector"))
                return self._send(
                    200,
                    {
                        "kind": f"{rt.kind}List",
                        "apiVersion": rt.group_version,
                        "metadata": {"resourceVersion": str(store.rv)},
                        "items": items,
                    },
                )
            if method == "POST":
                return self._send(201, store.create(rt, namespace, self._body() or {}, dry_run=dry_run))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if sub == "log":
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "logs are read-only")
            pod = store.get(rt, namespace, name)
            text = self.emulator.cluster.pod_log(pod, query.get("container"), query.get("previous") == "true")
            if query.get("tailLines"):
                lines = text.splitlines()[-int(query["tailLines"]) :]
                text = "".join(line + "\n" for line in lines)
            return self._send(200, text, "text/plain")
        if method == "GET":
            return self._send(200, store.get(rt, namespace, name))
        if method == "PUT":
            return self._send(200, store.replace(rt, namespace, name, self._body() or {}, sub, dry_run=dry_run))
        if method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type.startswith("application/apply-patch") and not query.get("fieldManager"):
                raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value")
            obj, created = store.patch(rt, namespace, name, content_type, self._body(), sub, dry_run=dry_run)
            return self._send(201 if created else 200, obj)
        if method == "DELETE":
            body = self._body() or {}
            propagation = query.get("propagationPolicy") or body.get("propagationPolicy")
            if propagation is None and body.get("orphanDependents") is not None:
                propagation = "Orphan" if body["orphanDependents"] else "Background"
            obj = store.delete(rt, namespace, name, propagation, dry_run=dry_run)
            if rt.kind == "Pod":
                return self._send(200, obj)
            return self._send(
                200,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]},
                },
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _watch(self, rt: ResourceType, namespace: str, query: dict) -> None:
        store = self.emulator.store
        labels, fields = query.get("labelSelector"), query.get("fieldSelector")
        timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.emulator.requests.append((self.command, self.path, 200))

        def matches(obj: dict) -> bool:
            from .patching import field_selector_matches, label_selector_matches

            if namespace and obj["metadata"].get("namespace") != namespace:
                return False
            return label_selector_matches(labels, obj["metadata"].get("labels")) and field_selector_matches(fields, obj)

        def send(event_type: str, obj: dict) -> None:
            line = (json.dumps({"type": event_type, "object": obj}) + "\n").encode()
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        with store.lock:
            start = query.get("resourceVersion")
            initial = query.get("sendInitialEvents") == "true"
            if not start or start == "0" or initial:
                snapshot = [o for o in store.list(rt, namespace or None) if matches(o)]
                last = store.rv
            else:
                snapshot, last = [], int(start)
        try:
            for obj in snapshot:
                send("ADDED", obj)
            if initial:
                send(
                    "BOOKMARK",
                    {
                        "kind": rt.kind,
                        "apiVersion": rt.group_version,
                        "metadata": {
                            "resourceVersion": str(last),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                )
            while time.monotonic() < deadline:
                with store.changed:
                    if store.closed:
                        break
                    pending = [e for e in store.log if e.rv > last]
                    if not pending:
                        store.changed.wait(min(0.5, max(deadline - time.monotonic(), 0.01)))
                        continue
                for event in pending:
                    last = event.rv
                    if event.rt == rt and matches(event.obj):
                        send(event.type, event.obj)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        self.close_connection = True
