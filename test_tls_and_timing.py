"""Trust stores (corporate CAs, macOS without roots), executable timing, google-auth's quirks."""

import json
import os
import ssl
import sys
import time

import pytest
import trustme

import artifactregistry_gauth as gauth
from conftest import _forget_tokens
from fakes import (
    MODE_BITS,
    NOT_THERE,
    SYMLINK,
    WINDOWS,
    WINE_PARTIAL_CHAIN,
    assert_private,
    posix_case,
    posix_only,
    wine_gap,
)
from fakes.programs import write_program
from fakes.testing import one_line
from fakes.trust import FakeSecurity, truststore_source

WORKLOAD = (
    "//iam.googleapis.com/projects/123456/locations/global/"
    "workloadIdentityPools/pool/providers/provider"
)
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT = "eyJhbGciOiJSUzI1NiJ9.waiting-helper.sig"


def forget_tokens(isolated_env):
    """Forget the tokens in memory and on disk, so that the next lookup fetches one."""
    _forget_tokens()
    for path in isolated_env.cache_dir.glob(f"*{gauth.TOKEN_FILE_SUFFIX}"):
        path.unlink()


@pytest.fixture(autouse=True)
def fresh_tls_contexts(monkeypatch):
    """Each test builds its own TLS context; the process-wide one is put back afterwards."""
    monkeypatch.setattr(gauth, "_TLS_CONTEXTS", {})


@pytest.fixture
def user_env(monkeypatch, user_file, google_https):
    """An authorized_user ADC file refreshed at https://oauth2.googleapis.com (the fake)."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    monkeypatch.delenv("SSL_CERT_FILE")
    return google_https


@pytest.fixture
def other_ca_file(tmp_path):
    """A CA that did not sign the fake Google's certificate."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


# --- CA bundles named by the environment ---------------------------------------------------


@wine_gap(WINE_PARTIAL_CHAIN)
def test_an_untrusted_certificate_error_names_the_bundles_used(
    monkeypatch, user_env, other_ca_file
):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca_file))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = one_line(caught)
    assert "TLS certificate of oauth2.googleapis.com is not trusted" in message
    assert "verified against " in message
    assert "OpenSSL's default CA paths" in message.partition("verified against ")[2]
    assert f"REQUESTS_CA_BUNDLE={other_ca_file}" in message
    assert user_env.fake.token_requests == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, NOT_THERE),
        ("", "cannot load CA certificates"),
        ("not a certificate\n", "cannot load CA certificates"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot load"),
        (b"\xff\xfe\x00garbage", "cannot load CA certificates"),
        ("fifo", "not a regular file"),
    ],
    ids=["missing", "empty", "not-pem", "bad-base64", "binary", "fifo"],
)
def test_a_broken_ca_bundle_is_named_and_the_other_stores_still_serve(
    monkeypatch, user_env, tmp_path, content, problem
):
    path = tmp_path / "corporate-ca.pem"
    if content == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes on this OS")
        os.mkfifo(path)  # loading it would block forever
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("CURL_CA_BUNDLE", str(path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(user_env.ca_file))
    assert user_env.fake.is_live(gauth.get_token())
    described = gauth.describe_trust(gauth._tls_context()[1])
    assert f"not used: CURL_CA_BUNDLE={path}: cannot load CA certificates from it (" in described
    assert problem in described


@wine_gap(WINE_PARTIAL_CHAIN)
def test_a_broken_ca_bundle_is_named_when_nothing_trusts_the_server(
    monkeypatch, user_env, tmp_path
):
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("PIP_CERT", str(missing))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = one_line(caught)
    assert f"not used: pip's cert {missing}: cannot load CA certificates from it (" in message


# --- no roots in OpenSSL's default paths: python.org's macOS Python -------------------------


OPENSSL_DEFAULTS = "OpenSSL's default CA paths as the default store (Windows': its system stores)"


class NoDefaultRoots:
    """Simulates a Python whose OpenSSL default paths hold nothing, and its optional modules."""

    def __init__(self, monkeypatch, tmp_path, ca_file):
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.ca_file = str(ca_file)
        monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", lambda context: None)
        # Windows: load_default_certs reads the system ROOT and CA stores instead.
        monkeypatch.setattr(
            ssl.SSLContext, "_load_windows_store_certs", lambda *args: None, raising=False
        )
        self.default_paths(capath=None)
        for name in ("truststore", "pip._vendor.truststore", "certifi", "pip._vendor.certifi"):
            monkeypatch.setitem(sys.modules, name, None)  # as if not installed

    def default_paths(self, capath):
        empty = ssl.DefaultVerifyPaths(None, capath, "SSL_CERT_FILE", "", "SSL_CERT_DIR", "")
        self.monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: empty)

    def importable(self, name, source):
        """Put a package ``name`` with ``source`` as its __init__ on sys.path."""
        root = self.tmp_path / f"site-{name}"
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(source)
        self.monkeypatch.delitem(sys.modules, name)
        self.monkeypatch.syspath_prepend(str(root))

    def truststore(self, ca_file=None):
        self.importable("truststore", truststore_source(ca_file or self.ca_file))

    def certifi(self):
        self.importable("certifi", f"def where():\n    return {self.ca_file!r}\n")


@pytest.fixture
def no_default_roots(monkeypatch, tmp_path, user_env):
    return NoDefaultRoots(monkeypatch, tmp_path, user_env.ca_file)


def test_without_default_roots_the_os_store_is_used_through_truststore(user_env, no_default_roots):
    no_default_roots.truststore()
    assert user_env.fake.is_live(gauth.get_token())
    assert sys.modules["truststore"].built == [ssl.PROTOCOL_TLS_CLIENT]


def test_without_truststore_pips_vendored_copy_is_used(monkeypatch, user_env, no_default_roots):
    namespace = {}
    exec(truststore_source(user_env.ca_file), namespace)  # noqa: S102 - our own fake module
    vendored = type(sys)("pip._vendor.truststore")
    vendored.__dict__.update(namespace)
    monkeypatch.setitem(sys.modules, "pip._vendor.truststore", vendored)
    assert user_env.fake.is_live(gauth.get_token())
    assert vendored.built == [ssl.PROTOCOL_TLS_CLIENT]


def test_without_truststore_certifi_is_used(user_env, no_default_roots):
    no_default_roots.certifi()
    assert user_env.fake.is_live(gauth.get_token())
    stores = gauth._tls_context()[1]
    assert {
        "store": "certifi's CA bundle",
        "path": str(user_env.ca_file),
        "from": "certifi",
    } in stores


def test_the_tls_context_is_built_once_per_process(user_env, no_default_roots, isolated_env):
    no_default_roots.truststore()
    gauth.get_token()
    forget_tokens(isolated_env)
    gauth.get_token()
    assert len(user_env.fake.token_requests) == 2
    assert len(sys.modules["truststore"].built) == 1


@posix_only(OPENSSL_DEFAULTS)
def test_a_default_ca_directory_counts_as_roots_before_it_is_read(
    tmp_path, user_env, no_default_roots
):
    capath = tmp_path / "certs"
    capath.mkdir()
    (capath / "0a1b2c3d.0").write_text("read only when a lookup needs it")
    no_default_roots.default_paths(capath=str(capath))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = one_line(caught)
    assert f"verified against OpenSSL's default CA paths {capath}" in message
    assert "hold no certificates" not in message


@pytest.mark.parametrize(
    ("available", "store"),
    [
        ("truststore", "verified against the OS trust store via truststore"),
        posix_case(
            "nothing",
            "not used: OpenSSL's default CA paths: they hold no certificates",
            reason=OPENSSL_DEFAULTS,
        ),
    ],
)
def test_an_untrusted_certificate_error_names_the_store_used(
    user_env, no_default_roots, other_ca_file, available, store
):
    if available == "truststore":
        no_default_roots.truststore(other_ca_file)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = one_line(caught)
    assert store in message
    assert "REQUESTS_CA_BUNDLE" in message  # the fix


# --- macOS: the system keychains through `security` ----------------------------------------


@pytest.fixture
def on_macos(monkeypatch, bin_dir, isolated_env, user_env, no_default_roots):
    if WINDOWS:
        # sys.platform "darwin" would also send the standard library down its macOS-only
        # code there (urllib's proxy lookup imports _scproxy), which no Windows Python has.
        pytest.skip("POSIX only: macOS is simulated through sys.platform on a POSIX host")
    monkeypatch.setattr(sys, "platform", "darwin")
    return FakeSecurity(bin_dir, user_env.ca_file)


def macos_roots_file(isolated_env):
    return isolated_env.cache_dir / "macos-roots.pem"


def test_on_macos_without_roots_the_keychain_roots_are_exported_and_cached(
    user_env, on_macos, isolated_env
):
    assert user_env.fake.is_live(gauth.get_token())
    (call,) = on_macos.calls
    assert call.startswith("find-certificate -a -p ")
    assert call.split()[3:] == list(gauth.MACOS_KEYCHAINS)
    cached = macos_roots_file(isolated_env)
    assert_private(cached)
    assert [p.name for p in isolated_env.cache_dir.iterdir() if p.suffix == ".tmp"] == []


def test_a_new_process_reuses_the_cached_keychain_roots(
    monkeypatch, user_env, on_macos, isolated_env
):
    gauth.get_token()
    monkeypatch.setattr(gauth, "_TLS_CONTEXTS", {})
    forget_tokens(isolated_env)
    assert user_env.fake.is_live(gauth.get_token())
    assert len(on_macos.calls) == 1


def test_stale_keychain_roots_are_exported_again(monkeypatch, user_env, on_macos, isolated_env):
    gauth.get_token()
    monkeypatch.setattr(gauth, "_TLS_CONTEXTS", {})
    forget_tokens(isolated_env)
    old = time.time() - gauth.MACOS_ROOTS_LIFE - 60
    os.utime(macos_roots_file(isolated_env), (old, old))
    gauth.get_token()
    assert len(on_macos.calls) == 2


@pytest.mark.parametrize(
    "planted",
    [
        posix_case("writable-by-others", reason=MODE_BITS),
        posix_case("symlink", reason=SYMLINK),
    ],
)
def test_a_planted_keychain_roots_file_is_not_trusted(
    user_env, on_macos, isolated_env, other_ca_file, planted
):
    isolated_env.cache_dir.mkdir(mode=0o700, exist_ok=True)
    cached = macos_roots_file(isolated_env)
    if planted == "symlink":
        cached.symlink_to(other_ca_file)
    else:
        cached.write_text(other_ca_file.read_text())
        cached.chmod(0o666)
    assert user_env.fake.is_live(gauth.get_token())
    assert len(on_macos.calls) == 1
    assert not cached.is_symlink()
    assert_private(cached)


def test_keychain_roots_are_used_though_one_keychain_is_missing(monkeypatch, user_env, on_macos):
    monkeypatch.setenv("FAKE_SECURITY_EXIT", "50")  # security's exit for a missing keychain
    assert user_env.fake.is_live(gauth.get_token())


def test_on_macos_the_keychains_join_a_default_bundle_that_lacks_the_ca(
    monkeypatch, user_env, on_macos, other_ca_file
):
    # Homebrew's, pyenv's or conda's Python: a bundle of its own, the corporate CA in the keychain.
    def own_bundle(context):
        context.load_verify_locations(cafile=str(other_ca_file))

    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", own_bundle)
    assert user_env.fake.is_live(gauth.get_token())
    assert len(on_macos.calls) == 1


def test_on_macos_truststore_asks_the_keychains_itself(user_env, on_macos, no_default_roots):
    no_default_roots.truststore()
    assert user_env.fake.is_live(gauth.get_token())
    assert on_macos.calls == []


@pytest.mark.parametrize(
    "output",
    ["", "security: SecKeychainSearchCopyNext: The specified item could not be found.\n"],
    ids=["nothing", "no-certificates"],
)
def test_keychains_without_certificates_leave_the_empty_default(
    bin_dir, user_env, on_macos, isolated_env, output
):
    (bin_dir / "security.pem").write_text(output)
    with pytest.raises(gauth.CredentialError, match="they hold no certificates"):
        gauth.get_token()
    assert not macos_roots_file(isolated_env).exists()


# --- executable-sourced federation: its own timeout, then the network's budget --------------

_WAITING_HELPER = """
import json, sys, time
time.sleep(float(sys.argv[1]))  # an SSO helper waiting for its person
json.dump({"version": 1, "success": True, "token_type": sys.argv[2], "id_token": sys.argv[3],
           "expiration_time": int(time.time()) + 3600}, sys.stdout)
"""


def test_an_executable_slower_than_the_lookup_budget_but_within_its_timeout_succeeds(
    monkeypatch, tmp_path, bin_dir, google_federation
):
    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 1.0)
    helper = write_program(bin_dir / "sso-helper", _WAITING_HELPER)
    google_federation.sts.add_provider(WORKLOAD, ID_TOKEN_TYPE, SUBJECT)
    info = {
        "type": "external_account",
        "audience": WORKLOAD,
        "subject_token_type": ID_TOKEN_TYPE,
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {
            "executable": {
                "command": f"{helper} 1.5 {ID_TOKEN_TYPE} {SUBJECT}",
                "timeout_millis": 5000,
            }
        },
    }
    path = tmp_path / "executable.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    assert google_federation.sts.is_live(gauth.get_token())


# --- google-auth's behaviour where ours differed -------------------------------------------


def test_a_missing_gcloud_adc_file_named_by_the_variable_falls_through(
    monkeypatch, isolated_env, fake_gcloud
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", gauth.gcloud_adc_path())
    assert gauth.get_token() in fake_gcloud.issued


def test_any_other_missing_adc_file_named_by_the_variable_is_a_hard_error(
    monkeypatch, isolated_env, fake_gcloud
):
    other = isolated_env.gcloud_config / "other_credentials.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(other))
    with pytest.raises(gauth.CredentialError, match="other_credentials.json.*was not found"):
        gauth.get_token()
    assert fake_gcloud.calls == []


@pytest.mark.parametrize(
    "reply",
    [
        {"error": "internal_failure"},
        {"error": "server_error", "error_description": "try later"},
        {"error": "temporarily_unavailable"},
        {"error": "invalid_request", "error_description": "temporarily_unavailable"},
    ],
    ids=["internal_failure", "server_error", "temporarily_unavailable", "in-description"],
)
def test_oauth_errors_that_say_try_again_are_retried(monkeypatch, sa_file, fake_google, reply):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script((400, reply))
    assert fake_google.is_live(gauth.get_token())
    assert len(fake_google.token_requests) == 2


@pytest.mark.parametrize(
    "reply",
    [
        {"error": "invalid_grant", "error_description": "server_error in the text"},
        {"error": ["server_error"]},
        {"error": {"status": "server_error"}},
        "server_error",
    ],
    ids=["other-code", "list", "object", "not-json"],
)
def test_other_oauth_errors_are_not_retried(monkeypatch, sa_file, fake_google, reply):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script((400, reply))
    with pytest.raises(gauth.CredentialError, match="HTTP 400"):
        gauth.get_token()
    assert len(fake_google.token_requests) == 1


def test_an_oauth_error_that_says_try_again_is_given_up_on_after_three_tries(
    monkeypatch, sa_file, fake_google
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script(*[(400, {"error": "temporarily_unavailable"})] * 3)
    with pytest.raises(gauth.CredentialError, match="HTTP 400, temporarily_unavailable"):
        gauth.get_token()
    assert len(fake_google.token_requests) == 3
