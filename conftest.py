"""Test support: an isolated environment and strict, recording fakes of Google's auth services."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import trustme
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fake_registry import LoopbackHTTPServer, RoutingProxy

OAUTH_HOST = "oauth2.googleapis.com"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM_URLENCODED = "application/x-www-form-urlencoded"
GOOGLE_HOSTS = ("oauth2.googleapis.com", "sts.googleapis.com", "iamcredentials.googleapis.com")
TLS_HOSTS = (
    *GOOGLE_HOSTS,
    "us-python.pkg.dev",
    "europe-west1-python.pkg.dev",
    "127.0.0.1",
    "localhost",
)
HANG = "HANG"
RESET = "RESET"
DRIP = "DRIP"  # headers at once, then the body one byte at a time, never finishing
JOIN_TIMEOUT = 5.0
HANDLER_TIMEOUT = 10.0


# --- Isolated environment and network guard -------------------------------------------------

_REMOVED_VARS = frozenset(
    {
        "GCLOUD_PROJECT",
        "NO_GCE_CHECK",
        "PYTHON_KEYRING_BACKEND",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "DBUS_SESSION_BUS_ADDRESS",
    }
)
_REMOVED_PREFIXES = (
    "GOOGLE_",
    "GCE_METADATA_",
    "CLOUDSDK_",
    "ARTIFACTREGISTRY_GAUTH_",
    "KEYRING_PROPERTY_",
    "AWS_",
)
_PROXY_VARS = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


@dataclass(frozen=True)
class IsolatedEnv:
    """Where the throwaway environment of one test lives."""

    home: Path
    bin_dir: Path
    cache_dir: Path
    gcloud_config: Path
    dead_metadata_host: str


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Run each test with a throwaway HOME, no ambient credentials and no route off loopback."""
    for name in list(os.environ):
        if (
            name in _REMOVED_VARS
            or name.startswith(_REMOVED_PREFIXES)
            or name.lower() in _PROXY_VARS
        ):
            monkeypatch.delenv(name)

    home = tmp_path / "home"
    bin_dir = tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    env = IsolatedEnv(
        home=home,
        bin_dir=bin_dir,
        cache_dir=tmp_path / "cache",
        gcloud_config=home / ".config" / "gcloud",
        dead_metadata_host=f"127.0.0.1:{_refused_port()}",
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(env.gcloud_config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("APPDATA", str(home / "AppData" / "Roaming"))
    monkeypatch.setenv("LOCALAPPDATA", str(home / "AppData" / "Local"))
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_CACHE_DIR", str(env.cache_dir))
    monkeypatch.setenv("GCE_METADATA_HOST", env.dead_metadata_host)
    monkeypatch.setenv("GCE_METADATA_IP", env.dead_metadata_host)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), *_path_without_gcloud()]))
    # urlopen() caches an opener, and with it the proxy settings of the first test that used it.
    monkeypatch.setattr(urllib.request, "_opener", None)
    _install_network_guard(monkeypatch)

    _forget_tokens()
    yield env
    _forget_tokens()


@pytest.fixture
def bin_dir(isolated_env):
    """The empty directory at the front of PATH where fake executables go."""
    return isolated_env.bin_dir


@pytest.fixture
def home_dir(isolated_env):
    """The test's HOME."""
    return isolated_env.home


def _refused_port():
    """Return a loopback port that was bound and closed, so connecting to it fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _path_without_gcloud():
    """Return the PATH entries that do not hold a real gcloud."""
    return [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry, "gcloud").exists() or Path(entry, "gcloud.cmd").exists())
    ]


def _forget_tokens():
    """Clear the module's in-process token cache, if the module exists yet."""
    try:
        import artifactregistry_gauth
    except ModuleNotFoundError as exc:
        if exc.name != "artifactregistry_gauth":
            raise
        return
    forget = getattr(artifactregistry_gauth, "_forget_tokens", None)
    if forget is not None:
        forget()


# --- Secrets that must never show in an error or a log line ----------------------------------

SECRETS: set = set()


def register_secret(*values):
    """Remember credential material the fakes hand out or the tests write into files."""
    SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= 8)


def _leaked(text):
    return sorted(secret for secret in SECRETS if secret in text)


class _SecretScan(logging.Handler):
    """Collects every log line of the module, to scan for secrets after the test."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(autouse=True)
def secrets_never_leak(monkeypatch):
    """Every CredentialError and every log line of every test is scanned for known secrets.

    The module logs at debug level throughout, so debug paths are scanned too.
    """
    try:
        import artifactregistry_gauth as gauth
    except ModuleNotFoundError:
        yield
        return
    original = gauth.CredentialError.__init__

    def checked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        leaked = _leaked(str(self))
        assert not leaked, f"a CredentialError carries a secret ({len(leaked)} found)"

    monkeypatch.setattr(gauth.CredentialError, "__init__", checked)
    logger = logging.getLogger("artifactregistry_gauth")
    scan, level = _SecretScan(), logger.level
    logger.addHandler(scan)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(scan)
        logger.setLevel(level)
    leaked = _leaked("\n".join(scan.lines))
    assert not leaked, f"a log line carries a secret ({len(leaked)} found)"


def _is_loopback(host):
    """Tell whether a host (name or literal) is guaranteed to stay on this machine."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _install_network_guard(monkeypatch):
    """Make connecting to, or resolving, anything but loopback fail inside this process."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    real_gethostbyname = socket.gethostbyname
    real_gethostbyname_ex = socket.gethostbyname_ex

    def check_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise OSError(f"test network guard: refusing to connect to {address[0]}:{address[1]}")

    def check_resolve(host):
        if host is not None and not _is_loopback(host):
            raise socket.gaierror(
                socket.EAI_NONAME, f"test network guard: refusing to resolve {host!r}"
            )

    def connect(self, address):
        check_connect(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check_connect(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        check_resolve(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        check_resolve(host)
        return real_gethostbyname(host)

    def gethostbyname_ex(host):
        check_resolve(host)
        return real_gethostbyname_ex(host)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    monkeypatch.setattr(socket, "gethostbyname_ex", gethostbyname_ex)


# --- Threaded servers --------------------------------------------------------------------------


class _HTTPServer(LoopbackHTTPServer):
    """A loopback HTTP(S) server whose requests are answered by a fake service."""

    def __init__(self, fake, ssl_context=None):
        self.fake = fake
        super().__init__(_FakeHandler, ssl_context)

    def verify_request(self, request, client_address):
        """The fake may drop a connection before reading a byte."""
        return self.fake.accept_connection(request)


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

    @property
    def route(self):
        """The path without its query string."""
        return urlsplit(self.path).path


@dataclass
class _Reply:
    """A canned HTTP response."""

    status: int
    body: bytes
    headers: dict


def _reply(status, body, headers=None):
    """Build a reply: dict/list bodies as JSON, str/bytes as text/plain."""
    if isinstance(body, (dict, list)):
        data, content_type = json.dumps(body).encode(), "application/json"
    elif isinstance(body, str):
        data, content_type = body.encode(), "text/plain; charset=utf-8"
    elif isinstance(body, bytes):
        data, content_type = body, "text/plain"
    else:
        raise TypeError(f"unsupported reply body {body!r}")
    return _Reply(status, data, {"Content-Type": content_type, **(headers or {})})


def _oauth_error(status, error, description):
    """Build an OAuth2 error reply."""
    return _reply(status, {"error": error, "error_description": description})


def _single_values(multi):
    """Reduce parse_qs output to the first value of each field."""
    return {name: values[0] for name, values in multi.items()}


def _media_type(headers):
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
    timeout = HANDLER_TIMEOUT

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
        record = self._record(self._read_body())
        fake.requests.append(record)
        if fake.delay:
            fake.released.wait(fake.delay)
        reply = fake.pop_scripted() or fake.respond(record)
        if reply == HANG:
            fake.released.wait()
            self.close_connection = True
        elif reply == RESET:
            self._reset()
        elif reply == DRIP:
            self._drip(fake.released)
        else:
            self._send(reply, fake.response_headers)

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
        media_type = _media_type(headers)
        return Recorded(
            method=self.command,
            path=self.path,
            headers=headers,
            body=body,
            form=(
                _single_values(parse_qs(text, keep_blank_values=True))
                if media_type == FORM_URLENCODED
                else {}
            ),
            json=_json_or_none(text) if media_type == "application/json" else None,
            query=_single_values(parse_qs(url.query, keep_blank_values=True)),
            scheme="https" if self.server.ssl_context is not None else "http",
        )

    def _send(self, reply, extra_headers):
        self.send_response(reply.status)
        headers = {**extra_headers, **reply.headers}
        headers.update({"Content-Length": str(len(reply.body)), "Connection": "close"})
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

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
        _abort(self.connection)


def _abort(sock):
    """Close a socket with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _FakeService:
    """Shared plumbing of the HTTP fakes: servers, request log, scripted replies, issued tokens."""

    server_header = "Fake"
    token_prefix = "fake"

    def __init__(self):
        self.requests: list[Recorded] = []
        self.issued: dict[str, dict] = {}
        self.expires_in = 3599
        self.delay = 0.0  # seconds to wait before answering, to widen races
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._script = deque()
        self._serial = itertools.count(1)
        self._servers = []
        self._refusals = 0

    def refuse_connections(self, count):
        """Reset the next `count` connections at once, as a server that is not up yet."""
        with self._lock:
            self._refusals = count

    def accept_connection(self, sock):
        """Take a new connection, or reset it at once while refusals are pending."""
        with self._lock:
            refuse = self._refusals > 0
            self._refusals -= refuse
        if refuse:
            _abort(sock)
        return not refuse

    def __enter__(self):
        self.serve()
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def port(self):
        """The port of the plain-HTTP server."""
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
            register_secret(token)
            self.issued[token] = {
                "identity": identity,
                "expiry": time.time() + self.expires_in,
                **details,
            }
        return _reply(
            200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    @staticmethod
    def _scripted(response):
        if response in (HANG, RESET, DRIP):
            return response
        if isinstance(response, tuple) and len(response) in (2, 3):
            if isinstance(response[1], str) and response[1] in (HANG, RESET, DRIP):
                return response[1]
            return _reply(*response)
        raise TypeError(f"a scripted response is (status, body[, headers]), got {response!r}")


# --- Fake Google OAuth2 token endpoint ---------------------------------------------------------


class _InvalidGrantError(Exception):
    """An assertion check failed; the message says which."""


@dataclass(frozen=True)
class _User:
    client_id: str
    client_secret: str
    account: str


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_JWT_HEADER = {"typ": "JWT", "alg": "RS256"}
_JWT_CLAIMS = frozenset({"iat", "exp", "iss", "aud", "scope"})
_REFRESH_FIELDS = frozenset({"grant_type", "client_id", "client_secret", "refresh_token", "rapt"})


class FakeGoogle(_FakeService):
    """Google's OAuth2 token endpoint, strict about every grant it accepts."""

    server_header = "ESF"

    def __init__(self):
        super().__init__()
        self.expected_scope = CLOUD_PLATFORM
        self.service_accounts: dict[str, tuple] = {}
        self.users: dict[str, _User] = {}

    @property
    def token_url(self):
        """The plain-HTTP token endpoint URL."""
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def token_requests(self):
        """The recorded requests for /token."""
        return [record for record in self.requests if record.path.startswith("/token")]

    def add_service_account(self, email, public_key, kid=None):
        """Accept JWTs from `email` signed by `public_key`, with header kid `kid` (or none)."""
        self.service_accounts[email] = (public_key, kid)

    def add_user(self, client_id, client_secret, refresh_token, account="user@example.com"):
        """Accept `refresh_token` from the OAuth client (client_id, client_secret)."""
        self.users[refresh_token] = _User(client_id, client_secret, account)

    def respond(self, record):
        """Answer token requests; anything else is a 404."""
        host = record.headers.get("host", "").lower().removesuffix(":443")
        if record.scheme == "https" and host != OAUTH_HOST:
            return _reply(404, f"fake google serves only {OAUTH_HOST} over TLS, not {host!r}")
        if record.route != "/token":
            return _reply(404, f"fake google has nothing at {record.route}")
        if record.method != "POST":
            return _oauth_error(405, "invalid_request", f"{record.method} is not allowed")
        if record.query:
            return _oauth_error(400, "invalid_request", "the token endpoint takes no query")
        if _media_type(record.headers) != FORM_URLENCODED:
            return _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_URLENCODED}")
        try:
            fields = parse_qs(record.body.decode(), keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return _oauth_error(400, "invalid_request", "malformed form body")
        repeated = sorted(name for name, values in fields.items() if len(values) > 1)
        if repeated:
            return _oauth_error(400, "invalid_request", f"repeated parameters {repeated}")
        form = _single_values(fields)
        grant_type = form.get("grant_type")
        if grant_type == JWT_BEARER:
            return self._jwt_bearer_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_token_grant(form)
        return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _jwt_bearer_grant(self, form):
        unexpected = sorted(set(form) - {"grant_type", "assertion"})
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        try:
            email = self._check_assertion(form.get("assertion", ""))
        except _InvalidGrantError as exc:
            return _oauth_error(400, "invalid_grant", str(exc))
        return self._issue(email)

    def _check_assertion(self, assertion):
        segments = assertion.split(".")
        if len(segments) != 3:
            raise _InvalidGrantError("assertion is not three dot-separated segments")
        header = _decode_segment(segments[0], "header")
        claims = _decode_segment(segments[1], "claims")
        signature = _base64url_decode(segments[2], "signature")
        if {key: value for key, value in header.items() if key != "kid"} != _JWT_HEADER:
            raise _InvalidGrantError(
                f"header must be {_JWT_HEADER} plus optional kid, got {header}"
            )
        if set(claims) != _JWT_CLAIMS:
            raise _InvalidGrantError(
                f"claims must be exactly {sorted(_JWT_CLAIMS)}, got {sorted(claims)}"
            )
        email = claims["iss"]
        if not isinstance(email, str) or email not in self.service_accounts:
            raise _InvalidGrantError(f"iss {email!r} is not a registered service account")
        public_key, kid = self.service_accounts[email]
        if kid is None and "kid" in header:
            raise _InvalidGrantError("header has a kid but the key was registered without one")
        if "kid" in header and header["kid"] != kid:
            raise _InvalidGrantError(f"header kid {header['kid']!r} is not the registered {kid!r}")
        signed = f"{segments[0]}.{segments[1]}".encode("ascii")
        try:
            public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise _InvalidGrantError(
                "RS256 signature does not verify with the registered key"
            ) from None
        if claims["aud"] != TOKEN_AUDIENCE:
            raise _InvalidGrantError(f"aud must be {TOKEN_AUDIENCE!r}, got {claims['aud']!r}")
        if claims["scope"] != self.expected_scope:
            raise _InvalidGrantError(
                f"scope must be {self.expected_scope!r}, got {claims['scope']!r}"
            )
        iat, exp = claims["iat"], claims["exp"]
        if type(iat) is not int or type(exp) is not int:
            raise _InvalidGrantError(f"iat and exp must be integers, got {iat!r} and {exp!r}")
        if exp - iat != 3600:
            raise _InvalidGrantError(f"exp - iat must be 3600, got {exp - iat}")
        if abs(iat - time.time()) > 300:
            raise _InvalidGrantError(f"iat {iat} is more than 300 s from now")
        return email

    def _refresh_token_grant(self, form):
        if "scope" in form:
            return _oauth_error(400, "invalid_request", "a refresh_token grant must not send scope")
        unexpected = sorted(set(form) - _REFRESH_FIELDS)
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        for name in ("client_id", "client_secret", "refresh_token"):
            if not form.get(name):
                return _oauth_error(400, "invalid_request", f"Missing required parameter: {name}")
        secrets_by_client = {user.client_id: user.client_secret for user in self.users.values()}
        if form["client_id"] not in secrets_by_client:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if form["client_secret"] != secrets_by_client[form["client_id"]]:
            return _oauth_error(401, "invalid_client", "Unauthorized")
        user = self.users.get(form["refresh_token"])
        if user is None or user.client_id != form["client_id"]:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        return self._issue(user.account)


def _base64url_decode(segment, what):
    """Decode unpadded base64url, or reject the assertion naming the segment."""
    if not _BASE64URL.fullmatch(segment):
        raise _InvalidGrantError(f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise _InvalidGrantError(f"{what} is not valid base64url") from None


def _decode_segment(segment, what):
    """Decode a base64url JSON object segment of a JWT."""
    try:
        value = json.loads(_base64url_decode(segment, what))
    except ValueError:
        raise _InvalidGrantError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _InvalidGrantError(f"{what} is not a JSON object")
    return value


@pytest.fixture
def fake_google():
    """A fake Google OAuth2 token endpoint at fake_google.token_url."""
    with FakeGoogle() as fake:
        yield fake


# --- Fake GCE metadata server ------------------------------------------------------------------

_SERVICE_ACCOUNTS = "/computeMetadata/v1/instance/service-accounts/"


class FakeMetadata(_FakeService):
    """The GCE metadata server, insisting on Metadata-Flavor: Google."""

    server_header = "Metadata Server for VM"
    token_prefix = "metadata"

    def __init__(self):
        super().__init__()
        self.email = "vm-sa@proj.iam.gserviceaccount.com"
        self.project_id = "proj"
        self.instance_id = "1234567890123456789"
        self.no_service_account = False
        self.google_flavor = True
        self.black_hole = False  # accept connections and never answer

    @property
    def host(self):
        """The "127.0.0.1:<port>" value for GCE_METADATA_HOST."""
        return f"127.0.0.1:{self.port}"

    @property
    def response_headers(self):
        """Metadata-Flavor: Google on every response, unless posing as some other server."""
        return {"Metadata-Flavor": "Google"} if self.google_flavor else {}

    def respond(self, record):
        """Answer the handful of metadata paths credential code uses."""
        if self.black_hole:
            return HANG
        if "x-forwarded-for" in record.headers:
            return _reply(403, "Request had an X-Forwarded-For header.")
        if record.headers.get("metadata-flavor") != "Google":
            return _reply(403, "Missing Metadata-Flavor:Google header.")
        if record.method != "GET":
            return _reply(405, f"{record.method} is not allowed")
        if record.route == "/":
            return _reply(200, "computeMetadata/\n")
        if record.route == "/computeMetadata/v1/project/project-id":
            return _reply(200, self.project_id)
        if record.route == "/computeMetadata/v1/instance/id":
            return _reply(200, self.instance_id)
        if record.route.startswith(_SERVICE_ACCOUNTS) and not self.no_service_account:
            return self._service_account(record)
        return _reply(404, f"fake metadata has nothing at {record.route}")

    def _service_account(self, record):
        account, _, leaf = record.route[len(_SERVICE_ACCOUNTS) :].partition("/")
        if account not in ("default", self.email):
            return _reply(404, f"no service account {account!r}")
        if record.route.endswith("/") and not leaf:
            if record.query.get("recursive") == "true":
                info = {"aliases": ["default"], "email": self.email, "scopes": [CLOUD_PLATFORM]}
                return _reply(200, info)
            return _reply(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
        if leaf == "email":
            return _reply(200, self.email)
        if leaf == "token":
            unexpected = sorted(set(record.query) - {"scopes"})
            if unexpected:
                return _reply(400, f"unexpected query parameters {unexpected}")
            return self._issue(self.email, scopes=record.query.get("scopes"))
        return _reply(404, f"fake metadata has nothing at {record.route}")


@pytest.fixture(autouse=True)
def off_google_hardware(tmp_path, monkeypatch):
    """Every test runs as on a machine whose DMI product name is not Google's.

    Tests that need Google hardware write the returned file.
    """
    product_name = tmp_path / "dmi-product-name"
    try:
        import artifactregistry_gauth as gauth
    except ModuleNotFoundError:
        return product_name
    monkeypatch.setattr(gauth, "DMI_PRODUCT_NAME", str(product_name))
    return product_name


@pytest.fixture
def fake_metadata(isolated_env, monkeypatch):
    """A fake metadata server that GCE_METADATA_HOST and GCE_METADATA_IP point at."""
    with FakeMetadata() as fake:
        monkeypatch.setenv("GCE_METADATA_HOST", fake.host)
        monkeypatch.setenv("GCE_METADATA_IP", fake.host)
        yield fake


# --- Fake gcloud -------------------------------------------------------------------------------

_GCLOUD_SCRIPT = r'''"""Fake gcloud written by conftest.py, obeying gcloud.config.json beside it."""

import configparser
import fcntl
import json
import os
import re
import secrets
import select
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENV_KEYS = (
    "CLOUDSDK_CORE_DISABLE_PROMPTS",
    "CLOUDSDK_CONFIG",
    "CLOUDSDK_ACTIVE_CONFIG_NAME",
    "CLOUDSDK_CORE_ACCOUNT",
    "CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT",
)
NO_ACCOUNT = (
    "ERROR: (gcloud.config.config-helper) You do not currently have an active account selected.\n"
)
CONFIG_NAME = "^[a-z][-a-z0-9]*$"


def beside(name):
    return os.path.join(HERE, "gcloud." + name)


def append(name, record):
    with open(beside(name), "a") as f:
        f.write(json.dumps(record) + "\n")


def stdin_isatty():
    try:
        return os.isatty(0)
    except OSError:
        return False


def read_stdin():
    data = b""
    try:
        while select.select([0], [], [], 0.2)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode("utf-8", "replace")


def wait(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(beside("stop")):
        time.sleep(0.05)


def new_token():
    with open(beside("counter"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return "ya29.gcloud-%d-%s" % (n, secrets.token_hex(8))


def properties():
    """Every property as gcloud reads it: variables, the active configuration, the installation."""
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    name = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME") or ""
    rejected = False
    if not name:
        try:
            with open(os.path.join(config_dir, "active_config"), encoding="utf-8") as f:
                name = f.read()
        except FileNotFoundError:
            name = ""
        rejected = name and not re.match(CONFIG_NAME, name)
        name = "default" if rejected or not name else name
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    files = [os.path.join(root, "properties")]
    if name != "NONE" and not rejected:  # gcloud empties default's file after a rejected name
        files.append(os.path.join(config_dir, "configurations", "config_" + name))
    values = {}
    for path in files:
        parser = configparser.ConfigParser()
        parser.read(path, encoding="utf-8")
        for section in parser.sections():
            values.setdefault(section, {}).update(parser.items(section))
    for variable, value in os.environ.items():
        parts = variable.split("_", 2)
        if len(parts) == 3 and parts[0] == "CLOUDSDK" and parts[1] in ("CORE", "AUTH"):
            values.setdefault(parts[1].lower(), {})[parts[2].lower()] = value
    return name, config_dir, values


def principal(cfg, props):
    """Whose token gcloud would print: (principal, base account, fixed token or None)."""
    auth, core = props.get("auth", {}), props.get("core", {})
    account = core["account"] if "account" in core else cfg.get("account", "user@example.com")
    target = auth.get("impersonate_service_account", "").split(",")[-1].strip()
    if os.environ.get("CLOUDSDK_AUTH_ACCESS_TOKEN"):
        base, fixed = "token:$CLOUDSDK_AUTH_ACCESS_TOKEN", os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"]
    elif auth.get("access_token_file"):
        with open(auth["access_token_file"], encoding="utf-8") as f:
            base, fixed = "token:" + auth["access_token_file"], f.read().strip()
    elif auth.get("credential_file_override"):
        with open(auth["credential_file_override"], encoding="utf-8") as f:
            info = json.load(f)
        base, fixed = info.get("client_email") or "file:" + auth["credential_file_override"], None
    elif account:
        base, fixed = account, None
    else:
        return None, account, None
    if target:
        fixed = None  # impersonation trades the token in for the target's
    return (target or base), account, fixed


def config_helper(cfg, argv):
    if argv[:2] != ["config", "config-helper"] or not any(
        arg.startswith("--format=json") for arg in argv
    ):
        sys.stderr.write("ERROR: (gcloud) unsupported in fake\n")
        return 2
    name, config_dir, props = properties()
    who, account, fixed = principal(cfg, props)
    if who is None:
        sys.stderr.write(NO_ACCOUNT)
        return 1
    token = cfg["token"] if "token" in cfg else fixed if fixed is not None else new_token()
    expiry = None if cfg.get("expiry_null") or fixed is not None else (
        time.time() + cfg.get("expires_in", 3599)
    )
    if token:
        append("issued.jsonl", {"token": token, "expiry": expiry, "principal": who})
    core = dict(props.get("core", {}), account=account, project="example-project")
    output = {
        "configuration": {
            "active_configuration": cfg.get("configuration", name),
            "properties": dict(props, core=core),
        },
        "credential": {
            "access_token": token,
            "id_token": None,
            "token_expiry": None
            if expiry is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry)),
        },
        "sentinels": {"config_sentinel": os.path.join(config_dir, "config_sentinel")},
    }
    print(json.dumps(output, indent=2))
    return 0


def main():
    with open(beside("config.json")) as f:
        cfg = json.load(f)
    argv = sys.argv[1:]
    append(
        "calls.jsonl",
        {
            "argv": argv,
            "env": {key: os.environ.get(key) for key in ENV_KEYS},
            "stdin_isatty": stdin_isatty(),
            "stdin_data": read_stdin(),
            "pid": os.getpid(),
        },
    )
    mode = cfg.get("mode", "ok")
    if mode == "fail":
        message = cfg.get("stderr", NO_ACCOUNT)
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
        return cfg.get("exit", 1)
    if mode == "junk":
        print(cfg.get("stdout", "this is not json"))
        return 0
    if mode == "stderr_only":
        sys.stderr.write("WARNING: fake gcloud has nothing to print on stdout\n")
        return 0
    if mode == "hang":
        wait(3600)
        return 1
    if mode == "sleep":
        wait(cfg["seconds"])
    return config_helper(cfg, argv)


sys.exit(main())
'''


class FakeGcloud:
    """A `gcloud` executable in bin_dir whose behaviour the test configures."""

    MODES = frozenset({"ok", "fail", "junk", "stderr_only", "hang", "sleep"})
    SETTINGS = frozenset(
        {
            "mode",
            "token",
            "expires_in",
            "expiry_null",
            "account",
            "configuration",
            "stderr",
            "exit",
            "stdout",
            "seconds",
        }
    )

    def __init__(self, bin_dir):
        # Laid out as an installed SDK whose bin/gcloud is linked from PATH, as /usr/bin/gcloud is.
        self.sdk_root = bin_dir.parent / "google-cloud-sdk"
        (self.sdk_root / ".install").mkdir(parents=True)
        (self.sdk_root / "bin").mkdir()
        script = self.sdk_root / "bin" / "gcloud"
        script.write_text(f"#!{sys.executable}\n{_GCLOUD_SCRIPT}")
        script.chmod(0o755)
        self.path = bin_dir / "gcloud"
        self.path.symlink_to(script)
        self.configure()

    @property
    def installation_properties(self):
        """The SDK's own properties file, read after the active configuration."""
        return self.sdk_root / "properties"

    def configure(self, **settings):
        """Replace the configuration; token="" or None is printed as given, not generated."""
        unknown = sorted(set(settings) - self.SETTINGS)
        if unknown:
            raise TypeError(f"unknown fake gcloud settings {unknown}")
        if settings.get("mode", "ok") not in self.MODES:
            raise ValueError(f"unknown fake gcloud mode {settings['mode']!r}")
        if settings.get("mode") == "sleep" and "seconds" not in settings:
            raise TypeError("mode='sleep' needs seconds=")
        staged = self._beside("config.json.new")
        staged.write_text(json.dumps(settings))
        staged.replace(self._beside("config.json"))

    @property
    def calls(self):
        """Every run so far: argv, env, stdin_isatty, stdin_data, pid."""
        return _read_json_lines(self._beside("calls.jsonl"))

    @property
    def issued(self):
        """Tokens printed so far, mapped to their expiry (epoch seconds, or None)."""
        return {
            entry["token"]: entry["expiry"]
            for entry in _read_json_lines(self._beside("issued.jsonl"))
        }

    @property
    def principals(self):
        """Tokens printed so far, mapped to whose they are (the impersonated account, if any)."""
        return {
            entry["token"]: entry["principal"]
            for entry in _read_json_lines(self._beside("issued.jsonl"))
        }

    def stop(self):
        """Make hung runs exit, and kill any that are still running."""
        self._beside("stop").touch()
        for call in self.calls:
            if _runs_script(call["pid"], self.path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(call["pid"], signal.SIGKILL)

    def _beside(self, name):
        return self.path.with_name(f"gcloud.{name}")


def _read_json_lines(path):
    """Read a JSON-lines file, empty if it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs_script(pid, script):
    """Tell whether process `pid` is alive and running `script`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return os.fsencode(script) in cmdline.split(b"\0")


@pytest.fixture
def fake_gcloud(bin_dir):
    """A fake gcloud on PATH; configure() it, then inspect calls and issued."""
    fake = FakeGcloud(bin_dir)
    yield fake
    fake.stop()


# --- The real Cloud SDK, against loopback fakes ---------------------------------------------

# Found before any test narrows PATH; None where no Cloud SDK is installed.
REAL_GCLOUD = shutil.which("gcloud")
_ORIGINAL_PATH = os.environ.get("PATH", os.defpath)


class FakeGcloudTokenEndpoint(_FakeService):
    """The OAuth token endpoint (and STS) as gcloud's refreshes call them, over plain http."""

    server_header = "ESF"
    token_prefix = "gcloud-sa"

    def __init__(self):
        super().__init__()
        self.service_accounts: dict = {}  # email -> public key
        self.revoked: set = set()
        self.subject_tokens: dict = {}  # workload identity audience -> its one subject token

    @property
    def token_url(self):
        """The plain-HTTP token endpoint URL, for token_uri in key files."""
        return f"http://127.0.0.1:{self.port}/token"

    def respond(self, record):
        """A JWT-bearer grant signed by a registered key; invalid_grant for revoked keys."""
        if record.route == "/introspect" and record.method == "POST":  # gcloud names the account
            entry = self.issued.get(record.form.get("token", ""))
            if entry is None:
                return _reply(200, {"active": False})
            return _reply(200, {"active": True, "username": entry["identity"]})
        if record.route != "/token" or record.method != "POST":
            return _reply(404, f"nothing at {record.method} {record.route}")
        if record.form.get("grant_type") == TOKEN_EXCHANGE:  # as STS, for external accounts
            audience = record.form.get("audience", "")
            if record.form.get("subject_token") != self.subject_tokens.get(audience):
                return _oauth_error(400, "invalid_grant", "The subject token is invalid.")
            return self._issue(audience)
        if record.form.get("grant_type") != JWT_BEARER:
            return _oauth_error(400, "unsupported_grant_type", "only JWT bearer grants here")
        segments = record.form.get("assertion", "").split(".")
        try:
            claims = _decode_segment(segments[1], "claims")
            signature = _base64url_decode(segments[2], "signature")
            email = claims.get("iss")
            self.service_accounts[email].verify(
                signature, ".".join(segments[:2]).encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (IndexError, KeyError, InvalidSignature, _InvalidGrantError):
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        if email in self.revoked:
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        return self._issue(email)


class RealGcloud:
    """The installed Cloud SDK on PATH, isolated: its own config dir, loopback fakes only."""

    def __init__(self, path, env, token_endpoint, iam, key, tmp_path):
        self.path = path
        self.env = env
        self.token_endpoint = token_endpoint
        self.iam = iam
        self.key = key
        self.tmp_path = tmp_path

    def run(self, *args, check=True):
        """Run gcloud with args: the environment of the test, then the safety net on top."""
        done = subprocess.run(
            [str(self.path), *args],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"gcloud {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done

    def key_file(self, email, name=None):
        """Write a service-account key file for `email` that the fake token endpoint accepts."""
        self.token_endpoint.service_accounts[email] = self.key.public_key
        path = self.tmp_path / (name or f"{email.split('@')[0]}-key.json")
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "proj",
                    "private_key_id": "key-1",
                    "private_key": self.key.pkcs8_pem,
                    "client_email": email,
                    "client_id": "1234",
                    "token_uri": self.token_endpoint.token_url,
                }
            )
        )
        return path

    def activate(self, email):
        """`gcloud auth activate-service-account` with a new key file for `email`."""
        self.run("auth", "activate-service-account", f"--key-file={self.key_file(email)}")

    def principal(self, token):
        """Whose token it is: the service account, or the one impersonated with it."""
        entry = self.iam.issued.get(token) or self.token_endpoint.issued.get(token)
        return None if entry is None else entry["identity"]


def real_gcloud_env(token_endpoint, iam):
    """Everything that keeps a real gcloud on this machine and on our fakes, in one place.

    gcloud is a subprocess, beyond the in-process socket guard: a dead proxy catches any
    request to a real host, and the metadata server is a refused loopback port.
    """
    dead = f"127.0.0.1:{_refused_port()}"
    env = {
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "GCE_METADATA_HOST": dead,
        "GCE_METADATA_IP": dead,
        "GCE_METADATA_ROOT": dead,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # gcloud's own token endpoint and IAM, on loopback.
        "CLOUDSDK_AUTH_TOKEN_HOST": token_endpoint.token_url,
        "CLOUDSDK_AUTH_TOKEN_INTROSPECTION_ENDPOINT": f"http://127.0.0.1:{token_endpoint.port}/introspect",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAMCREDENTIALS": f"http://127.0.0.1:{iam.port}/",
        # Without this each refresh also asks for an ID token (PROTOCOLS.md J).
        "CLOUDSDK_AUTH_SERVICE_ACCOUNT_DISABLE_ID_TOKEN_REFRESH": "true",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = f"http://{dead}"
    return env


@pytest.fixture
def real_gcloud(bin_dir, tmp_path, rsa_key, monkeypatch):
    """The installed gcloud, linked into bin_dir, on fakes; skipped where none is installed."""
    if REAL_GCLOUD is None:
        pytest.skip("no Cloud SDK installed (gcloud is not on PATH)")
    with FakeGcloudTokenEndpoint() as token_endpoint:
        iam = FakeIAMCredentials(token_endpoint)
        iam.serve()
        env = real_gcloud_env(token_endpoint, iam)
        # gcloud's wrapper needs the system's tools (dirname, readlink, python3).
        monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), _ORIGINAL_PATH]))
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # for the gcloud our module starts
        link = bin_dir / "gcloud"
        link.symlink_to(REAL_GCLOUD)
        yield RealGcloud(link, env, token_endpoint, iam, rsa_key, tmp_path)
        iam.close()


@pytest.fixture(scope="session")
def real_gcloud_sdk(tmp_path_factory):
    """An SDK root of our own around the installed gcloud's code, for its `properties` file.

    gcloud finds its root from where `googlecloudsdk/core` really is: that package is
    copied (5 MB), the rest linked.
    """
    if REAL_GCLOUD is None:
        pytest.skip("no Cloud SDK installed (gcloud is not on PATH)")
    real = Path(os.path.realpath(REAL_GCLOUD)).parent.parent
    root = tmp_path_factory.mktemp("sdk") / "google-cloud-sdk"
    (root / "bin").mkdir(parents=True)
    (root / ".install").mkdir()
    shutil.copy2(real / "bin" / "gcloud", root / "bin" / "gcloud")
    (root / "lib" / "googlecloudsdk").mkdir(parents=True)
    shutil.copy2(real / "lib" / "gcloud.py", root / "lib" / "gcloud.py")
    for entry in (real / "lib").iterdir():
        if entry.name not in ("gcloud.py", "googlecloudsdk", "__pycache__"):
            (root / "lib" / entry.name).symlink_to(entry)
    for entry in (real / "lib" / "googlecloudsdk").iterdir():
        if entry.name != "core":
            (root / "lib" / "googlecloudsdk" / entry.name).symlink_to(entry)
    shutil.copytree(real / "lib" / "googlecloudsdk" / "core", root / "lib/googlecloudsdk/core")
    if (real / "platform").exists():
        (root / "platform").symlink_to(real / "platform")
    return root


# --- TLS and the CONNECT proxy -----------------------------------------------------------------


@dataclass
class GoogleHTTPS:
    """The fake Google reachable at its real https:// URLs through a CONNECT proxy."""

    proxy_url: str
    ca_file: Path
    fake: FakeGoogle
    tls_port: int
    proxy: RoutingProxy

    @property
    def connects(self):
        """CONNECT targets ("host:port") the proxy tunnelled, in order."""
        return self.proxy.connects

    @property
    def rejected(self):
        """Targets the proxy refused: anything but the Google hosts on port 443."""
        return self.proxy.rejected


@pytest.fixture(scope="session")
def test_ca():
    """A throwaway certificate authority for the whole session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def test_ca_file(test_ca, tmp_path_factory):
    """The test CA's certificate as a PEM file."""
    path = tmp_path_factory.mktemp("tls") / "test-ca.pem"
    test_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def google_tls_context(test_ca):
    """A server TLS context with a test-CA certificate for the Google hosts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    test_ca.issue_cert(*TLS_HOSTS).configure_cert(context)
    return context


@pytest.fixture
def google_https(fake_google, test_ca_file, google_tls_context, monkeypatch):
    """Route https://oauth2.googleapis.com to fake_google via HTTPS_PROXY and SSL_CERT_FILE."""
    tls_server = fake_google.serve(google_tls_context)
    proxy = RoutingProxy({host: tls_server.port for host in GOOGLE_HOSTS}).start()
    proxy_url = proxy.url
    monkeypatch.setenv("HTTPS_PROXY", proxy_url)
    monkeypatch.setenv("https_proxy", proxy_url)
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca_file))
    yield GoogleHTTPS(proxy_url, test_ca_file, fake_google, tls_server.port, proxy)
    proxy.stop()


# --- Keys and credential files -----------------------------------------------------------------


@dataclass(frozen=True)
class RsaKey:
    """An RSA key pair with its private key as PKCS#8 and PKCS#1 PEM."""

    private_key: rsa.RSAPrivateKey
    public_key: rsa.RSAPublicKey
    pkcs8_pem: str
    pkcs1_pem: str


def _private_pem(key, private_format):
    """Serialize a private key as unencrypted PEM text."""
    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode("ascii")


@pytest.fixture(scope="session")
def rsa_key():
    """One RSA-2048 key pair for the session."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = RsaKey(
        private_key=key,
        public_key=key.public_key(),
        pkcs8_pem=_private_pem(key, serialization.PrivateFormat.PKCS8),
        pkcs1_pem=_private_pem(key, serialization.PrivateFormat.TraditionalOpenSSL),
    )
    for pem in (pair.pkcs8_pem, pair.pkcs1_pem):
        register_secret(*pem.splitlines()[1:-1])
    return pair


def _merge(info, overrides):
    """Apply overrides to a JSON dict; a None value removes the key."""
    for key, value in overrides.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    return info


@pytest.fixture
def sa_file(tmp_path, fake_google, rsa_key):
    """Factory writing service_account key files that fake_google accepts."""
    serial = itertools.count(1)

    def make(
        email="sa@proj.iam.gserviceaccount.com",
        kid="key-id-1",
        pem="pkcs8",
        register=True,
        **overrides,
    ):
        """Write a service-account JSON (pem: "pkcs8", "pkcs1" or literal text); return its path."""
        info = {
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": kid,
            "private_key": {"pkcs8": rsa_key.pkcs8_pem, "pkcs1": rsa_key.pkcs1_pem}.get(pem, pem),
            "client_email": email,
            "client_id": "1234",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": fake_google.token_url,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email)}"
            ),
            "universe_domain": "googleapis.com",
        }
        if kid is None:
            del info["private_key_id"]
        path = tmp_path / f"sa-{next(serial)}.json"
        path.write_text(json.dumps(_merge(info, overrides), indent=2))
        if register:
            fake_google.add_service_account(email, rsa_key.public_key, kid)
        return path

    return make


@pytest.fixture
def user_file(tmp_path, fake_google):
    """Factory writing authorized_user files (as gcloud does) that fake_google accepts."""
    serial = itertools.count(1)

    def make(
        refresh_token="1//refresh-abc",
        client_id="123.apps.googleusercontent.com",
        client_secret="secret-xyz",
        account="user@example.com",
        register=True,
        **overrides,
    ):
        """Write an authorized_user JSON; `account` is who fake_google issues tokens to."""
        info = {
            "account": "",
            "client_id": client_id,
            "client_secret": client_secret,
            "quota_project_id": "proj",
            "refresh_token": refresh_token,
            "type": "authorized_user",
            "universe_domain": "googleapis.com",
        }
        path = tmp_path / f"user-{next(serial)}.json"
        path.write_text(json.dumps(_merge(info, overrides), indent=2))
        register_secret(refresh_token, client_secret)
        if register:
            fake_google.add_user(client_id, client_secret, refresh_token, account)
        return path

    return make


# --- Federation fakes: Google STS, IAM credentials, AWS instance metadata, an identity provider --

STS_HOST = "sts.googleapis.com"
IAM_HOST = "iamcredentials.googleapis.com"
RESOURCE_MANAGER_HOST = "cloudresourcemanager.googleapis.com"
OTHER_UNIVERSE = "universe.example"
FEDERATION_TLS_HOSTS = (
    *TLS_HOSTS,
    RESOURCE_MANAGER_HOST,
    f"sts.{OTHER_UNIVERSE}",
    f"iamcredentials.{OTHER_UNIVERSE}",
)
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
_STS_FIELDS = frozenset(
    {
        "grant_type",
        "audience",
        "scope",
        "requested_token_type",
        "subject_token",
        "subject_token_type",
        "options",
    }
)
_WORKFORCE_AUDIENCE = re.compile(r"//iam\.googleapis\.com/locations/[^/]+/workforcePools/")
_GENERATE_ACCESS_TOKEN = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")


def _google_api_error(status, code, message):
    """A Google API error reply (`{"error": {"code", "message", "status"}}`)."""
    return _reply(status, {"error": {"code": status, "message": message, "status": code}})


def _strict_form(record):
    """Return (form, None) for a well-formed urlencoded POST, or (None, error reply)."""
    if record.method != "POST":
        return None, _oauth_error(405, "invalid_request", f"{record.method} is not allowed")
    if _media_type(record.headers) != FORM_URLENCODED:
        return None, _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_URLENCODED}")
    try:
        fields = parse_qs(record.body.decode(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None, _oauth_error(400, "invalid_request", "malformed form body")
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        return None, _oauth_error(400, "invalid_request", f"repeated parameters {repeated}")
    return _single_values(fields), None


def _basic(client_id, client_secret):
    """The Authorization header value of HTTP Basic client authentication."""
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


@dataclass
class _Provider:
    """A workload or workforce pool provider the fake STS knows."""

    subject_token_type: str
    accepts: object  # the one subject token it takes, or a callable returning a problem or None
    client: tuple | None
    user_project: str | None


class FakeSTS(_FakeService):
    """Google's Security Token Service: RFC 8693 token exchange and workforce refresh grants."""

    server_header = "ESF"
    token_prefix = "sts"

    def __init__(self):
        super().__init__()
        self.providers: dict[str, _Provider] = {}
        self.workforce_users: dict[str, tuple] = {}

    @property
    def token_url(self):
        """The plain-HTTP token exchange URL (for token_url in test files)."""
        return f"http://127.0.0.1:{self.port}/v1/token"

    @property
    def refresh_url(self):
        """The plain-HTTP workforce refresh URL."""
        return f"http://127.0.0.1:{self.port}/v1/oauth/token"

    @property
    def exchanges(self):
        """The recorded token exchange requests."""
        return [r for r in self.requests if r.route == "/v1/token"]

    def add_provider(self, audience, subject_token_type, accepts, client=None, user_project=None):
        """Accept subject tokens for `audience`: `accepts` is the token or a checking callable."""
        self.providers[audience] = _Provider(subject_token_type, accepts, client, user_project)

    def add_workforce_user(self, refresh_token, client_id, client_secret, account):
        """Accept `refresh_token` at /v1/oauth/token with Basic auth of the OAuth client."""
        self.workforce_users[refresh_token] = (client_id, client_secret, account)

    def respond(self, record):
        """Answer /v1/token and /v1/oauth/token; anything else is a 404."""
        if record.route == "/v1/token":
            return self._exchange(record)
        if record.route == "/v1/oauth/token":
            return self._refresh(record)
        return _reply(404, f"fake STS has nothing at {record.route}")

    def _exchange(self, record):
        form, error = _strict_form(record)
        if error:
            return error
        unexpected = sorted(set(form) - _STS_FIELDS)
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _oauth_error(400, "unsupported_grant_type", "not a token exchange")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error(400, "invalid_request", "requested_token_type must be access_token")
        provider = self.providers.get(form.get("audience", ""))
        if provider is None:
            return _oauth_error(
                400, "invalid_target", "The target service indicated by the audience is invalid."
            )
        if form.get("subject_token_type") != provider.subject_token_type:
            return _oauth_error(
                400, "invalid_request", "subject_token_type does not match the provider"
            )
        if form.get("scope") not in (CLOUD_PLATFORM, IAM_SCOPE):
            return _oauth_error(400, "invalid_scope", f"unexpected scope {form.get('scope')!r}")
        expected_auth = _basic(*provider.client) if provider.client else None
        if record.headers.get("authorization") != expected_auth:
            return _oauth_error(401, "invalid_client", "client authentication failed")
        from urllib.parse import unquote

        user_project = None
        if "options" in form:
            try:
                options = json.loads(unquote(form["options"]))
            except ValueError:
                return _oauth_error(400, "invalid_request", "options is not URL-encoded JSON")
            user_project = options.get("userProject") if isinstance(options, dict) else None
            if not isinstance(options, dict) or set(options) != {"userProject"}:
                return _oauth_error(400, "invalid_request", "unexpected options")
            if not _WORKFORCE_AUDIENCE.match(form["audience"]):
                return _oauth_error(400, "invalid_request", "unexpected options")
        if user_project != (None if provider.client else provider.user_project):
            return _oauth_error(400, "invalid_request", "workforce user project mismatch")
        token = form.get("subject_token", "")
        problem = self._check_subject_token(provider, token)
        if problem:
            return _oauth_error(400, "invalid_grant", problem)
        reply = self._issue(
            form["audience"], scope=form["scope"], subject_token=token, user_project=user_project
        )
        body = json.loads(reply.body)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return _reply(200, body)

    @staticmethod
    def _check_subject_token(provider, token):
        if not token:
            return "subject_token is empty"
        if callable(provider.accepts):
            return provider.accepts(token)
        return None if token == provider.accepts else "the subject token was not accepted"

    def _refresh(self, record):
        form, error = _strict_form(record)
        if error:
            return error
        if set(form) != {"grant_type", "refresh_token"} or form["grant_type"] != "refresh_token":
            return _oauth_error(400, "invalid_request", f"unexpected fields {sorted(form)}")
        user = self.workforce_users.get(form["refresh_token"])
        if user is None:
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or expired.")
        if record.headers.get("authorization") != _basic(user[0], user[1]):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        return self._issue(user[2])


class FakeIAMCredentials(_FakeService):
    """IAM credentials generateAccessToken, accepting live tokens of the given issuers."""

    server_header = "ESF"
    token_prefix = "iam"

    def __init__(self, *issuers):
        super().__init__()
        self.issuers = list(issuers)
        self.service_accounts: set[str] = set()
        self.fractional_seconds = False

    def url(self, email):
        """The plain-HTTP generateAccessToken URL of `email`."""
        return f"http://127.0.0.1:{self.port}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"

    def add_service_account(self, email):
        """Let any live issued token impersonate `email`."""
        self.service_accounts.add(email)

    def respond(self, record):
        """Answer generateAccessToken strictly, with Google API style errors."""
        match = _GENERATE_ACCESS_TOKEN.fullmatch(record.route)
        if match is None:
            return _google_api_error(404, "NOT_FOUND", f"nothing at {record.route}")
        if record.method != "POST":
            return _google_api_error(405, "METHOD_NOT_ALLOWED", f"{record.method} is not allowed")
        if _media_type(record.headers) != "application/json":
            return _google_api_error(
                400, "INVALID_ARGUMENT", "Content-Type must be application/json"
            )
        scheme, _, bearer = record.headers.get("authorization", "").partition(" ")
        source = self._source_of(bearer) if scheme == "Bearer" else None
        if source is None:
            return _google_api_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
            )
        body = record.json
        problem = self._check_body(body)
        if problem:
            return _google_api_error(400, "INVALID_ARGUMENT", problem)
        email = match.group(1)
        if email not in self.service_accounts:
            return _google_api_error(
                404, "NOT_FOUND", f"Not found; Gaia id not found for email {email}"
            )
        lifetime = int(body["lifetime"][:-1]) if body.get("lifetime") else 3600
        with self._lock:
            token = f"ya29.{self.token_prefix}-{next(self._serial)}-{secrets.token_hex(8)}"
            register_secret(token)
            expiry = time.time() + lifetime
            self.issued[token] = {
                "identity": email,
                "expiry": expiry,
                "source": source,
                "delegates": body.get("delegates"),
                "scope": body["scope"],
                "lifetime": lifetime,
                "quota_project": record.headers.get("x-goog-user-project"),
            }
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(expiry))
        if self.fractional_seconds:
            stamp += ".123456789"
        return _reply(200, {"accessToken": token, "expireTime": stamp + "Z"})

    def _source_of(self, bearer):
        for issuer in self.issuers:
            if issuer.is_live(bearer):
                return issuer.issued[bearer]["identity"]
        return None

    @staticmethod
    def _check_body(body):
        if not isinstance(body, dict) or not set(body) <= {"delegates", "scope", "lifetime"}:
            return f"unexpected request body {body!r}"
        scope = body.get("scope")
        if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
            return "scope must be a non-empty list of strings"
        delegates = body.get("delegates")
        if delegates is not None and not (
            isinstance(delegates, list) and all(isinstance(d, str) for d in delegates)
        ):
            return "delegates must be a list of strings"
        lifetime = body.get("lifetime")
        if lifetime is not None and not (
            isinstance(lifetime, str) and re.fullmatch(r"[1-9][0-9]*s", lifetime)
        ):
            return f"lifetime {lifetime!r} is not a duration in seconds"
        if lifetime is not None and int(lifetime[:-1]) > 3600:
            return "lifetime must not exceed 3600s"
        return None


class FakeAwsMetadata(_FakeService):
    """The EC2 instance metadata service (IMDSv2 sessions, region, role credentials)."""

    server_header = "EC2ws"

    def __init__(self):
        super().__init__()
        self.zone = "us-east-2b"
        self.role = "gauth-role"
        self.access_key_id = "ASIAIMDSFAKE" + secrets.token_hex(4).upper()
        self.secret_access_key = "imds-secret-" + secrets.token_hex(8)
        self.session_token = "imds-session-" + secrets.token_hex(8)
        register_secret(self.secret_access_key, self.session_token)
        self.require_session = True
        self.session_tokens: set[str] = set()

    @property
    def base_url(self):
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def credential_source(self, imdsv2=True):
        """An aws1 credential_source whose metadata URLs point at this fake."""
        source = {
            "environment_id": "aws1",
            "region_url": f"{self.base_url}/latest/meta-data/placement/availability-zone",
            "url": f"{self.base_url}/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": (
                "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            ),
        }
        if imdsv2:
            source["imdsv2_session_token_url"] = f"{self.base_url}/latest/api/token"
        return source

    def respond(self, record):
        """Answer the metadata paths federation uses."""
        if record.route == "/latest/api/token":
            if record.method != "PUT":
                return _reply(405, "Method Not Allowed")
            ttl = record.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return _reply(400, "Bad Request")
            token = "imds-v2-" + secrets.token_hex(8)
            with self._lock:
                self.session_tokens.add(token)
            return _reply(200, token)
        if record.method != "GET":
            return _reply(405, "Method Not Allowed")
        if self.require_session and (
            record.headers.get("x-aws-ec2-metadata-token") not in self.session_tokens
        ):
            return _reply(401, "Unauthorized")
        prefix = "/latest/meta-data/iam/security-credentials"
        if record.route == "/latest/meta-data/placement/availability-zone":
            return _reply(200, self.zone)
        if record.route in (prefix, prefix + "/"):
            return _reply(200, self.role)
        if record.route == f"{prefix}/{self.role}":
            return _reply(
                200,
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": self.access_key_id,
                    "SecretAccessKey": self.secret_access_key,
                    "Token": self.session_token,
                    "Expiration": "2099-01-01T00:00:00Z",
                },
            )
        return _reply(404, "Not Found")


def aws_signature_checker(audience, keys):
    """A subject-token check for FakeSTS: a SigV4-signed GetCallerIdentity for `audience`.

    `keys` maps access key ids to (secret access key, session token or None).
    """

    import calendar
    import hashlib
    import hmac

    def check(subject_token):
        try:
            request = json.loads(urllib.parse.unquote(subject_token))
            headers = {h["key"]: h["value"] for h in request["headers"]}
            order = [h["key"] for h in request["headers"]]
        except (ValueError, KeyError, TypeError):
            return "the subject token is not a serialized AWS request"
        url = urlsplit(request.get("url", ""))
        match = re.fullmatch(r"sts\.([a-z0-9-]+)\.amazonaws\.com", url.hostname or "")
        if request.get("method") != "POST" or url.scheme != "https" or match is None:
            return "the subject token is not a POST to a regional AWS STS"
        if parse_qs(url.query) != {"Action": ["GetCallerIdentity"], "Version": ["2011-06-15"]}:
            return "the subject token is not a GetCallerIdentity call"
        if headers.get("x-goog-cloud-target-resource") != audience:
            return "x-goog-cloud-target-resource is not the audience"
        credential = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/sts/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            headers.get("Authorization", ""),
        )
        if credential is None or credential.group(1) not in keys:
            return "unknown AWS access key"
        key_id, date, region, signed_names, signature = credential.groups()
        secret, session_token = keys[key_id]
        expected_names = ["host", "x-amz-date"] + (
            ["x-amz-security-token"] if session_token else []
        )
        if signed_names.split(";") != expected_names or region != match.group(1):
            return "unexpected signed headers or region"
        if headers.get("x-amz-security-token") != session_token:
            return "wrong session token"
        if order != [
            "Authorization",
            "host",
            "x-amz-date",
            *expected_names[2:],
            "x-goog-cloud-target-resource",
        ]:
            return f"unexpected header order {order}"
        amz_date = headers["x-amz-date"]
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        if abs(signed_at - time.time()) > 300 or amz_date[:8] != date:
            return "the request is not signed now"
        values = {
            "host": url.hostname,
            "x-amz-date": amz_date,
            "x-amz-security-token": session_token,
        }
        canonical = "\n".join(
            [
                "POST",
                "/",
                "Action=GetCallerIdentity&Version=2011-06-15",
                "".join(f"{name}:{values[name]}\n" for name in expected_names),
                signed_names,
                hashlib.sha256(b"").hexdigest(),
            ]
        )
        scope = f"{date}/{region}/sts/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
        key = f"AWS4{secret}".encode()
        for part in (date, region, "sts", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(
            hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature
        ):
            return "the AWS signature does not verify"
        return None

    return check


class FakeIdentityProvider(_FakeService):
    """A URL that hands out subject tokens (as Azure's metadata service does), text or JSON."""

    server_header = "IdP"

    def __init__(self):
        super().__init__()
        self.token = "idp-jwt-" + secrets.token_hex(8)
        register_secret(self.token)
        self.json_field = None  # None: answer text/plain; else {json_field: token}
        self.required_headers: dict[str, str] = {}

    @property
    def url(self):
        """The subject token URL."""
        return f"http://127.0.0.1:{self.port}/token?resource=gauth"

    def respond(self, record):
        """Answer GET /token when the required headers are there."""
        if record.route != "/token" or record.method != "GET":
            return _reply(404, "not found")
        for name, value in self.required_headers.items():
            if record.headers.get(name.lower()) != value:
                return _reply(401, {"error": f"header {name} missing"})
        if self.json_field is None:
            return _reply(200, self.token)
        return _reply(200, {self.json_field: self.token, "token_type": "Bearer"})


class _VirtualHosts(_FakeService):
    """One TLS server answering for several Google hosts, each by its own fake."""

    server_header = "ESF"

    def __init__(self, hosts):
        super().__init__()
        self.hosts = hosts

    def pop_scripted(self):
        """Scripts belong to the per-host fakes."""
        return None

    def respond(self, record):
        """Hand the request to the fake for its Host header, recording it there too."""
        host = record.headers.get("host", "").lower().removesuffix(":443")
        fake = self.hosts.get(host)
        if fake is None:
            return _google_api_error(404, "NOT_FOUND", f"no fake serves {host}")
        fake.requests.append(record)
        return fake.pop_scripted() or fake.respond(record)


@dataclass
class GoogleFederation:
    """Fake STS, IAM credentials and OAuth endpoints, at their real https:// URLs via a proxy."""

    sts: FakeSTS
    iam: FakeIAMCredentials
    google: FakeGoogle
    hosts: _VirtualHosts
    proxy: RoutingProxy
    ca_file: Path

    @property
    def connects(self):
        """CONNECT targets the proxy tunnelled, in order."""
        return self.proxy.connects


@pytest.fixture(scope="session")
def federation_tls_context(test_ca):
    """A server TLS context whose certificate also covers STS, IAM and resource manager hosts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    test_ca.issue_cert(*FEDERATION_TLS_HOSTS).configure_cert(context)
    return context


@pytest.fixture
def google_federation(fake_google, test_ca_file, federation_tls_context, monkeypatch):
    """Fake STS and IAM on loopback (plain http) and behind https://sts/iamcredentials.googleapis.com."""
    sts = FakeSTS()
    sts.serve()
    iam = FakeIAMCredentials(sts, fake_google)
    iam.serve()
    hosts = _VirtualHosts(
        {
            OAUTH_HOST: fake_google,
            STS_HOST: sts,
            IAM_HOST: iam,
            f"sts.{OTHER_UNIVERSE}": sts,
            f"iamcredentials.{OTHER_UNIVERSE}": iam,
        }
    )
    tls_server = hosts.serve(federation_tls_context)
    proxy = RoutingProxy({host: tls_server.port for host in FEDERATION_TLS_HOSTS}).start()
    proxy_url = proxy.url
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy_url)
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.setenv(name, str(test_ca_file))
    yield GoogleFederation(sts, iam, fake_google, hosts, proxy, test_ca_file)
    stops = (proxy.stop, hosts.close, iam.close, sts.close)
    stopping = [threading.Thread(target=stop) for stop in stops]  # each waits out a poll
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join(JOIN_TIMEOUT)


@pytest.fixture
def fake_aws():
    """A fake EC2 instance metadata service on loopback."""
    with FakeAwsMetadata() as fake:
        yield fake


@pytest.fixture
def fake_idp():
    """A fake subject-token URL on loopback."""
    with FakeIdentityProvider() as fake:
        yield fake
