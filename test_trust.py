"""What TLS trusts: every store the user's tools trust, and pip's configuration read as pip does."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import NOT_THERE, WINE_PARTIAL_CHAIN, wine_gap
from fakes.google import GOOGLE_HOSTS, TLS_HOSTS
from fakes.network import RoutingProxy, new_ca, server_context, write_ca_file
from fakes.trust import FakeSecurity, truststore_source

REAL_PREFIX = sys.prefix
OPENSSL = shutil.which("openssl")  # found before the tests narrow PATH


def real_pip_26_3():
    """pip 26.3 itself, run from the wheel virtualenv embeds (a test dependency, via nox)."""
    try:
        import virtualenv.seed.wheels.embed as embed
    except ImportError:
        return None
    wheels = sorted(Path(embed.__file__).parent.glob("pip-26.3-*.whl"))
    if sys.version_info < (3, 10):  # pip 26.3 requires Python 3.10
        return None
    return [sys.executable, str(wheels[0] / "pip")] if wheels else None


@pytest.fixture(autouse=True)
def own_venv(monkeypatch, tmp_path):
    """The running environment's pip file is the test's (conftest isolates the system's)."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))


# --- pip's configuration files, in pip 26.3's order on each OS -------------------------------


def _places(platform: str, home: Path, tmp_path: Path) -> list:
    """(label, file) for each of pip's places on ``platform``, in the order pip loads them."""
    system = tmp_path / "system"
    venv = tmp_path / "venv"
    if platform == "win32":
        return [
            ("ProgramData", system / "ProgramData" / "pip" / "pip.ini"),
            ("legacy-user", home / "pip" / "pip.ini"),
            ("APPDATA", home / "AppData" / "Roaming" / "pip" / "pip.ini"),
            ("venv", venv / "pip.ini"),
            ("PIP_CONFIG_FILE", tmp_path / "named.ini"),
        ]
    if platform == "darwin":
        return [
            ("Library", system / "Library" / "pip" / "pip.conf"),
            ("legacy-user", home / ".pip" / "pip.conf"),
            ("Application-Support", home / "Library" / "Application Support" / "pip" / "pip.conf"),
            ("venv", venv / "pip.conf"),
            ("PIP_CONFIG_FILE", tmp_path / "named.conf"),
        ]
    return [
        ("etc-xdg", system / "etc" / "xdg" / "pip" / "pip.conf"),
        ("etc", system / "etc" / "pip.conf"),
        ("legacy-user", home / ".pip" / "pip.conf"),
        ("xdg-config-home", home / ".config" / "pip" / "pip.conf"),
        ("venv", venv / "pip.conf"),
        ("PIP_CONFIG_FILE", tmp_path / "named.conf"),
    ]


@pytest.fixture
def pip_places(monkeypatch, tmp_path, home_dir, request):
    """pip's places on the simulated platform (request.param), with its variables set."""
    platform = request.param
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("USERPROFILE", str(home_dir))  # what ~ is on Windows
    if platform == "darwin":
        monkeypatch.delenv("XDG_DATA_HOME")  # else pip looks there, not in ~/Library
    places = _places(platform, home_dir, tmp_path)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(places[-1][1]))
    return places


def users_pip_file() -> Path:
    """The user's own pip file on this OS (pip.conf under ~/.config, or %APPDATA%'s pip.ini)."""
    return Path(gauth.pip_config_files()[-2])  # before the environment's own file


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PLATFORMS = ["linux", "darwin", "win32"]
USER_PLACES = ("legacy-user", "APPDATA", "Application-Support", "xdg-config-home")
PLACE_ROWS = [
    pytest.param(platform, index, id=f"{platform}-{label}")
    for platform in PLATFORMS
    for index, (label, _) in enumerate(_places(platform, Path("~"), Path("/")))
]


@pytest.mark.parametrize(("pip_places", "index"), PLACE_ROWS, indirect=["pip_places"])
def test_pip_config_files_are_read_in_pips_order_the_later_winning(pip_places, index):
    if pip_places[index][0] != "PIP_CONFIG_FILE":
        os.environ.pop("PIP_CONFIG_FILE")  # a named file that exists hides the user's files
    for label, path in pip_places[: index + 1]:
        _write(path, f"[global]\ncert = {label}\n")
    label, path = pip_places[index]
    assert gauth.pip_option("cert") == (label, f"global.cert in {path}")
    existing = [f for f in gauth.pip_config_files() if os.path.exists(f)]
    hidden = USER_PLACES if label == "PIP_CONFIG_FILE" else ()  # a named file hides them
    assert existing == [str(p) for name, p in pip_places[: index + 1] if name not in hidden]


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_an_install_section_anywhere_beats_a_global_one_anywhere(pip_places):
    first, last = pip_places[0][1], pip_places[-1][1]
    _write(first, "[install]\ncert = system-install\n")
    _write(last, "[global]\ncert = named-global\n")
    assert gauth.pip_option("cert") == ("system-install", f"install.cert in {first}")


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_pip_cert_beats_every_file(monkeypatch, pip_places):
    _write(pip_places[-1][1], "[install]\ncert = named\n")
    monkeypatch.setenv("PIP_CERT", "/from/the/variable.pem")
    assert gauth.pip_option("cert") == ("/from/the/variable.pem", "$PIP_CERT")


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_an_existing_pip_config_file_hides_the_users_files(pip_places):
    for _, path in pip_places[:-1]:
        _write(path, "[global]\ncert = user\n")
    _write(pip_places[-1][1], "[global]\ntimeout = 5\n")
    users = [str(p) for label, p in pip_places if label in ("legacy-user", "APPDATA")]
    assert not set(users) & set(gauth.pip_config_files())
    assert gauth.pip_option("cert")[0] == "user"  # from the venv's file, still read


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_pip_config_file_set_to_devnull_reads_no_file(monkeypatch, pip_places):
    for _, path in pip_places:
        _write(path, "[global]\ncert = somewhere\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    assert gauth.pip_config_files() == []
    assert gauth.pip_option("cert") == ("", "")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[global]\nCERT = upper\n", "upper"),
        ("[global]\n--cert = dashes\n", "dashes"),
        ("[global]\nkeyring_provider = x\ncert = a\n", "a"),
        ("[global]\ncert =\n", ""),
        ("[global]\ncert = %(home)s/ca.pem\n", "%(home)s/ca.pem"),
        ("[install\ncert = broken\n", ""),
        ("[global]\ncert = a\n[global]\ncert = b\n", ""),
        ("cert = no section\n", ""),
    ],
    ids=[
        "upper",
        "dashes",
        "underscores",
        "empty",
        "no-interpolation",
        "bad-header",
        "dup",
        "bare",
    ],
)
def test_pip_files_are_parsed_as_pip_parses_them(text, value):
    _write(users_pip_file(), text)
    assert gauth.pip_option("cert")[0] == value


@pytest.mark.parametrize(
    "place", ["ProgramData", "legacy-user", "APPDATA", "venv", "PIP_CONFIG_FILE"]
)
@pytest.mark.parametrize("pip_places", ["win32"], indirect=True)
def test_doctor_reads_pips_windows_files(pip_places, place):
    path = dict(pip_places)[place]
    if place != "PIP_CONFIG_FILE":
        os.environ.pop("PIP_CONFIG_FILE")
    _write(path, "[global]\nno-input = yes\nkeyring-provider = subprocess\n")
    assert gauth._pip_setting("no-input", "") == "yes"
    assert gauth._pip_setting("keyring-provider", "auto") == "subprocess"


def test_doctor_takes_pips_last_file_not_its_first():
    _write(users_pip_file(), "[global]\nkeyring-provider = import\n")
    _write(Path(gauth.pip_config_files()[-1]), "[global]\nkeyring-provider = subprocess\n")
    assert gauth._pip_setting("keyring-provider", "auto") == "subprocess"  # the venv's wins


def _files_pip_loads(output: str) -> list:
    """The files `pip config debug` lists, in the order pip loads them (global, user, site, env)."""
    variants: dict = {}
    current = None
    for line in output.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            current = variants.setdefault(line[:-1], [])
        elif line.startswith("  ") and not line.startswith("   ") and ", exists:" in line:
            current.append(line.strip().rsplit(", exists:", 1)[0])
    return [f for name in ("global", "user", "site", "env") for f in variants.get(name, [])]


@pytest.mark.skipif(sys.platform != "linux", reason="real pip reads the files of its own OS")
@pytest.mark.skipif(
    real_pip_26_3() is None,
    reason="no pip 26.3 wheel (virtualenv) here, or a Python it does not support",
)
@pytest.mark.parametrize("named", ["unset", "missing", "existing"])
def test_pip_config_files_match_real_pip_26_3(monkeypatch, tmp_path, named):
    monkeypatch.setattr(gauth, "PIP_UNIX_SYSTEM_DIR", "/etc")  # what real pip reads
    monkeypatch.setattr(gauth, "PIP_UNIX_XDG_DIR", "/etc/xdg")
    monkeypatch.setattr(sys, "prefix", REAL_PREFIX)
    monkeypatch.setenv("XDG_CONFIG_DIRS", f"{tmp_path / 'one'}:relative/ignored:{tmp_path / 'two'}")
    if named != "unset":
        monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "named.conf"))
    if named == "existing":
        _write(tmp_path / "named.conf", "[global]\ntimeout = 5\n")
    done = subprocess.run(
        [*real_pip_26_3(), "config", "debug"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert gauth.pip_config_files() == _files_pip_loads(done.stdout)


# --- TLS: the union of every store, each row with a CA only that store holds ----------------


@dataclass
class PrivateGoogle:
    """The fake Google at its https:// names, its certificate signed by a CA of this test."""

    ca_file: Path
    fake: object

    def ca_dir(self, directory: Path) -> Path:
        """A c_rehash-style directory holding the CA, as SSL_CERT_DIR wants one."""
        if OPENSSL is None:
            pytest.skip("no openssl command to name the file by its subject hash")
        done = subprocess.run(
            [OPENSSL, "x509", "-hash", "-noout", "-in", str(self.ca_file)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        directory.mkdir()
        shutil.copy(self.ca_file, directory / f"{done.stdout.strip()}.0")
        return directory


@pytest.fixture
def private_google(monkeypatch, tmp_path, fake_google, user_file):
    """An authorized_user ADC file refreshed at a Google only this test's CA vouches for."""
    ca = new_ca()
    server = fake_google.serve(server_context(ca, TLS_HOSTS))
    proxy = RoutingProxy({host: server.port for host in GOOGLE_HOSTS}).start()
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    monkeypatch.setattr(gauth, "_TLS_CONTEXTS", {})
    yield PrivateGoogle(write_ca_file(ca, tmp_path / "private-ca.pem"), fake_google)
    proxy.stop()


def _module(monkeypatch, name: str, source: str) -> None:
    """Install a module ``name`` made of ``source`` (our own fakes of optional modules)."""
    module = type(sys)(name)
    exec(source, module.__dict__)  # noqa: S102 - a fake written by this test file
    monkeypatch.setitem(sys.modules, name, module)


def _no_os_store_modules(monkeypatch) -> None:
    for name in ("truststore", "pip._vendor.truststore"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed


def trust_by_variable(name):
    def put(monkeypatch, google, tmp_path):
        path = google.ca_dir(tmp_path / "ca-dir") if name == "SSL_CERT_DIR" else google.ca_file
        monkeypatch.setenv(name, str(path))

    return put


def trust_by_pip_conf(monkeypatch, google, tmp_path):
    _write(
        users_pip_file(),
        f"[global]\ncert = {google.ca_file}\n",
    )


def trust_by_gcloud_config(monkeypatch, google, tmp_path):
    config = Path(os.environ["CLOUDSDK_CONFIG"]) / "configurations" / "config_default"
    _write(config, f"[core]\ncustom_ca_certs_file = {google.ca_file}\n")


def trust_by_truststore(monkeypatch, google, tmp_path):
    _module(monkeypatch, "truststore", truststore_source(google.ca_file))


def trust_by_pips_truststore(monkeypatch, google, tmp_path):
    monkeypatch.setitem(sys.modules, "truststore", None)
    _module(monkeypatch, "pip._vendor.truststore", truststore_source(google.ca_file))


def trust_by_certifi(monkeypatch, google, tmp_path):
    _module(monkeypatch, "certifi", f"def where():\n    return {str(google.ca_file)!r}\n")


def trust_by_openssl_defaults(monkeypatch, google, tmp_path):
    def load(context):
        context.load_verify_locations(cafile=str(google.ca_file))

    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", load)


def trust_by_macos_keychain(monkeypatch, google, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    _no_os_store_modules(monkeypatch)  # a Python without truststore: the keychains' export
    FakeSecurity(Path(os.environ["PATH"].split(os.pathsep)[0]), google.ca_file)


def trust_by_windows_root_store(monkeypatch, google, tmp_path):
    monkeypatch.setattr(sys, "platform", "win32")
    _no_os_store_modules(monkeypatch)
    calls = []

    def load_store(context, name, purpose):  # Windows' enum_certificates, simulated
        calls.append(name)
        if name == "ROOT":
            context.load_verify_locations(cafile=str(google.ca_file))

    monkeypatch.setattr(ssl.SSLContext, "_load_windows_store_certs", load_store, raising=False)


TRUST_ROWS = {
    "SSL_CERT_FILE": trust_by_variable("SSL_CERT_FILE"),
    "SSL_CERT_DIR": trust_by_variable("SSL_CERT_DIR"),
    "REQUESTS_CA_BUNDLE": trust_by_variable("REQUESTS_CA_BUNDLE"),
    "CURL_CA_BUNDLE": trust_by_variable("CURL_CA_BUNDLE"),
    "PIP_CERT": trust_by_variable("PIP_CERT"),
    "pip.conf-cert": trust_by_pip_conf,
    "gcloud-custom_ca_certs_file": trust_by_gcloud_config,
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE": trust_by_variable("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE"),
    "truststore": trust_by_truststore,
    "pip._vendor.truststore": trust_by_pips_truststore,
    "certifi": trust_by_certifi,
    "openssl-default-paths": trust_by_openssl_defaults,
    "macos-keychain": trust_by_macos_keychain,
    "windows-root-store": trust_by_windows_root_store,
}


@pytest.fixture
def ordinary_stores(monkeypatch, tmp_path):
    """Another CA in each variable a tool reads, as on a machine that names the system bundle."""
    other = write_ca_file(new_ca(), tmp_path / "other-ca.pem")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT"):
        monkeypatch.setenv(name, str(other))
    return other


POSIX_ONLY_ROWS = {"macos-keychain": "the fake `security` is a #! script"}


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            row,
            marks=pytest.mark.skipif(
                row in POSIX_ONLY_ROWS and sys.platform == "win32",
                reason=POSIX_ONLY_ROWS.get(row, ""),
            ),
        )
        for row in TRUST_ROWS
    ],
)
def test_a_ca_that_only_one_store_holds_is_trusted(
    monkeypatch, tmp_path, private_google, ordinary_stores, row
):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT"):
        if row.startswith(name) or (row.startswith("pip") and name == "PIP_CERT"):
            monkeypatch.delenv(name)  # this row's store holds the private CA instead
    TRUST_ROWS[row](monkeypatch, private_google, tmp_path)
    assert private_google.fake.is_live(gauth.get_token())


@wine_gap(WINE_PARTIAL_CHAIN)
def test_without_the_ca_in_any_store_the_certificate_is_not_trusted(
    private_google, ordinary_stores
):
    with pytest.raises(gauth.CredentialError, match="is not trusted"):
        gauth.get_token()


def test_on_windows_the_store_is_named_as_the_system_root_and_ca_stores(
    monkeypatch, tmp_path, private_google
):
    trust_by_windows_root_store(monkeypatch, private_google, tmp_path)
    assert private_google.fake.is_live(gauth.get_token())
    stores = [store["store"] for store in gauth._tls_context()[1]]
    assert stores[0] == "the Windows system certificate stores (ROOT and CA)"
    assert not [store for store in stores if "OpenSSL" in store]


def test_a_warm_call_never_builds_the_tls_context(monkeypatch, private_google):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(private_google.ca_file))
    token = gauth.get_token()
    monkeypatch.setattr(gauth, "_TLS_CONTEXTS", {})  # a new process, the disk cache warm
    gauth._forget_tokens()

    def no_context():
        raise AssertionError("a warm call built a TLS context")

    monkeypatch.setattr(gauth, "_new_tls_context", no_context)
    assert gauth.get_token() == token


def test_doctor_lists_each_store_and_where_it_came_from(monkeypatch, tmp_path, private_google):
    trust_by_pip_conf(monkeypatch, private_google, tmp_path)
    missing = tmp_path / "gone.pem"
    monkeypatch.setenv("CURL_CA_BUNDLE", str(missing))
    report = gauth.diagnose()
    assert report["token"]["ok"]
    pip_conf = users_pip_file()
    assert {
        "store": "pip's cert",
        "path": str(private_google.ca_file),
        "from": f"global.cert in {pip_conf}",
    } in report["tls"]
    text = gauth._format_report(report)
    assert "TLS trusts the union of:\n" in text
    assert f"pip's cert {private_google.ca_file} (global.cert in {pip_conf})\n" in text
    assert (
        f"  ! CURL_CA_BUNDLE {missing} ($CURL_CA_BUNDLE): NOT USED: cannot load CA "
        f"certificates from it ({NOT_THERE})\n"
    ) in text


def _real_pip_reaches(google, tmp_path) -> bool:
    """Whether real pip 26.3 trusts the private CA: it asks the fake for an index page."""
    command = [*real_pip_26_3(), "download", "--no-deps", "--no-input", "--no-cache-dir"]
    command += ["--retries", "0", "--keyring-provider", "disabled"]
    command += ["--index-url", "https://oauth2.googleapis.com/simple/", "-d", str(tmp_path / "d")]
    done = subprocess.run(
        [*command, "gauth-not-there"], capture_output=True, text=True, timeout=120
    )
    asked = any(r.path.startswith("/simple/gauth-not-there") for r in google.fake.requests)
    assert asked != ("CERTIFICATE_VERIFY_FAILED" in done.stdout + done.stderr), done.stderr
    return asked


@pytest.mark.skipif(
    real_pip_26_3() is None,
    reason="no pip 26.3 wheel (virtualenv) here, or a Python it does not support",
)
@pytest.mark.parametrize("row", ["PIP_CERT", "pip.conf-cert", "none"])
def test_we_trust_what_real_pip_26_3_trusts(monkeypatch, tmp_path, private_google, row):
    if row != "none":
        TRUST_ROWS[row](monkeypatch, private_google, tmp_path)
    pip_trusts = _real_pip_reaches(private_google, tmp_path)
    assert pip_trusts == (row != "none")
    try:
        gauth.get_token()
    except gauth.CredentialError:
        we_trust = False
    else:
        we_trust = True
    assert we_trust == pip_trusts


def test_a_bundle_named_in_several_places_is_loaded_once(monkeypatch, private_google):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT"):
        monkeypatch.setenv(name, str(private_google.ca_file))
    loads = []
    real_load = ssl.SSLContext.load_verify_locations

    def counted(context, cafile=None, capath=None, cadata=None):
        loads.append(cafile)
        return real_load(context, cafile, capath, cadata)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    assert private_google.fake.is_live(gauth.get_token())
    assert str(private_google.ca_file) not in loads  # OpenSSL's defaults read SSL_CERT_FILE
    named = [s for s in gauth._tls_context()[1] if s.get("path") == str(private_google.ca_file)]
    assert [s["store"] for s in named] == [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "pip's cert",
    ]


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_with_truststore_on_macos_and_windows_a_ca_directory_is_read_at_once(
    monkeypatch, tmp_path, private_google, ordinary_stores, platform
):
    # There truststore shows the OS only the certificates loaded so far, and OpenSSL reads
    # a directory lazily, during a handshake the OS never sees.
    if platform == "win32" and sys.platform != "win32":  # no Windows stores to enumerate here
        monkeypatch.setattr(ssl.SSLContext, "_load_windows_store_certs", lambda *_: None)
    monkeypatch.setattr(sys, "platform", platform)
    _module(monkeypatch, "truststore", truststore_source(ordinary_stores))
    monkeypatch.setenv("SSL_CERT_DIR", str(private_google.ca_dir(tmp_path / "ca-dir")))
    context = gauth._tls_context()[0]
    private = ssl.PEM_cert_to_DER_cert(private_google.ca_file.read_text())
    assert private in context.get_ca_certs(binary_form=True)
    assert private_google.fake.is_live(gauth.get_token())
