"""Fake Google endpoints on loopback for the bench: standard library only.

A token endpoint that checks RS256 assertions and counts fetches, a PEP 503 index over
HTTPS that demands ``oauth2accesstoken:<live token>``, a CONNECT proxy that reaches it
under its ``*.pkg.dev`` name, a port that accepts and never answers, a fake ``gcloud``
and tiny wheels.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import socket
import struct
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

# The CONNECT proxy and server plumbing are the project's own test support (stdlib only).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fake_registry import LoopbackHTTPServer, RoutingProxy

TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
USERNAME = "oauth2accesstoken"
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
HANDLER_TIMEOUT = 10.0


# --- servers ------------------------------------------------------------------------------


class _Server(LoopbackHTTPServer):
    """A loopback HTTP(S) server whose handler asks ``fake.respond`` for each request."""

    def __init__(self, fake, handler, ssl_context=None):
        self.fake = fake
        super().__init__(handler, ssl_context)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_TIMEOUT

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, content_type, payload, extra = self.server.fake.respond(
            self.command, self.path, headers, body
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def _json_reply(status, data, extra=None):
    return status, "application/json", json.dumps(data).encode(), extra or {}


# --- token endpoint -------------------------------------------------------------------------


def verify_rs256(n: int, e: int, signing_input: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 / SHA-256 verification (RFC 8017 8.2.2) with the public key."""
    size = (n.bit_length() + 7) // 8
    if len(signature) != size:
        return False
    encoded = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input).digest()
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return hmac.compare_digest(encoded, expected)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenEndpoint:
    """Google's OAuth2 token endpoint for one service account, answering after ``latency``."""

    def __init__(self, email: str, n: int, e: int, latency: float) -> None:
        self.email, self.n, self.e, self.latency = email, n, e, latency
        self.fetches = 0
        self.rejected: list[str] = []
        self._issued: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = _Server(self, _Handler).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/token"

    def stop(self) -> None:
        self._server.stop()

    def is_live(self, token: str) -> bool:
        with self._lock:
            return self._issued.get(token, 0.0) > time.time()

    def respond(self, method, path, headers, body):
        if method != "POST" or path != "/token":
            return _json_reply(404, {"error": "not_found"})
        form = {k: v[0] for k, v in parse_qs(body.decode("ascii", "replace")).items()}
        problem = self._check(form)
        if problem:
            with self._lock:
                self.rejected.append(problem)
            return _json_reply(400, {"error": "invalid_grant", "error_description": problem})
        time.sleep(self.latency)
        token = f"ya29.bench-{secrets.token_hex(16)}"
        with self._lock:
            self._issued[token] = time.time() + 3599
            self.fetches += 1
        return _json_reply(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _check(self, form: dict) -> str:
        if form.get("grant_type") != JWT_BEARER:
            return f"grant_type {form.get('grant_type')!r} is not the JWT bearer grant"
        try:
            head, claims_part, signature = form.get("assertion", "").split(".")
            claims = json.loads(_b64url_decode(claims_part))
            signed = verify_rs256(
                self.n, self.e, f"{head}.{claims_part}".encode("ascii"), _b64url_decode(signature)
            )
        except ValueError:
            return "assertion is not a JWT"
        if not signed:
            return "assertion signature does not verify"
        if claims.get("iss") != self.email or claims.get("aud") != TOKEN_AUDIENCE:
            return f"unexpected iss/aud {claims.get('iss')!r}/{claims.get('aud')!r}"
        if claims.get("scope") != CLOUD_PLATFORM:
            return f"unexpected scope {claims.get('scope')!r}"
        return ""


# --- PEP 503 index --------------------------------------------------------------------------


class PackageIndex:
    """An Artifact Registry-like simple index at https://HOST/PROJECT/REPO/simple/."""

    def __init__(self, host, prefix, wheels, is_live, ssl_context) -> None:
        self.host, self.prefix, self.is_live = host, prefix.rstrip("/"), is_live
        self.wheels = wheels  # project name -> (file name, bytes)
        self.requests = 0
        self.unauthorized = 0
        self._lock = threading.Lock()
        self._server = _Server(self, _Handler, ssl_context).start()

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def index_url(self) -> str:
        return f"https://{self.host}{self.prefix}/simple/"

    def stop(self) -> None:
        self._server.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests, self.unauthorized = 0, 0

    def respond(self, method, path, headers, body):
        with self._lock:
            self.requests += 1
        token = self._token(headers.get("authorization", ""))
        if token is None or not self.is_live(token):
            with self._lock:
                self.unauthorized += 1
            return (
                401,
                "text/plain",
                b"Unauthenticated",
                {"WWW-Authenticate": f'Basic realm="{self.host}"'},
            )
        if headers.get("host", "").split(":")[0] != self.host or not path.startswith(self.prefix):
            return 404, "text/plain", b"not here", {}
        route = path[len(self.prefix) :].split("?")[0]
        if route == "/simple/":
            links = "".join(f'<a href="{name}/">{name}</a>\n' for name in sorted(self.wheels))
            return 200, "text/html", _page(links), {}
        if route.startswith("/simple/") and route.count("/") == 3:
            name = route.split("/")[2]
            if name in self.wheels:
                filename, data = self.wheels[name]
                digest = hashlib.sha256(data).hexdigest()
                href = f"{self.prefix}/packages/{filename}#sha256={digest}"
                return 200, "text/html", _page(f'<a href="{href}">{filename}</a>\n'), {}
        if route.startswith("/packages/"):
            wanted = route.split("/")[2]
            for filename, data in self.wheels.values():
                if filename == wanted:
                    return 200, "application/octet-stream", data, {}
        return 404, "text/plain", b"no such project", {}

    @staticmethod
    def _token(authorization: str) -> str | None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
        except ValueError:
            return None
        return password if user == USERNAME and password else None


def _page(links: str) -> bytes:
    return f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()


def build_wheel(
    name: str, version: str, files: dict, requires=(), entry_points: str = ""
) -> tuple[str, bytes]:
    """A pure-Python wheel (file name, bytes) holding ``files`` (path -> text)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    contents = dict(files)
    contents[f"{info}/METADATA"] = metadata
    contents[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if entry_points:
        contents[f"{info}/entry_points.txt"] = entry_points
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, text in contents.items():
            data = text.encode("utf-8")
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def index_wheels(count: int) -> dict:
    """``bench-app`` depending on ``count - 1`` small libraries, as wheels by project name."""
    libs = [f"bench-lib-{i}" for i in range(1, count)]
    wheels = {}
    for name in libs:
        module = name.replace("-", "_")
        wheels[name] = build_wheel(name, "1.0", {f"{module}/__init__.py": f"NAME = {name!r}\n"})
    wheels["bench-app"] = build_wheel(
        "bench-app", "1.0", {"bench_app/__init__.py": "import bench_lib_1\n"}, requires=libs
    )
    return wheels


# --- CONNECT proxy: the project's test support, *.pkg.dev names to the fake index -------------


def connect_proxy(host: str, port: int):
    """A loopback CONNECT proxy tunnelling ``host:443`` to ``port`` and refusing the rest."""
    return RoutingProxy({host: port}).start()


# --- ports that refuse, and one that never answers -------------------------------------------


def refused_port() -> int:
    """A loopback port that was bound and closed: connecting fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SilentPort:
    """Accepts connections on loopback and never answers (a metadata address that hangs)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def _accept(self):
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self._held.append(conn)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._held:
            conn.close()


POD_ACCOUNT = "pod-sa@bench-project.iam.gserviceaccount.com"


class StartingMetadata:
    """A GCE metadata server that resets every connection for ``refuse_for`` seconds after
    ``begin()``, as a new GKE pod's does, then answers the ping, identity and token."""

    def __init__(self, refuse_for: float) -> None:
        self.refuse_for = refuse_for
        self.opens_at = 0.0
        self.issued: set = set()
        self._server = _StartingServer(self, _Handler).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    def begin(self) -> None:
        self.opens_at = time.monotonic() + self.refuse_for

    def refuses(self) -> bool:
        return time.monotonic() < self.opens_at

    def stop(self) -> None:
        self._server.stop()

    def is_live(self, token: str) -> bool:
        return token in self.issued

    def respond(self, method, path, headers, body):
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            return 403, "text/plain", b"Missing Metadata-Flavor:Google header.", flavor
        base = "/computeMetadata/v1/instance/"
        if path == "/":
            return 200, "text/plain", b"computeMetadata/\n", flavor
        if path == base + "service-accounts/default/email":
            return 200, "text/plain", POD_ACCOUNT.encode(), flavor
        if path == base + "id":
            return 200, "text/plain", b"4242424242", flavor
        if path == base + "service-accounts/default/?recursive=true":  # google-auth asks this
            info = {"aliases": ["default"], "email": POD_ACCOUNT}
            return _json_reply(200, {**info, "scopes": [CLOUD_PLATFORM]}, flavor)
        if path == "/computeMetadata/v1/project/project-id":
            return 200, "text/plain", b"bench-project", flavor
        if path.startswith(base + "service-accounts/default/token"):
            token = "ya29.bench-metadata-" + secrets.token_hex(8)
            self.issued.add(token)
            return _json_reply(200, {"access_token": token, "expires_in": 3599}, flavor)
        return 404, "text/plain", b"not found", flavor


class _StartingServer(_Server):
    def verify_request(self, request, client_address):
        if self.fake.refuses():  # reset at once, as a port nobody listens on yet
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close()
            return False
        return True


# --- fake gcloud and the do-nothing keyring backend ----------------------------------------

_GCLOUD = """\
#!{python}
# Fake gcloud for the bench: starts in about {delay} s, then answers config-helper.
import json, os, secrets, sys, time

time.sleep({delay})
argv = sys.argv[1:]
fmt = [a for a in argv if a.startswith("--format=")]
if argv[:2] != ["config", "config-helper"] or not fmt or not fmt[0].startswith("--format=json"):
    sys.stderr.write("ERROR: (gcloud) the bench's fake gcloud only runs config-helper\\n")
    sys.exit(2)
token = "ya29.bench-gcloud-" + secrets.token_hex(12)
fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, (token + "\\n").encode())
os.close(fd)
expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3599))
config_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
answer = {{
    "configuration": {{
        "active_configuration": "default",
        "properties": {{"core": {{"account": "dev@example.com", "project": "bench-project"}}}},
    }},
    "credential": {{"access_token": token, "id_token": None, "token_expiry": expiry}},
    "sentinels": {{"config_sentinel": os.path.join(config_dir, "config_sentinel")}},
}}
if fmt[0] == "--format=json(credential)":
    answer = {{"credential": answer["credential"]}}
print(json.dumps(answer, indent=2))
"""


def gcloud_script(python: str, log: str, delay: float) -> str:
    """Text of a fake ``gcloud`` that sleeps ``delay`` s and logs each token it prints."""
    return _GCLOUD.format(python=python, log=log, delay=delay)


FLOOR_TOKEN = "ya29.bench-constant"
FLOOR_MODULE = f'''\
"""A keyring backend that answers a constant: what keyring costs on its own."""

from keyring.backend import KeyringBackend


class ConstantBackend(KeyringBackend):
    priority = 9

    def get_password(self, service, username):
        return {FLOOR_TOKEN!r}

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError
'''


def floor_backend_wheel() -> tuple[str, bytes]:
    return build_wheel(
        "bench-floor-backend",
        "1.0",
        {"bench_floor_backend.py": FLOOR_MODULE},
        entry_points="[keyring.backends]\nbench-floor = bench_floor_backend\n",
    )
