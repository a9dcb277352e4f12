"""Test support: a fake Artifact Registry Python repository on loopback HTTPS, for real clients.

One TLS server answers for several host names (a test-CA certificate covers them all);
clients reach it through `RoutingProxy`, an HTTPS CONNECT proxy that tunnels only the
names it knows to that server and refuses every other target. Artifact Registry hosts
(`*.pkg.dev`) demand Basic `oauth2accesstoken:<live token from the fake Google>`; other
hosts are open mirrors. Every request is recorded with the credentials it carried.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import html
import re
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

USERNAME = "oauth2accesstoken"
HANDLER_TIMEOUT = 30.0
JOIN_TIMEOUT = 5.0
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- wheels ------------------------------------------------------------------------------------


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    requires: tuple[str, ...] = (),
    source: str | None = None,
    console_scripts: tuple[str, ...] = (),  # "name = module:function", as pipx needs
) -> Path:
    """Write a pure-Python wheel with one module named after the project; return its path."""
    module = normalize(name).replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    source = source or (f"VERSION = {version!r}\n\n\ndef hello():\n    return {name!r}\n")
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            f"Summary: {name}, a package served by the fake Artifact Registry\n",
            *(f"Requires-Dist: {requirement}\n" for requirement in requires),
        ]
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: fake_registry\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
    }
    if console_scripts:
        entry_points = "[console_scripts]\n" + "".join(f"{e}\n" for e in console_scripts)
        files[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = [f"{path},sha256={_record_hash(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = Path(directory) / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name_in_zip, data in files.items():
            archive.writestr(name_in_zip, data)
    return path


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# --- repositories ------------------------------------------------------------------------------


@dataclass
class Distribution:
    """One file in a repository."""

    filename: str
    data: bytes

    @property
    def project(self) -> str:
        match = _WHEEL_NAME.match(self.filename)
        if match is None:
            raise ValueError(f"not a wheel file name: {self.filename}")
        return normalize(match["name"])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Repository:
    """A PEP 503 simple repository: project name -> its files."""

    projects: dict[str, dict[str, Distribution]] = field(default_factory=dict)

    def add(self, filename: str, data: bytes) -> Distribution:
        """Store a file, replacing one of the same name."""
        distribution = Distribution(filename, data)
        self.projects.setdefault(distribution.project, {})[filename] = distribution
        return distribution

    def add_file(self, path: Path) -> Distribution:
        """Store a file from disk."""
        return self.add(Path(path).name, Path(path).read_bytes())

    def find(self, filename: str) -> Distribution | None:
        """The file of this name, in any project."""
        for files in self.projects.values():
            if filename in files:
                return files[filename]
        return None


# --- what the server saw -----------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryRequest:
    """One request as a fake host received it; the password itself is not kept."""

    host: str
    method: str
    path: str
    username: str | None
    password: str  # "none", "live" (a live fake-Google token) or "other"
    carried_google_token: bool  # any token the fake Google issued, anywhere in the request
    status: int

    @property
    def authenticated(self) -> bool:
        return self.username == USERNAME and self.password == "live"


@dataclass
class Upload:
    """A file received on the legacy upload endpoint."""

    host: str
    repository: str
    filename: str
    fields: dict


# --- the fake Artifact Registry ----------------------------------------------------------------


class FakeRegistry:
    """Artifact Registry Python repositories and open mirrors, by host name, over HTTPS."""

    def __init__(self, tls_context: ssl.SSLContext, google) -> None:
        self.google = google  # conftest.FakeGoogle: issues and knows the live tokens
        self.registries: dict[str, dict[str, Repository]] = {}  # host -> "proj/repo" -> repo
        self.mirrors: dict[str, Repository] = {}  # host -> repository at /simple/
        self.requests: list[RegistryRequest] = []
        self.uploads: list[Upload] = []
        self._lock = threading.Lock()
        self._server = _TLSServer(self, tls_context)

    # configuration

    def repository(self, host: str, path: str) -> Repository:
        """The Artifact Registry repository at https://HOST/PROJECT/REPO/ (made if new)."""
        return self.registries.setdefault(host, {}).setdefault(path.strip("/"), Repository())

    def mirror(self, host: str) -> Repository:
        """The open mirror whose index is https://HOST/simple/ (made if new)."""
        return self.mirrors.setdefault(host, Repository())

    @property
    def hosts(self) -> list[str]:
        return [*self.registries, *self.mirrors]

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> FakeRegistry:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    # what was seen

    def requests_to(self, host: str) -> list[RegistryRequest]:
        with self._lock:
            return [request for request in self.requests if request.host == host]

    def served_files(self, host: str) -> list[str]:
        """Names of the files downloaded from a host (status 200), in order."""
        return [
            request.path.rsplit("/", 1)[-1]
            for request in self.requests_to(host)
            if request.status == 200 and request.method == "GET" and "/files/" in request.path
        ]

    # answering

    def answer(self, handler: _RegistryHandler, body: bytes) -> tuple[int, dict, bytes]:
        host = handler.headers.get("Host", "").lower().rsplit(":443", 1)[0]
        path = urlsplit(handler.path).path
        username, password = _basic_auth(handler.headers.get("Authorization", ""))
        password_state = "none" if not password else "other"
        if password and self.google is not None and self.google.is_live(password):
            password_state = "live"
        carried = self._carries_google_token(handler, body)
        if host in self.registries:
            status, headers, reply = self._registry(host, handler.command, path, handler, body)
            if not (username == USERNAME and password_state == "live"):
                status, headers, reply = _unauthorized()
        elif host in self.mirrors:
            status, headers, reply = self._mirror(host, handler.command, path)
        else:
            status, headers, reply = 421, {}, f"no such host here: {host}\n".encode()
        record = RegistryRequest(
            host, handler.command, path, username, password_state, carried, status
        )
        with self._lock:
            self.requests.append(record)
        return status, headers, reply

    def _carries_google_token(self, handler, body: bytes) -> bool:
        if self.google is None:
            return False
        raw = unquote(handler.path) + "\n" + str(handler.headers)
        tokens = list(self.google.issued)
        return any(token in raw or token.encode() in body for token in tokens)

    def _registry(self, host, method, path, handler, body):
        repos = self.registries[host]
        for name, repository in repos.items():
            prefix = f"/{name}"
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix) :]
                if method == "POST" and rest in ("", "/"):
                    return self._upload(host, name, repository, handler, body)
                if method in ("GET", "HEAD"):
                    return _serve_index(repository, rest)
                return 405, {}, b"method not allowed\n"
        return 404, {}, b"no such repository\n"

    def _mirror(self, host, method, path):
        if method not in ("GET", "HEAD"):
            return 405, {}, b"method not allowed\n"
        return _serve_index(self.mirrors[host], path)

    def _upload(self, host, name, repository, handler, body):
        fields, files = _parse_multipart(handler.headers.get("Content-Type", ""), body)
        if fields.get(":action") != "file_upload" or "content" not in files:
            return 400, {}, b"expected a legacy file_upload with a content file\n"
        filename, data = files["content"]
        if (
            fields.get("sha256_digest")
            and fields["sha256_digest"] != hashlib.sha256(data).hexdigest()
        ):
            return 400, {}, b"sha256_digest does not match the file\n"
        try:
            distribution = repository.add(filename, data)
        except ValueError:
            return 400, {}, b"not a wheel\n"
        if normalize(fields.get("name", "")) != distribution.project:
            return 400, {}, b"the name field does not match the file\n"
        with self._lock:
            self.uploads.append(Upload(host, name, filename, fields))
        return 200, {}, b"OK\n"


def _unauthorized():
    headers = {"WWW-Authenticate": 'Basic realm="Artifact Registry"'}
    return 401, headers, b"Unauthenticated: oauth2accesstoken and a live token required\n"


def _basic_auth(header: str) -> tuple[str | None, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None, ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    username, _, password = decoded.partition(":")
    return username, password


def _serve_index(repository: Repository, rest: str) -> tuple[int, dict, bytes]:
    """Answer /simple/, /simple/NAME/ and /files/FILENAME below a repository root."""
    html_type = {"Content-Type": "text/html; charset=utf-8"}
    if rest == "/simple/":
        links = "".join(f'<a href="{name}/">{name}</a>\n' for name in sorted(repository.projects))
        return 200, html_type, _page("Simple index", links)
    match = re.fullmatch(r"/simple/([^/]+)/?", rest)
    if match:
        name = match[1]
        if normalize(name) != name or not rest.endswith("/"):
            return 301, {"Location": f"../{normalize(name)}/"}, b""
        files = repository.projects.get(name)
        if not files:
            return 404, {}, b"not found\n"
        links = "".join(
            f'<a href="../../files/{html.escape(d.filename)}#sha256={d.sha256}">'
            f"{html.escape(d.filename)}</a>\n"
            for d in files.values()
        )
        return 200, html_type, _page(f"Links for {name}", links)
    match = re.fullmatch(r"/files/([^/]+)", rest)
    if match:
        distribution = repository.find(unquote(match[1]))
        if distribution is None:
            return 404, {}, b"not found\n"
        return 200, {"Content-Type": "application/octet-stream"}, distribution.data
    return 404, {}, b"not found\n"


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><meta name='pypi:repository-version' content='1.0'>"
        f"<title>{title}</title></head><body>\n{body}</body></html>\n"
    ).encode()


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict, dict]:
    """Fields and files of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields, files = {}, {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, files


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


class _TLSServer(LoopbackHTTPServer):
    def __init__(self, registry: FakeRegistry, context: ssl.SSLContext):
        self.registry = registry
        super().__init__(_RegistryHandler, context)


class _RegistryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of a real registry
    timeout = HANDLER_TIMEOUT
    server_version = "FakeArtifactRegistry"
    sys_version = ""

    def log_message(self, *args):
        """Requests are recorded on the registry instead."""

    def _dispatch(self):
        length = int(self.headers.get("Content-Length") or 0)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
        else:
            body = self.rfile.read(length)
        status, headers, reply = self.server.registry.answer(self, body)
        self.send_response(status)
        headers = {"Content-Length": str(len(reply)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    def _read_chunked(self):
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()


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
