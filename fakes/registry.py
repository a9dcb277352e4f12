"""A fake Artifact Registry on loopback HTTPS: Python repositories, open mirrors, uploads.

One TLS server answers for several host names (a test-CA certificate covers them all);
clients reach it through `fakes.network.RoutingProxy`. Artifact Registry hosts
(``*.pkg.dev``) demand Basic ``oauth2accesstoken:<live token>`` of the token issuer given
(a `fakes.google.FakeGoogle`, or anything with ``is_live`` and ``issued``); other hosts
are open mirrors. Every request is recorded with the credentials it carried.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import html
import io
import re
import ssl
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from fakes.network import FakeService, Recorded, Reply

USERNAME = "oauth2accesstoken"
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- wheels ------------------------------------------------------------------------------------


def wheel(
    name: str,
    version: str,
    requires: tuple[str, ...] = (),
    source: str | None = None,
    console_scripts: tuple[str, ...] = (),  # "name = module:function", as pipx needs
    files: dict | None = None,  # path -> text; default: one module named after the project
    entry_points: str = "",  # more entry_points.txt sections, e.g. a keyring backend
) -> tuple[str, bytes]:
    """A pure-Python wheel: (file name, bytes)."""
    module = normalize(name).replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    if files is None:
        source = source or (f"VERSION = {version!r}\n\n\ndef hello():\n    return {name!r}\n")
        files = {f"{module}/__init__.py": source}
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            f"Summary: {name}, a package served by the fake Artifact Registry\n",
            *(f"Requires-Dist: {requirement}\n" for requirement in requires),
        ]
    )
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{dist_info}/METADATA"] = metadata.encode()
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: fakes.registry\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if console_scripts:
        scripts = "[console_scripts]\n" + "".join(f"{e}\n" for e in console_scripts)
        entry_points = scripts + entry_points
    if entry_points:
        contents[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = [f"{path},sha256={_record_hash(data)},{len(data)}" for path, data in contents.items()]
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name_in_zip, data in contents.items():
            archive.writestr(name_in_zip, data)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


def build_wheel(directory: Path, name: str, version: str, *args, **kwargs) -> Path:
    """Write `wheel(name, version, ...)` into `directory`; return its path."""
    filename, data = wheel(name, version, *args, **kwargs)
    path = Path(directory) / filename
    path.write_bytes(data)
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


@dataclass
class RegistryRequest(Recorded):
    """A `Recorded` request with the credentials it carried; the password itself is not kept."""

    username: str | None = None
    password: str = "none"  # "none", "live" (a live token of the issuer) or "other"
    carried_google_token: bool = False  # any token the issuer issued, anywhere in the request

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


class FakeRegistry(FakeService):
    """Artifact Registry Python repositories and open mirrors, by host name, over HTTPS."""

    server_header = "FakeArtifactRegistry"
    keep_alive = True  # as clients expect of a real registry
    handler_timeout = 30.0

    def __init__(self, tls_context: ssl.SSLContext, google) -> None:
        super().__init__()
        self.google = google  # fakes.google.FakeGoogle: issues and knows the live tokens
        self.tls_context = tls_context
        self.registries: dict[str, dict[str, Repository]] = {}  # host -> "proj/repo" -> repo
        self.mirrors: dict[str, Repository] = {}  # host -> repository at /simple/
        self.uploads: list[Upload] = []

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

    def start(self) -> FakeRegistry:
        """Serve HTTPS with the registry's TLS context."""
        self.serve(self.tls_context)
        return self

    # what was seen

    def requests_to(self, host: str) -> list[RegistryRequest]:
        with self._lock:
            return [request for request in self.requests if request.host == host]

    def served_files(self, host: str) -> list[str]:
        """Names of the files downloaded from a host (status 200), in order."""
        return [
            request.route.rsplit("/", 1)[-1]
            for request in self.requests_to(host)
            if request.status == 200 and request.method == "GET" and "/files/" in request.route
        ]

    # answering

    def record(self, record: Recorded) -> RegistryRequest:
        """Keep the request with who it claimed to be, as that was when it came."""
        username, password = _basic_auth(record.headers.get("authorization", ""))
        password_state = "none" if not password else "other"
        if password and self.google is not None and self.google.is_live(password):
            password_state = "live"
        seen = RegistryRequest(
            **vars(record),
            username=username,
            password=password_state,
            carried_google_token=self._carries_google_token(record),
        )
        return super().record(seen)

    def respond(self, record: RegistryRequest) -> Reply:
        host, path = record.host, record.route
        if host in self.registries:
            status, headers, body = self._registry(host, record.method, path, record)
            if not record.authenticated:
                status, headers, body = _unauthorized()
        elif host in self.mirrors:
            status, headers, body = self._mirror(host, record.method, path)
        else:
            status, headers, body = 421, {}, f"no such host here: {host}\n".encode()
        return Reply(status, body, headers)

    def _carries_google_token(self, record: Recorded) -> bool:
        if self.google is None:
            return False
        raw = (
            unquote(record.path) + "\n" + "".join(f"{k}: {v}\n" for k, v in record.headers.items())
        )
        tokens = list(self.google.issued)
        return any(token in raw or token.encode() in record.body for token in tokens)

    def _registry(self, host, method, path, record):
        repos = self.registries[host]
        for name, repository in repos.items():
            prefix = f"/{name}"
            if path == prefix or path.startswith(prefix + "/"):
                rest = path[len(prefix) :]
                if method == "POST" and rest in ("", "/"):
                    return self._upload(host, name, repository, record)
                if method in ("GET", "HEAD"):
                    return _serve_index(repository, rest)
                return 405, {}, b"method not allowed\n"
        return 404, {}, b"no such repository\n"

    def _mirror(self, host, method, path):
        if method not in ("GET", "HEAD"):
            return 405, {}, b"method not allowed\n"
        return _serve_index(self.mirrors[host], path)

    def _upload(self, host, name, repository, record):
        fields, files = _parse_multipart(record.headers.get("content-type", ""), record.body)
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
