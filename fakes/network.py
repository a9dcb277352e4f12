"""Loopback plumbing every fake runs on: one threaded HTTP(S) server, one request record.

`FakeService` is the base of every HTTP fake: it serves plain HTTP and, on request, HTTPS
with a test-CA certificate (`serve`), records each request as a `Recorded`, answers from a
script (`script`) or its own `respond`, and is started and stopped by `with` or
`start()`/`stop()`. `RoutingProxy` reaches such servers under real host names over
CONNECT; `Listener` is a port that accepts and never answers; `refused_port()` one that
refuses.
"""

from __future__ import annotations

import itertools
import json
import secrets
import selectors
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from fakes import register_secret

FORM_URLENCODED = "application/x-www-form-urlencoded"
HANG = "HANG"
RESET = "RESET"
DRIP = "DRIP"  # headers at once, then the body one byte at a time, never finishing
JOIN_TIMEOUT = 5.0
HANDLER_TIMEOUT = 10.0


# --- servers -----------------------------------------------------------------------------------


class LoopbackServer:
    """Mixin for socketserver servers: serve from a thread, track every connection and
    handler thread, and end them all on stop."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args, **kwargs):
        self._handler_threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._track_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self):
        """Start serving and return once the serving thread runs."""
        ready = threading.Event()

        def serve():
            ready.set()
            self.serve_forever(poll_interval=0.05)

        self._serve_thread = threading.Thread(
            target=serve, name=f"{type(self).__name__}:{self.port}", daemon=True
        )
        self._serve_thread.start()
        if not ready.wait(JOIN_TIMEOUT):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def process_request(self, request, client_address):
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._track_lock:
            self._handler_threads.append(thread)
            self._connections.append(request)
        thread.start()

    def handle_error(self, request, client_address):
        """Stay quiet about connections the client dropped; report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def stop(self):
        """Stop serving, close the socket, cut open connections and join every thread."""
        self.shutdown()
        self.server_close()
        self._serve_thread.join(JOIN_TIMEOUT)
        with self._track_lock:
            connections, threads = list(self._connections), list(self._handler_threads)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(JOIN_TIMEOUT)


class LoopbackHTTPServer(LoopbackServer, ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1, HTTPS when given a context; TLS handshakes happen in
    each connection's own thread, so a stuck client never blocks the accept loop."""

    def __init__(self, handler, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self):
        # Skip HTTPServer's reverse DNS lookup of the address.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self):
        conn, address = super().get_request()
        if self.ssl_context is not None:
            conn = self.ssl_context.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
        return conn, address

    def finish_request(self, request, client_address):
        # Runs in the connection's own thread: the TLS handshake belongs here.
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(HANDLER_TIMEOUT)
            request.do_handshake()
        super().finish_request(request, client_address)


class _HTTPServer(LoopbackHTTPServer):
    """A loopback HTTP(S) server whose requests are answered by a fake service."""

    def __init__(self, fake, ssl_context=None):
        self.fake = fake
        super().__init__(_FakeHandler, ssl_context)

    def verify_request(self, request, client_address):
        """The fake may drop a connection before reading a byte."""
        return self.fake.accept_connection(request)


# --- what a fake saw, and what it answers --------------------------------------------------------


@dataclass
class Recorded:
    """One request as a fake received it (path includes any query string)."""

    method: str
    path: str
    headers: dict
    body: bytes
    form: dict
    json: object
    query: dict
    scheme: str
    status: int = 0  # of the reply, once sent; 0 for a hang, reset or drip

    @property
    def route(self):
        """The path without its query string."""
        return urlsplit(self.path).path

    @property
    def host(self):
        """The Host header, lower-cased, without a default HTTPS port."""
        return self.headers.get("host", "").lower().removesuffix(":443")


@dataclass
class Reply:
    """A canned HTTP response."""

    status: int
    body: bytes
    headers: dict


def reply(status, body, headers=None):
    """Build a reply: dict/list bodies as JSON, str/bytes as text/plain."""
    if isinstance(body, (dict, list)):
        data, content_type = json.dumps(body).encode(), "application/json"
    elif isinstance(body, str):
        data, content_type = body.encode(), "text/plain; charset=utf-8"
    elif isinstance(body, bytes):
        data, content_type = body, "text/plain"
    else:
        raise TypeError(f"unsupported reply body {body!r}")
    return Reply(status, data, {"Content-Type": content_type, **(headers or {})})


def single_values(multi):
    """Reduce parse_qs output to the first value of each field."""
    return {name: values[0] for name, values in multi.items()}


def media_type(headers):
    """Return the lower-cased media type of a Content-Type header, without parameters."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _json_or_none(text):
    """Parse JSON, or return None if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


class _FakeHandler(BaseHTTPRequestHandler):
    """Records each request on the fake, then sends its scripted or computed reply."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        """Time out idle connections as the fake says."""
        self.timeout = self.server.fake.handler_timeout
        super().setup()

    def version_string(self):
        """Identify as the service being faked."""
        return self.server.fake.server_header

    def log_message(self, *args):
        """Stay quiet: requests are recorded on the fake instead."""

    def do_GET(self):
        """Record and answer a GET."""
        self._dispatch()

    def do_HEAD(self):
        """Record and answer a HEAD."""
        self._dispatch()

    def do_POST(self):
        """Record and answer a POST."""
        self._dispatch()

    def do_PUT(self):
        """Record and answer a PUT."""
        self._dispatch()

    def do_PATCH(self):
        """Record and answer a PATCH."""
        self._dispatch()

    def do_DELETE(self):
        """Record and answer a DELETE."""
        self._dispatch()

    def _dispatch(self):
        fake = self.server.fake
        record = fake.record(self._record(self._read_body()))
        if fake.delay:
            fake.released.wait(fake.delay)
        answer = fake.pop_scripted() or fake.respond(record)
        if answer == HANG:
            fake.released.wait()
            self.close_connection = True
        elif answer == RESET:
            self._reset()
        elif answer == DRIP:
            self._drip(fake.released)
        else:
            record.status = answer.status
            self._send(answer, fake.response_headers, fake.keep_alive)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _record(self, body):
        url = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        text = body.decode("utf-8", "replace")
        kind = media_type(headers)
        return Recorded(
            method=self.command,
            path=self.path,
            headers=headers,
            body=body,
            form=(
                single_values(parse_qs(text, keep_blank_values=True))
                if kind == FORM_URLENCODED
                else {}
            ),
            json=_json_or_none(text) if kind == "application/json" else None,
            query=single_values(parse_qs(url.query, keep_blank_values=True)),
            scheme="https" if self.server.ssl_context is not None else "http",
        )

    def _send(self, answer, extra_headers, keep_alive):
        self.send_response(answer.status)
        headers = {**extra_headers, **answer.headers, "Content-Length": str(len(answer.body))}
        if not keep_alive:
            headers["Connection"] = "close"
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _drip(self, released):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.close_connection = True
        try:
            while not released.wait(0.2):
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            pass

    def _reset(self):
        self.close_connection = True
        abort(self.connection)


def abort(sock):
    """Close a socket with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- the base of every HTTP fake -----------------------------------------------------------------


class FakeService:
    """Shared plumbing of the HTTP fakes: servers, request log, scripted replies, issued tokens."""

    server_header = "Fake"
    token_prefix = "fake"
    keep_alive = False  # answer "Connection: close", so each request is a new connection
    handler_timeout = HANDLER_TIMEOUT

    def __init__(self):
        self.requests: list[Recorded] = []
        self.issued: dict[str, dict] = {}
        self.expires_in = 3599
        self.delay = 0.0  # seconds to wait before answering, to widen races or add latency
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._script = deque()
        self._serial = itertools.count(1)
        self._servers = []
        self._refusals = 0
        self._refuse_until = 0.0

    def refuse_connections(self, count):
        """Reset the next `count` connections at once, as a server that is not up yet."""
        with self._lock:
            self._refusals = count

    def refuse_for(self, seconds):
        """Reset every connection for the next `seconds`, as a starting pod's server does."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds

    def accept_connection(self, sock):
        """Take a new connection, or reset it at once while refusals are pending."""
        with self._lock:
            refuse = self._refusals > 0 or time.monotonic() < self._refuse_until
            self._refusals -= self._refusals > 0
        if refuse:
            abort(sock)
        return not refuse

    def __enter__(self):
        self.serve()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def start(self):
        """Start the plain-HTTP server; return the fake."""
        self.serve()
        return self

    def stop(self):
        """The same as close()."""
        self.close()

    @property
    def port(self):
        """The port of the first server (plain HTTP unless started with a context)."""
        return self._servers[0].port

    @property
    def response_headers(self):
        """Headers added to every response."""
        return {}

    def serve(self, ssl_context=None):
        """Start one more server (HTTPS if given a context) sharing this fake's state."""
        server = _HTTPServer(self, ssl_context).start()
        self._servers.append(server)
        return server

    def close(self):
        """Release hung requests and stop every server."""
        self.released.set()
        for server in self._servers:
            server.stop()

    def record(self, record):
        """Keep a request as received; return what the reply should be computed from."""
        with self._lock:
            self.requests.append(record)
        return record

    def script(self, *responses):
        """Queue replies for the next requests: (status, body[, headers]), "HANG" or "RESET"."""
        replies = [self._scripted(response) for response in responses]
        with self._lock:
            self._script.extend(replies)

    def pop_scripted(self):
        """Take the next scripted reply, or None."""
        with self._lock:
            return self._script.popleft() if self._script else None

    def is_live(self, token):
        """Tell whether this fake issued the token and it has not expired."""
        with self._lock:
            entry = self.issued.get(token)
        return entry is not None and entry["expiry"] > time.time()

    def respond(self, record):
        """Compute the reply to a request."""
        raise NotImplementedError

    def _issue(self, identity, **details):
        with self._lock:
            token = f"ya29.{self.token_prefix}-{next(self._serial)}-{secrets.token_hex(8)}"
            register_secret(token, access_token=True)
            self.issued[token] = {
                "identity": identity,
                "expiry": time.time() + self.expires_in,
                **details,
            }
        return reply(
            200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    @staticmethod
    def _scripted(response):
        if response in (HANG, RESET, DRIP):
            return response
        if isinstance(response, tuple) and len(response) in (2, 3):
            if isinstance(response[1], str) and response[1] in (HANG, RESET, DRIP):
                return response[1]
            return reply(*response)
        raise TypeError(f"a scripted response is (status, body[, headers]), got {response!r}")


# --- the routing CONNECT proxy -------------------------------------------------------------------


class RoutingProxy(LoopbackServer, socketserver.ThreadingTCPServer):
    """An HTTPS CONNECT proxy that tunnels known host names to loopback ports, nothing else."""

    allow_reuse_address = True

    def __init__(self, routes: dict[str, int]):
        self.routes = {host.lower(): port for host, port in routes.items()}
        self.connects: list[str] = []
        self.rejected: list[str] = []
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _TunnelHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self):
        self.stopping.set()
        super().stop()


class _TunnelHandler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        client.settimeout(HANDLER_TIMEOUT)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk or len(head) > 65536:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        target = parts[1] if len(parts) == 3 else request_line
        host, _, port = target.rpartition(":")
        upstream_port = self.server.routes.get(host.lower())
        if parts[0:1] != ["CONNECT"] or port != "443" or upstream_port is None:
            # Anything the tests did not plan for stays here: no route off loopback.
            self.server.rejected.append(target)
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.connects.append(target)
        with socket.create_connection(("127.0.0.1", upstream_port), timeout=HANDLER_TIMEOUT) as up:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                up.sendall(rest)
            self._pipe(client, up)

    def _pipe(self, client, upstream):
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while not self.server.stopping.is_set():
                for key, _ in selector.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    peers[key.fileobj].sendall(data)


# --- ports that never answer -------------------------------------------------------------------


def refused_port():
    """Return a loopback port that was bound and closed, so connecting to it fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Listener:
    """A loopback port that accepts connections, counts them and never answers a byte.

    hold=True keeps each connection open (a black-holed address: the client waits for its
    timeout); hold=False closes it at once (a proxy that any use of is a leak).
    """

    def __init__(self, hold=True):
        self.hold = hold
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)  # a blocked accept() would not see the socket close
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        return self._sock.getsockname()[1]

    @property
    def url(self):
        """http://127.0.0.1:PORT, for proxy variables."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            if self.hold:
                self._held.append(conn)
            else:
                conn.close()

    def stop(self):
        """Close the port and every held connection."""
        self._stopping.set()
        self._thread.join(JOIN_TIMEOUT)
        self._sock.close()
        for conn in self._held:
            conn.close()

    close = stop


# --- the test certificate authority --------------------------------------------------------------


def new_ca():
    """A throwaway certificate authority (trustme)."""
    import trustme

    return trustme.CA()


def write_ca_file(ca, path):
    """Write the CA's certificate as PEM to `path`; return the path."""
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca, hosts):
    """A server TLS context with a certificate of `ca` for every name in `hosts`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


def mutual_tls_server_context(ca, hosts):
    """``server_context`` that also refuses any client without a certificate issued by `ca`."""
    context = server_context(ca, hosts)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    return context
