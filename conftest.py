"""The test world: an isolated environment, two guards, and fixtures over the fakes.

Every test runs with a throwaway HOME, no ambient credentials, no PIP_* settings or
system-wide pip files of this machine, metadata at a refused loopback port and a socket
guard that refuses anything but loopback (`isolated_env`), on a machine that is not Google's
(`off_google_hardware`; `on_google_hardware` makes it Google's); and no secret of the test
may leave the program (`secrets_never_leak`: the test's output, what our command line
prints, logs, cache file names, errors that reach the test). The fakes themselves live in
the ``fakes`` package; the fixtures here start them, point the environment at them, and stop
them:

- `fake_google` (fakes.google.FakeGoogle), `google_https` (it at its real https:// URL
  through a CONNECT proxy), `google_federation` (STS and IAM credentials beside it),
  `fake_idp` (a subject-token URL);
- `fake_metadata` (GCE metadata), `fake_aws` (EC2 instance metadata);
- `fake_gcloud` (fakes.gcloud.FakeGcloud on PATH), `real_gcloud` and `real_gcloud_sdk`;
- `rsa_key`, `sa_file`, `user_file`, `sa_env` (keys and credential files the fakes accept);
- `test_ca`, `test_ca_file`, `google_tls_context`, `federation_tls_context`;
- `bin_dir`, `home_dir`.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

import fakes
from fakes import WINDOWS, register_secret
from fakes.gcloud import (
    ORIGINAL_PATH,
    REAL_GCLOUD,
    FakeGcloud,
    RealGcloud,
    make_sdk_root,
    real_gcloud_env,
)
from fakes.google import (
    FEDERATION_TLS_HOSTS,
    GOOGLE_HOSTS,
    IAM_HOST,
    OAUTH_HOST,
    OTHER_UNIVERSE,
    STS_HOST,
    TLS_HOSTS,
    FakeGoogle,
    FakeIAMCredentials,
    FakeIdentityProvider,
    FakeSTS,
    GoogleFederation,
    GoogleHTTPS,
    VirtualHosts,
    new_rsa_key,
)
from fakes.metadata import FakeAwsMetadata, FakeMetadata
from fakes.network import (
    JOIN_TIMEOUT,
    RoutingProxy,
    new_ca,
    refused_port,
    server_context,
    write_ca_file,
)

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
    "PIP_",  # pip's settings (PIP_CERT, PIP_CONFIG_FILE) are read for TLS and by doctor
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
    default_cache_dir: Path  # where the OS's conventions put our cache


def _default_cache_dir(home):
    """%LOCALAPPDATA%'s, macOS's Library/Caches, else $XDG_CACHE_HOME: all under `home` here."""
    if WINDOWS:
        return home / "AppData" / "Local" / "artifactregistry-gauth" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "artifactregistry-gauth"
    return home / ".cache" / "artifactregistry-gauth"


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
        dead_metadata_host=f"127.0.0.1:{refused_port()}",
        default_cache_dir=_default_cache_dir(home),
    )
    # expanduser() reads HOME on POSIX and USERPROFILE on Windows (Python >= 3.8).
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
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
    _no_system_pip_files(monkeypatch, tmp_path / "system")

    _forget_tokens()
    yield env
    _forget_tokens()


def _no_system_pip_files(monkeypatch, system):
    """pip's system-wide files are the machine's: each test gets empty folders of its own."""
    import artifactregistry_gauth as gauth

    for name, folder in (
        ("PIP_UNIX_SYSTEM_DIR", "etc"),
        ("PIP_UNIX_XDG_DIR", "etc/xdg"),
        ("PIP_MACOS_SYSTEM_DIR", "Library"),
    ):
        monkeypatch.setattr(gauth, name, str(system / folder))
    for name in ("XDG_CONFIG_DIRS", "XDG_DATA_DIRS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALLUSERSPROFILE", str(system / "ProgramData"))


@pytest.fixture
def bin_dir(isolated_env):
    """The empty directory at the front of PATH where fake executables go."""
    return isolated_env.bin_dir


@pytest.fixture
def home_dir(isolated_env):
    """The test's HOME."""
    return isolated_env.home


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


# --- Secrets that must never leave the program ------------------------------------------------

pytest_plugins = ("pytester",)  # test_security.py runs the guard on tests that leak


_SCAN = pytest.StashKey()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Each test starts with an empty registry of secrets."""
    item.stash[_SCAN] = fakes.start_scan()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """What a session- or module-scoped fixture registers counts in every test that uses it."""
    if fixturedef.scope == "function":
        yield
        return
    with fakes.registering_for(fixturedef.argname):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail the test at teardown if a secret left the program; mask secrets in any failure."""
    report = (yield).get_result()
    scan = item.stash.get(_SCAN, None)
    if scan is None:
        return
    fakes.add_fixture_secrets(scan, getattr(item, "fixturenames", ()))
    error = call.excinfo.value if call.excinfo is not None else None
    if type(error).__module__ == "artifactregistry_gauth":
        scan.saw("error that failed the test", str(error))
    if call.when == "teardown":
        fakes.stop_scan()
        if scan.secrets:
            for title, text in report.sections:
                captured, _, rest = title.partition(" ")
                stream, _, when = rest.partition(" ")
                if captured == "Captured" and stream in ("stdout", "stderr"):
                    scan.saw(f"{stream} of the test ({when})", text)
        leaks = scan.leaks()
        if leaks:
            where = "; ".join(f"{count} in the {place}" for place, count in leaks.items())
            message = (
                f"secrets_never_leak: {sum(leaks.values())} secret(s) left the program: {where}"
            )
            if report.failed:
                report.sections.append(("secrets_never_leak", message))
            else:
                report.outcome, report.longrepr = "failed", message
    if report.failed and scan.secrets:
        report.sections[:] = [(title, scan.mask(text)) for title, text in report.sections]
        if report.longrepr is not None and scan.mask(str(report.longrepr)) != str(report.longrepr):
            report.longrepr = scan.mask(str(report.longrepr))


class _LogScan(logging.Handler):
    """Keeps every log record of the module, to scan for secrets after the test."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(autouse=True)
def secrets_never_leak(request, isolated_env, monkeypatch):
    """No secret of the test leaves the program: the test fails at teardown, saying how many
    showed where, never which.

    A secret is what `fakes.register_secret` was given during the test, or while a
    session-scoped fixture the test uses (`rsa_key`) was set up; each test starts empty.
    What leaves the program:

    - the test's captured stdout and stderr (read at teardown from pytest's report), and what
      our command line or keyring's printed in a subprocess the test started
      (`Popen.communicate`, so `subprocess.run` too) or in this process
      (`fakes.testing.run_main`): stdout may show an access token only for `token`, `get`,
      `netrc` without `--output` and `credential-helper` (the commands that print one),
      stderr never;
    - every log record of the ``artifactregistry_gauth`` logger, at debug level;
    - the names of the files in the cache directory after the test;
    - error messages that reach the test: every exception `pytest.raises` catches, and an
      error of the module that fails the test. The module itself is not patched: an
      error it builds and keeps to itself is not a leak, and one it prints or logs is seen
      where it goes.

    A failing test's report shows *** in place of any secret of the test.
    """
    scan = request.node.stash[_SCAN]
    logger = logging.getLogger("artifactregistry_gauth")
    logs, level = _LogScan(), logger.level
    logger.addHandler(logs)
    logger.setLevel(logging.DEBUG)
    monkeypatch.setattr(subprocess.Popen, "communicate", _scanned_communicate)
    monkeypatch.setattr(pytest, "raises", _scanned_raises(scan, pytest.raises))
    try:
        yield
    finally:
        logger.removeHandler(logs)
        logger.setLevel(level)
    fakes.add_fixture_secrets(scan, request.fixturenames)
    if not scan.secrets:
        return
    scan.saw("log", "\n".join(record.getMessage() for record in logs.records))
    cache_dirs = {
        os.environ.get("ARTIFACTREGISTRY_GAUTH_CACHE_DIR"),
        isolated_env.default_cache_dir,
    }
    for cache_dir in filter(None, cache_dirs):
        for _, folders, files in os.walk(cache_dir):
            scan.saw("names of the files in the cache directory", "\n".join(folders + files))


_real_communicate = subprocess.Popen.communicate


def _scanned_communicate(process, *args, **kwargs):
    """Popen.communicate; what our command line or keyring's prints goes to the guard."""
    stdout, stderr = _real_communicate(process, *args, **kwargs)
    argv = [process.args] if isinstance(process.args, (str, bytes)) else list(process.args)
    if fakes.is_ours(argv) and _started_by_a_test():
        fakes.scan_output(argv, stdout, stderr)
    return stdout, stderr


def _started_by_a_test():
    """Whether the code that called into subprocess is a test's (not the module's, not a fake's)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == "subprocess":
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return not name.startswith(("artifactregistry_gauth", "fakes.")) or name == "fakes.testing"


def _scanned_raises(scan, raises):
    """pytest.raises, whose caught exception's message goes to the guard."""

    def scanned(*args, **kwargs):
        caught = raises(*args, **kwargs)
        if isinstance(caught, pytest.ExceptionInfo):  # the form that calls a function
            scan.saw(f"error caught by pytest.raises ({caught.typename})", str(caught.value))
            return caught
        return _ScannedRaises(scan, caught)

    return scanned


class _ScannedRaises:
    """The context manager of pytest.raises, telling the guard what it caught."""

    def __init__(self, scan, context):
        self._scan, self._context = scan, context

    def __enter__(self):
        self._info = self._context.__enter__()
        return self._info

    def __exit__(self, *exc_info):
        suppressed = self._context.__exit__(*exc_info)
        if suppressed:
            where = f"error caught by pytest.raises ({self._info.typename})"
            self._scan.saw(where, str(self._info.value))
        return suppressed

    def __getattr__(self, name):
        return getattr(self._context, name)


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


# --- Google's token endpoint, metadata servers, gcloud -----------------------------------------


@pytest.fixture
def fake_google():
    """A fake Google OAuth2 token endpoint at fake_google.token_url."""
    with FakeGoogle() as fake:
        yield fake


@pytest.fixture(autouse=True)
def off_google_hardware(tmp_path, monkeypatch):
    """Every test runs as on a machine whose DMI product name is not Google's (no such file).

    A test that needs Google's hardware requests `on_google_hardware`.
    """
    product_name = tmp_path / "dmi-product-name"
    try:
        import artifactregistry_gauth as gauth
    except ModuleNotFoundError:
        return product_name
    monkeypatch.setattr(gauth, "DMI_PRODUCT_NAME", str(product_name))
    return product_name


@pytest.fixture
def on_google_hardware(off_google_hardware):
    """The machine's DMI product name says Google Compute Engine, as on GCE VMs and GKE nodes."""
    off_google_hardware.write_text("Google Compute Engine\n")


@pytest.fixture
def fake_metadata(isolated_env, monkeypatch):
    """A fake metadata server that GCE_METADATA_HOST and GCE_METADATA_IP point at."""
    with FakeMetadata() as fake:
        monkeypatch.setenv("GCE_METADATA_HOST", fake.host)
        monkeypatch.setenv("GCE_METADATA_IP", fake.host)
        yield fake


@pytest.fixture
def fake_gcloud(bin_dir, monkeypatch):
    """A fake gcloud on PATH; configure() it, then inspect calls and issued."""
    fake = FakeGcloud(bin_dir)
    if fake.on_path != bin_dir:  # Windows: the SDK's bin directory, as its installer does
        monkeypatch.setenv("PATH", os.pathsep.join([str(fake.on_path), os.environ["PATH"]]))
    yield fake
    register_secret(*fake.issued, access_token=True)  # printed by the fake, in another process
    fake.stop()


@pytest.fixture
def real_gcloud(bin_dir, tmp_path, rsa_key, monkeypatch):
    """The installed gcloud, linked into bin_dir, on fakes; skipped where none is installed."""
    if REAL_GCLOUD is None:
        pytest.skip("no Cloud SDK installed (gcloud is not on PATH)")
    with FakeGoogle(for_gcloud=True) as token_endpoint:
        iam = FakeIAMCredentials(token_endpoint)
        iam.serve()
        env = real_gcloud_env(token_endpoint, iam)
        # gcloud's wrapper needs the system's tools (dirname, readlink, python3).
        monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), ORIGINAL_PATH]))
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # for the gcloud our module starts
        link = bin_dir / "gcloud"
        link.symlink_to(REAL_GCLOUD)
        yield RealGcloud(link, env, token_endpoint, iam, rsa_key, tmp_path)
        iam.close()


@pytest.fixture(scope="session")
def real_gcloud_sdk(tmp_path_factory):
    """An SDK root of our own around the installed gcloud's code, for its `properties` file."""
    if REAL_GCLOUD is None:
        pytest.skip("no Cloud SDK installed (gcloud is not on PATH)")
    return make_sdk_root(REAL_GCLOUD, tmp_path_factory.mktemp("sdk"))


# --- TLS and the CONNECT proxy -----------------------------------------------------------------


@pytest.fixture(scope="session")
def keyring_only_venv(tmp_path_factory):
    """A virtualenv with keyring and nothing of ours (a vendored copy; a keyring blind to us)."""
    venv = tmp_path_factory.mktemp("keyring-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "keyring"],
        check=True,
        timeout=300,
    )
    return python


@pytest.fixture(scope="session")
def test_ca():
    """A throwaway certificate authority for the whole session."""
    return new_ca()


@pytest.fixture(scope="session")
def test_ca_file(test_ca, tmp_path_factory):
    """The test CA's certificate as a PEM file."""
    return write_ca_file(test_ca, tmp_path_factory.mktemp("tls") / "test-ca.pem")


@pytest.fixture(scope="session")
def google_tls_context(test_ca):
    """A server TLS context with a test-CA certificate for the Google hosts."""
    return server_context(test_ca, TLS_HOSTS)


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


@pytest.fixture(scope="session")
def rsa_key():
    """One RSA-2048 key pair for the session."""
    pair = new_rsa_key()
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
def sa_env(monkeypatch, sa_file):
    """GOOGLE_APPLICATION_CREDENTIALS names a new service-account key fake_google accepts."""
    path = sa_file()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


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


# --- Federation: Google STS, IAM credentials, AWS instance metadata, an identity provider -------


@pytest.fixture(scope="session")
def federation_tls_context(test_ca):
    """A server TLS context whose certificate also covers STS, IAM and resource manager hosts."""
    return server_context(test_ca, FEDERATION_TLS_HOSTS)


@pytest.fixture
def google_federation(fake_google, test_ca_file, federation_tls_context, monkeypatch):
    """Fake STS and IAM on loopback (plain http) and behind https://sts/iamcredentials.googleapis.com."""
    sts = FakeSTS()
    sts.serve()
    iam = FakeIAMCredentials(sts, fake_google)
    iam.serve()
    hosts = VirtualHosts(
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
