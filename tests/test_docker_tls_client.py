"""A tcp:// Docker engine is driven over TLS with client certificates, verified against its CA.

The engine here is a stand-in that speaks the two calls a connection makes (``/version``,
``/_ping``) over TLS and, like ``dockerd --tlsverify``, refuses a client without a certificate
signed by the CA it trusts. The real docker SDK client talks to it through ``DockerConnection``.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blocks.docker.client import DockerConnection, DockerTLSFiles
from tasks.core.errors import TemporaryError
from tests.support.fake_api import make_tls

pytestmark = pytest.mark.unit


class _Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"ApiVersion": "1.41", "Version": "20.10-standin"}).encode()
        if self.path.endswith("/_ping"):
            body = b"OK"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TlsEngine(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Engine)
        self.context = context

    def finish_request(self, request, client_address) -> None:
        super().finish_request(self.context.wrap_socket(request, server_side=True), client_address)

    def handle_error(self, request, client_address) -> None:  # a refused handshake is the point
        pass


@pytest.fixture
def engine(tmp_path):
    """(address, engine CA, a client's cert and key signed by a CA the engine trusts)."""
    (tmp_path / "engine").mkdir()
    (tmp_path / "client").mkdir()
    engine_ca, engine_cert, engine_key = make_tls(tmp_path / "engine")
    client_ca, client_cert, client_key = make_tls(tmp_path / "client")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(engine_cert, engine_key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED  # as dockerd --tlsverify
    server = _TlsEngine(context)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"tcp://localhost:{server.server_address[1]}", engine_ca, client_cert, client_key, tmp_path
    server.shutdown()
    server.server_close()


def test_the_engine_is_reached_over_tls_with_the_client_certificate(engine):
    address, ca, cert, key, _ = engine
    with DockerConnection(address, 5, DockerTLSFiles(str(ca), str(cert), str(key))) as connection:
        assert connection.client.version()["Version"] == "20.10-standin"
        assert connection.client.api.base_url.startswith("https://")


def test_an_engine_certificate_from_another_ca_is_refused(engine):
    address, _, cert, key, tmp = engine
    (tmp / "other").mkdir()
    other_ca, _, _ = make_tls(tmp / "other")
    with pytest.raises(TemporaryError, match="CERTIFICATE_VERIFY_FAILED"):
        DockerConnection(address, 5, DockerTLSFiles(str(other_ca), str(cert), str(key)))


def test_a_client_without_the_engines_trust_is_turned_away(engine):
    address, ca, _, _, tmp = engine
    (tmp / "stranger").mkdir()
    _, stranger_cert, stranger_key = make_tls(tmp / "stranger")  # signed by a CA the engine does not trust
    with pytest.raises(TemporaryError):
        DockerConnection(address, 5, DockerTLSFiles(str(ca), str(stranger_cert), str(stranger_key)))
