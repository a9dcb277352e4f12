"""Specification of artifactregistry_gauth, run against fake Google servers on loopback."""

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import WINDOWS
from fakes.testing import run_cli

INDEX = "https://us-python.pkg.dev/proj/repo/simple/"
ROOT = Path(__file__).resolve().parent


# --- which keyring questions we answer ----------------------------------------------------


@pytest.mark.parametrize(
    ("service", "username", "answers"),
    [
        (INDEX, "oauth2accesstoken", True),
        (INDEX, None, True),
        (INDEX, "", True),
        ("https://us-python.pkg.dev/proj/repo/", None, True),
        ("https://europe-west1-python.pkg.dev", None, True),
        ("us-python.pkg.dev", None, True),  # pip and poetry ask with the bare host
        ("us-python.pkg.dev:443", "oauth2accesstoken", True),  # uv adds an explicit port
        ("HTTPS://US-PYTHON.PKG.DEV/p/r/simple/", None, True),
        ("https://oauth2accesstoken@us-python.pkg.dev/p/r/simple/", None, True),
        ("https://us-pypi.pkg.dev/p/r/simple/", None, True),  # the old alpha host
        ("https://us-python.pkg.dev./p/r/", None, True),
        (INDEX, "someone-else", False),
        (INDEX, "_json_key_base64", False),
        ("http://us-python.pkg.dev/p/r/simple/", None, False),  # never over plain http
        ("https://pypi.org/simple/", None, False),
        ("pypi.org", None, False),
        ("https://pkg.dev.evil.example/simple/", None, False),
        ("https://evil.example/?q=x.pkg.dev", None, False),
        ("https://evil.example/us-python.pkg.dev/", None, False),
        ("https://us-python.pkg.dev@evil.example/", None, False),
        ("https://[::1]/simple/", None, False),
        ("python-poetry-check", "python-poetry", False),
        ("poetry-repository-private", "__poetry_source_empty_username__", False),
        ("", None, False),
    ],
)
def test_answers_only_artifact_registry_hosts_and_our_username(service, username, answers):
    assert gauth.answers_for(service, username) is answers


@pytest.mark.parametrize(
    ("hosts", "service", "answers"),
    [
        ("proxy.example.com", "https://proxy.example.com/simple/", True),
        ("proxy.example.com", "proxy.example.com:8443", True),
        ("proxy.example.com", "https://other.example.com/simple/", False),
        ("*.corp.example", "https://pypi.corp.example/simple/", True),
        ("*.corp.example", "https://corp.example/simple/", False),
        (" a.example , *.b.example ", "https://x.b.example/", True),
        ("proxy.example.com", "http://proxy.example.com/simple/", False),
    ],
)
def test_extra_hosts_come_from_the_environment(monkeypatch, hosts, service, answers):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", hosts)
    assert gauth.answers_for(service, None) is answers


# --- the keyring backend --------------------------------------------------------------------


@pytest.fixture
def backend():
    return gauth.GooglePyPIAuth()


@pytest.fixture
def no_lookup(monkeypatch):
    """Fail the test if anything tries to find credentials."""

    def forbidden(*args, **kwargs):
        raise AssertionError("looked for credentials")

    monkeypatch.setattr(gauth, "lookup", forbidden)


def test_backend_has_priority_nine_and_is_a_keyring_backend(backend):
    import keyring.backend

    assert isinstance(backend, keyring.backend.KeyringBackend)
    assert gauth.GooglePyPIAuth.priority == 9
    assert str(backend) == "artifactregistry_gauth.GooglePyPIAuth (priority: 9)"


def test_get_password_returns_the_token(backend, monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.handed-over")
    assert backend.get_password(INDEX, "oauth2accesstoken") == "ya29.handed-over"


def test_get_credential_returns_oauth2accesstoken_and_the_token(backend, monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.handed-over")
    credential = backend.get_credential("us-python.pkg.dev", None)
    assert (credential.username, credential.password) == ("oauth2accesstoken", "ya29.handed-over")


@pytest.mark.parametrize(
    ("service", "username"),
    [
        ("python-poetry-check", "python-poetry"),
        ("poetry-repository-private", "__token__"),
        ("https://pypi.org/simple/", None),
        ("http://us-python.pkg.dev/p/r/simple/", None),
        (INDEX, "someone-else"),
    ],
)
def test_other_questions_get_none_before_any_io(backend, no_lookup, service, username):
    assert backend.get_password(service, username) is None
    assert backend.get_credential(service, username) is None


@pytest.mark.parametrize("method", ["set_password", "delete_password"])
def test_storing_is_left_to_the_next_keyring(backend, method):
    args = (INDEX, "oauth2accesstoken", "pw")[: 3 if method == "set_password" else 2]
    with pytest.raises(NotImplementedError, match="credentials come from Google"):
        getattr(backend, method)(*args)


def test_no_credentials_is_one_warning_line_and_no_answer(backend, caplog):
    with caplog.at_level(logging.WARNING, logger="artifactregistry_gauth"):
        assert backend.get_password(INDEX, "oauth2accesstoken") is None
        assert backend.get_credential("us-python.pkg.dev", None) is None  # pip's second ask
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert "no Google credentials found" in messages[0]
    assert "gcloud auth application-default login" in messages[0]
    assert "\n" not in messages[0]


def test_keyring_is_not_imported_until_the_backend_is_built():
    probe = (
        "import sys, artifactregistry_gauth; "
        "heavy = ('keyring', 'ssl', 'urllib.request', 'http.client', 'json', 'logging', "
        "'subprocess', 'email'); "
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


# --- credential sources ---------------------------------------------------------------------


def test_explicit_access_token_wins_over_everything(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.handed-over\n")
    assert gauth.get_token() == "ya29.handed-over"
    assert fake_google.token_requests == []


@pytest.mark.parametrize("pem", ["pkcs8", "pkcs1"])
def test_service_account_key_gets_a_token_with_a_verified_jwt(
    monkeypatch, sa_file, fake_google, pem
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(pem=pem)))
    token = gauth.get_token()
    assert fake_google.is_live(token)
    (request,) = fake_google.token_requests
    assert request.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert set(request.form) == {"grant_type", "assertion"}


def test_service_account_jwt_has_kid_and_the_documented_claims(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(kid="abc123")))
    gauth.get_token()
    header, claims = jwt_parts(fake_google.token_requests[0].form["assertion"])
    assert header == {"typ": "JWT", "alg": "RS256", "kid": "abc123"}
    assert claims["iss"] == "sa@proj.iam.gserviceaccount.com"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["exp"] - claims["iat"] == 3600


def test_service_account_without_key_id_sends_no_kid(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(kid=None)))
    assert fake_google.is_live(gauth.get_token())
    header, _ = jwt_parts(fake_google.token_requests[0].form["assertion"])
    assert "kid" not in header


def jwt_parts(jwt):
    header, claims, _ = jwt.split(".")
    return [json.loads(base64.urlsafe_b64decode(part + "==")) for part in (header, claims)]


def test_service_account_outside_googleapis_signs_its_own_jwt(monkeypatch, sa_file, fake_google):
    path = sa_file(universe_domain="example-universe.test")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    token = gauth.get_token()
    header, claims = jwt_parts(token)
    assert header["alg"] == "RS256"
    assert claims["sub"] == claims["iss"] == "sa@proj.iam.gserviceaccount.com"
    assert "aud" not in claims
    assert fake_google.token_requests == []


def test_authorized_user_refreshes_at_googles_token_endpoint(monkeypatch, user_file, google_https):
    path = user_file(token_uri="https://evil.example/token")  # ignored, as Google's libraries do
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    token = gauth.get_token()
    assert google_https.fake.is_live(token)
    assert google_https.connects == ["oauth2.googleapis.com:443"]
    (request,) = google_https.fake.token_requests
    assert request.form == {
        "grant_type": "refresh_token",
        "client_id": "123.apps.googleusercontent.com",
        "client_secret": "secret-xyz",
        "refresh_token": "1//refresh-abc",
    }


def test_authorized_user_sends_rapt_token_when_the_file_has_one(
    monkeypatch, user_file, google_https
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file(rapt_token="rapt-1")))
    gauth.get_token()
    assert google_https.fake.token_requests[0].form["rapt"] == "rapt-1"


def test_well_known_adc_file_is_used_when_the_variable_is_unset(user_file, google_https):
    config = Path(os.environ["CLOUDSDK_CONFIG"])
    config.mkdir(parents=True)
    user_file().rename(config / "application_default_credentials.json")
    assert google_https.fake.is_live(gauth.get_token())


def test_metadata_server_token_never_goes_through_a_proxy(monkeypatch, fake_metadata):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a proxy that refuses everything
    token = gauth.get_token()
    assert fake_metadata.is_live(token)
    paths = [r.path for r in fake_metadata.requests]
    assert paths[0] == "/"
    assert paths[-1] == (
        "/computeMetadata/v1/instance/service-accounts/default/token"
        "?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
    )
    assert all(r.headers["metadata-flavor"] == "Google" for r in fake_metadata.requests)


def test_gcloud_config_helper_runs_without_prompts_or_stdin(fake_gcloud):
    fake_gcloud.configure(account="me@example.com")
    token = gauth.get_token()
    assert token in fake_gcloud.issued
    (call,) = fake_gcloud.calls
    assert call["argv"][:3] == ["config", "config-helper", "--format=json"]
    assert call["env"]["CLOUDSDK_CORE_DISABLE_PROMPTS"] == "1"
    assert call["stdin_data"] == ""
    assert not call["stdin_isatty"]


def test_gcloud_access_token_file_is_read_without_running_gcloud(
    monkeypatch, tmp_path, fake_gcloud
):
    path = tmp_path / "token.txt"
    path.write_text("ya29.from-file\n")
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(path))
    assert gauth.get_token() == "ya29.from-file"
    assert fake_gcloud.calls == []


# --- the discovery order ----------------------------------------------------------------------


def test_explicit_adc_file_comes_before_the_well_known_file(
    monkeypatch, sa_file, user_file, google_https
):
    config = Path(os.environ["CLOUDSDK_CONFIG"])
    config.mkdir(parents=True)
    user_file().rename(config / "application_default_credentials.json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    token = gauth.get_token()
    assert google_https.fake.issued[token]["identity"] == "sa@proj.iam.gserviceaccount.com"


def test_adc_file_comes_before_the_metadata_server(monkeypatch, sa_file, fake_metadata):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    gauth.get_token()
    assert fake_metadata.requests == []


def test_metadata_server_comes_before_gcloud(fake_metadata, fake_gcloud):
    assert fake_metadata.is_live(gauth.get_token())
    assert fake_gcloud.calls == []


def test_gcloud_is_asked_when_not_on_google_cloud(fake_gcloud):
    assert gauth.get_token() in fake_gcloud.issued


def test_no_gce_check_skips_the_metadata_server(monkeypatch, fake_metadata, fake_gcloud):
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    assert gauth.get_token() in fake_gcloud.issued
    assert fake_metadata.requests == []


def test_a_non_google_server_at_the_metadata_address_is_not_trusted(fake_metadata, fake_gcloud):
    fake_metadata.google_flavor = False
    assert gauth.get_token() in fake_gcloud.issued
    assert [r.path for r in fake_metadata.requests] == ["/"]


def test_a_vm_without_service_account_falls_back_to_gcloud(fake_metadata, fake_gcloud):
    fake_metadata.no_service_account = True
    assert gauth.get_token() in fake_gcloud.issued


def test_broken_explicit_adc_file_is_a_hard_error_not_another_identity(
    monkeypatch, tmp_path, fake_gcloud
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(gauth.CredentialError, match="missing.json.*was not found"):
        gauth.get_token()
    assert fake_gcloud.calls == []


def test_nothing_found_says_what_was_tried_and_how_to_log_in():
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS is not set" in message
    assert "application_default_credentials.json" in message
    assert "not on Google Cloud" in message
    assert "gcloud is not on PATH" in message
    assert "gcloud auth application-default login" in message


# --- bad input: each gets one clear line, and nothing crashes ---------------------------------


def write(tmp_path, content, name="creds.json"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def sa_json(rsa_key, **overrides):
    info = {
        "type": "service_account",
        "client_email": "sa@proj.iam.gserviceaccount.com",
        "private_key": rsa_key.pkcs8_pem,
        "private_key_id": "k1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(overrides)
    return json.dumps({k: v for k, v in info.items() if v is not None})


BAD_FILES = [
    ("not json", "{not json", r"is not a valid JSON file \(.* at line 1 column 2\)"),
    ("not utf-8", b"\xff\xfe{}", "not UTF-8"),
    ("a list", "[]", "expected a JSON object"),
    ("no type", "{}", "does not have a valid type: type is None"),
    ("unknown type", '{"type": "martian"}', "type is 'martian', expected one of"),
    ("gdch", '{"type": "gdch_service_account"}', "Distributed Cloud.*not supported"),
    (
        "user without refresh_token",
        '{"type": "authorized_user", "client_id": "c", "client_secret": "s"}',
        "field 'refresh_token' is missing.*application-default login",
    ),
    (
        "user with empty client_id",
        '{"type": "authorized_user", "client_id": "", "client_secret": "s", "refresh_token": "r"}',
        "field 'client_id' is not a non-empty string",
    ),
    (
        "user in another universe",
        '{"type": "authorized_user", "client_id": "c", "client_secret": "s", '
        '"refresh_token": "r", "universe_domain": "other.test"}',
        "only in the googleapis.com universe",
    ),
]


@pytest.mark.parametrize(
    ("content", "message"), [row[1:] for row in BAD_FILES], ids=[r[0] for r in BAD_FILES]
)
def test_bad_adc_file_gets_a_clear_error(monkeypatch, tmp_path, content, message):
    path = write(tmp_path, content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


BAD_KEYS = [
    ("no client_email", {"client_email": None}, "field 'client_email' is missing"),
    ("no token_uri", {"token_uri": None}, "field 'token_uri' is missing"),
    ("no private_key", {"private_key": None}, "field 'private_key' is missing"),
    ("key not a string", {"private_key": 42}, "field 'private_key' is not a non-empty string"),
    ("no PEM armour", {"private_key": "MIIEvQIBADANBg"}, "no -----BEGIN PRIVATE KEY----- line"),
    (
        "PEM without end",
        {"private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n"},
        "no -----END PRIVATE KEY----- line",
    ),
    (
        "PEM not base64",
        {"private_key": "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"},
        "not base64",
    ),
    (
        "PEM of garbage",
        {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
        "expected a DER SEQUENCE",
    ),
    (
        "encrypted key",
        {
            "private_key": "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
            "-----END ENCRYPTED PRIVATE KEY-----"
        },
        "encrypted",
    ),
    ("http token_uri", {"token_uri": "http://oauth2.example.com/token"}, "must be an https URL"),
]


@pytest.mark.parametrize(
    ("overrides", "message"), [r[1:] for r in BAD_KEYS], ids=[r[0] for r in BAD_KEYS]
)
def test_bad_service_account_key_gets_a_clear_error(
    monkeypatch, tmp_path, rsa_key, overrides, message
):
    path = write(tmp_path, sa_json(rsa_key, **overrides))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    # Every row names the file, and its fix: a new key, or an https URL.
    assert str(path) in str(caught.value)
    fix = "https URL" if "https" in message else "gcloud iam service-accounts keys create"
    assert fix in str(caught.value)
    assert "MII" not in str(caught.value)


def test_a_truncated_key_is_rejected_without_leaking_it(monkeypatch, tmp_path, rsa_key):
    lines = rsa_key.pkcs8_pem.splitlines()
    truncated = "\n".join(lines[:10] + lines[-1:])
    path = write(tmp_path, sa_json(rsa_key, private_key=truncated))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match="not a usable RSA private key") as caught:
        gauth.get_token()
    assert lines[3] not in str(caught.value)


def test_a_wrong_key_is_refused_by_the_endpoint_with_the_fix(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(register=False)))
    with pytest.raises(gauth.CredentialError, match="invalid_grant.*keys create"):
        gauth.get_token()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
            "invalid_grant: Token has been expired or revoked.*application-default login",
        ),
        (
            {"error": "invalid_grant", "error_subtype": "invalid_rapt"},
            "reauthentication.*application-default login",
        ),
        (
            {"error": "invalid_grant", "error_subtype": "rapt_required"},
            "reauthentication.*application-default login",
        ),
        ({"error": "invalid_client"}, "invalid_client.*application-default login"),
    ],
)
def test_refused_user_credentials_say_run_gcloud_login(
    monkeypatch, user_file, google_https, reply, message
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    google_https.fake.script((400, reply))
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert "1//refresh-abc" not in str(caught.value)
    assert "secret-xyz" not in str(caught.value)


def test_server_errors_are_retried(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script((500, {"error": "internal_failure"}), (503, "busy"))
    assert fake_google.is_live(gauth.get_token())
    assert len(fake_google.token_requests) == 3


def test_client_errors_are_not_retried(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script((400, {"error": "invalid_request"}))
    with pytest.raises(gauth.CredentialError, match="HTTP 400, invalid_request"):
        gauth.get_token()
    assert len(fake_google.token_requests) == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((200, "<html>oops</html>"), "not JSON"),
        ((200, {"token_type": "Bearer"}), "without an access_token"),
        ((200, {"access_token": ""}), "without an access_token"),
        ((500, "down"), "HTTP 500"),
        (("RESET",), "could not reach"),
    ],
)
def test_bad_token_endpoint_answers_get_a_clear_error(
    monkeypatch, sa_file, fake_google, reply, message
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script(*[reply if len(reply) == 2 else reply[0]] * 3)
    with pytest.raises(gauth.CredentialError, match=message):
        gauth.get_token()


def test_a_hanging_token_endpoint_is_given_up_on(monkeypatch, sa_file, fake_google):
    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 1.0)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.script("HANG", "HANG", "HANG")
    with pytest.raises(gauth.CredentialError, match="timed out|gave up"):
        gauth.get_token()


FAULTS = [
    ("hang", ["HANG"] * 3, "timed out|gave up"),
    ("slow drip", ["DRIP"] * 3, "timed out|gave up"),
    ("reset", ["RESET"] * 3, "could not reach"),
    ("500 500 500", [(500, "x")] * 3, "HTTP 500"),
]


@pytest.mark.parametrize(
    ("replies", "message"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_a_faulty_token_endpoint_is_given_up_on_within_the_budget(
    monkeypatch, sa_env, fake_google, replies, message
):

    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 2.0)
    fake_google.script(*replies)
    started = time.monotonic()
    with pytest.raises(gauth.CredentialError, match=message):
        gauth.get_token()
    assert time.monotonic() - started < 6  # a hang guard, not a benchmark


def test_429_with_retry_after_is_retried_after_the_wait(sa_env, fake_google):
    fake_google.script((429, {"error": "rate_limited"}, {"Retry-After": "1"}))
    assert fake_google.is_live(gauth.get_token())
    assert len(fake_google.token_requests) == 2


def test_a_hanging_metadata_server_costs_only_the_ping_timeout(fake_metadata, fake_gcloud):
    fake_metadata.script("HANG")
    assert gauth.get_token() in fake_gcloud.issued
    assert [r.path for r in fake_metadata.requests] == ["/"]


@pytest.mark.parametrize(
    ("product_name", "timeout"), [("Google Compute Engine\n", 3.0), (None, 0.5)]
)
def test_the_metadata_ping_waits_longer_only_on_google_hardware(
    monkeypatch, tmp_path, fake_metadata, product_name, timeout
):
    dmi = tmp_path / "product_name"
    if product_name:
        dmi.write_text(product_name)
    monkeypatch.setattr(gauth, "DMI_PRODUCT_NAME", str(dmi))
    seen = []
    original = gauth.Transport.request

    def spy(self, method, url, **kwargs):
        if url.endswith("/") and method == "GET":
            seen.append(kwargs.get("timeout"))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(gauth.Transport, "request", spy)
    gauth.get_token()
    assert seen == [timeout]


@pytest.mark.parametrize("bypass", [True, False])
def test_token_endpoints_honour_the_proxy_and_no_proxy(
    monkeypatch, user_file, google_https, bypass
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    if bypass:  # straight to oauth2.googleapis.com, which the network guard refuses
        monkeypatch.setenv("NO_PROXY", "oauth2.googleapis.com")
        with pytest.raises(gauth.CredentialError, match="could not reach"):
            gauth.get_token()
        assert google_https.connects == []
    else:
        assert google_https.fake.is_live(gauth.get_token())
        assert google_https.connects == ["oauth2.googleapis.com:443"]


def test_tls_is_verified_and_ssl_cert_file_is_honoured(monkeypatch, user_file, google_https):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(gauth.CredentialError, match="TLS certificate of oauth2.googleapis.com"):
        gauth.get_token()
    assert google_https.fake.token_requests == []
    monkeypatch.setenv("SSL_CERT_FILE", str(google_https.ca_file))
    assert google_https.fake.is_live(gauth.get_token())


def test_a_redirect_from_the_token_endpoint_is_not_followed(sa_env, fake_google):
    fake_google.script((302, "", {"Location": "https://evil.example/steal"}))
    with pytest.raises(gauth.CredentialError, match="HTTP 302"):
        gauth.get_token()
    assert len(fake_google.requests) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"mode": "fail"},
            "You do not currently have an active account selected.*gcloud auth login",
        ),
        (
            {
                "mode": "fail",
                "stderr": "ERROR: (gcloud.config.config-helper) Reauthentication failed. "
                "cannot prompt during non-interactive execution.",
            },
            "Reauthentication failed.*sign in again: run `gcloud auth login`",
        ),
        ({"mode": "junk"}, "not its JSON answer"),
        ({"mode": "stderr_only"}, "not its JSON answer"),
        ({"mode": "ok", "token": ""}, "no access token for the active account"),
    ],
)
def test_failing_gcloud_gets_a_clear_error(fake_gcloud, config, message):
    fake_gcloud.configure(**config)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert "\n" not in str(caught.value)


def test_missing_access_token_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(tmp_path / "nope"))
    with pytest.raises(
        gauth.CredentialError, match="nope: cannot read it.*CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"
    ):
        gauth.get_token()


def test_metadata_server_error_is_reported(fake_metadata):
    fake_metadata.script((200, "computeMetadata/"), (403, "denied"))
    with pytest.raises(gauth.CredentialError, match="metadata server answered HTTP 403"):
        gauth.get_token()


# --- the command line ---------------------------------------------------------------------------


def test_cli_token_prints_only_the_token(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    result = run_cli("token")
    assert result.returncode == 0, result.stderr
    assert fake_google.is_live(result.stdout.strip())
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""


def test_cli_token_without_credentials_says_why_and_exits_1():
    result = run_cli("token")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("artifactregistry-gauth: no Google credentials found")
    assert "Traceback" not in result.stderr


def test_cli_version_and_help():
    assert run_cli("--version").stdout.strip() == f"artifactregistry-gauth {gauth.__version__}"
    assert "token" in run_cli("--help").stdout


def test_cli_token_refuses_a_url_that_is_not_artifact_registry(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.x")
    result = run_cli("token", "--url", "https://pypi.org/simple/")
    assert (result.returncode, result.stdout) == (2, "")
    assert "not an Artifact Registry URL" in result.stderr
    assert run_cli("token", "--url", INDEX).stdout == "ya29.x\n"


GET_CASES = [
    ("password plain", ["get", INDEX, "oauth2accesstoken"]),
    ("password json", ["--output", "json", "get", INDEX, "oauth2accesstoken"]),
    ("creds plain", ["--mode", "creds", "get", INDEX]),
    ("creds json, pip 26.2 spelling", ["--mode=creds", "--output=json", "get", INDEX]),
    ("uv spelling, options last", ["get", "us-python.pkg.dev", "--mode", "creds"]),
    ("creds with username", ["--mode", "creds", "get", INDEX, "oauth2accesstoken"]),
    ("password mode without username", ["get", INDEX]),
    ("no service", ["get"]),
    ("another host", ["get", "https://pypi.org/simple/", "oauth2accesstoken"]),
    ("another username", ["--mode", "creds", "get", INDEX, "someone"]),
    ("poetry probe", ["get", "python-poetry-check", "python-poetry"]),
]


@pytest.mark.clients
@pytest.mark.parametrize("argv", [c[1] for c in GET_CASES], ids=[c[0] for c in GET_CASES])
def test_get_answers_byte_for_byte_like_keyring_get(monkeypatch, argv):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.same-for-both")
    ours = run_cli(*argv)
    theirs = keyring_cli(*argv)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    if theirs.returncode == 2:  # the same complaint, in argparse's words
        assert theirs.stderr.splitlines()[-1].split(": ", 1)[1] in ours.stderr


@pytest.mark.clients
def test_get_without_credentials_exits_1_with_one_line_like_keyring():
    ours = run_cli("get", INDEX, "oauth2accesstoken")
    theirs = keyring_cli("get", INDEX, "oauth2accesstoken")
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "")
    assert ours.stderr.count("\n") == 1


@pytest.fixture
def keyring_link(bin_dir):
    """A `keyring` on PATH that is a link to our command, as docs/reference.md suggests.

    Windows: a copy of our artifactregistry-gauth.exe named keyring.exe (its launcher finds
    the Python it was installed for in itself, not beside it).
    """
    scripts = Path(sysconfig.get_path("scripts"))
    if WINDOWS:
        link = bin_dir / "keyring.exe"
        shutil.copyfile(scripts / "artifactregistry-gauth.exe", link)
        return link
    link = bin_dir / "keyring"
    link.symlink_to(scripts / "artifactregistry-gauth")
    return link


def run_link(link, *args):
    return subprocess.run([str(link), *args], capture_output=True, text=True, timeout=60)


def test_a_link_named_keyring_serves_keyring_get(monkeypatch, keyring_link):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.linked")
    result = run_link(keyring_link, "--mode=creds", "--output=json", "get", INDEX)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"username": "oauth2accesstoken", "password": "ya29.linked"}
    listed = run_link(keyring_link, "--list-backends")
    assert listed.stdout == "artifactregistry_gauth.GooglePyPIAuth (priority: 9)\n"


@pytest.mark.parametrize(
    "argv", [["set", INDEX, "u"], ["del", INDEX, "u"], ["diagnose"], ["--disable"], []]
)
def test_a_link_named_keyring_refuses_other_operations(keyring_link, argv):
    result = run_link(keyring_link, *argv)
    assert (result.returncode, result.stdout) == (2, "")
    assert "only get (and --list-backends) is supported" in result.stderr
    assert result.stderr.splitlines()[0].startswith("usage: keyring")


# --- doctor -----------------------------------------------------------------------------------


def doctor(*args, env=None):
    result = run_cli("doctor", "--json", *args, env=env)
    return result.returncode, json.loads(result.stdout)


def verdicts(report):
    return {step["source"]: step["status"] for step in report["sources"]}


def test_doctor_without_credentials_says_why_and_exits_1():
    code, report = doctor()
    assert code == 1
    assert report["token"]["ok"] is False
    assert "gcloud auth application-default login" in report["token"]["error"]
    assert verdicts(report) == {
        "GOOGLE_OAUTH_ACCESS_TOKEN": "skipped",
        "GOOGLE_APPLICATION_CREDENTIALS": "skipped",
        "gcloud ADC file": "skipped",
        "metadata server": "skipped",
        "gcloud": "skipped",
    }


def test_doctor_with_a_broken_adc_file_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write(tmp_path, "{oops")))
    code, report = doctor()
    assert code == 1
    failed = next(s for s in report["sources"] if s["status"] == "failed")
    assert failed["source"] == "GOOGLE_APPLICATION_CREDENTIALS"
    assert "creds.json is not a valid JSON file" in failed["detail"]
    assert verdicts(report)["gcloud"] == "not consulted"


def test_doctor_with_a_service_account_key_names_the_account(sa_env, fake_google):
    code, report = doctor()
    assert code == 0
    assert "sa@proj.iam.gserviceaccount.com" in report["token"]["source"]
    assert 55 <= report["token"]["expires_in_minutes"] <= 60
    assert report["cache"]["state"] == "on"


def test_doctor_with_user_credentials(monkeypatch, user_file, google_https):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_file()))
    env = dict(os.environ)
    code, report = doctor(env=env)
    assert code == 0
    assert verdicts(report)["GOOGLE_APPLICATION_CREDENTIALS"] == "answered"


def test_doctor_with_gcloud_only(fake_gcloud):
    fake_gcloud.configure(account="me@example.com")
    code, report = doctor()
    assert code == 0
    assert verdicts(report)["gcloud"] == "answered"
    assert "me@example.com" in report["token"]["source"]


def test_doctor_when_gcloud_needs_reauthentication(fake_gcloud):
    fake_gcloud.configure(
        mode="fail",
        stderr="ERROR: (gcloud.config.config-helper) There was a problem refreshing your "
        "current auth tokens: Reauthentication required.",
    )
    code, report = doctor()
    assert code == 1
    assert "sign in again: run `gcloud auth login`" in report["token"]["error"]


def test_doctor_when_keyring_is_missing(monkeypatch, tmp_path):
    stub = tmp_path / "no-keyring" / "keyring"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('simulated: keyring not installed')\n")
    env = dict(os.environ, PYTHONPATH=str(stub.parent))
    _, report = doctor(env=env)
    assert report["keyring"]["importable"] is False


@pytest.mark.clients
def test_doctor_spots_a_keyring_on_path_that_does_not_see_the_backend(bin_dir, keyring_only_venv):
    (bin_dir / "keyring").symlink_to(keyring_only_venv.with_name("keyring"))
    _, report = doctor()
    assert report["keyring_executable"]["path"] == str(bin_dir / "keyring")
    assert report["keyring_executable"]["sees_backend"] is False
    assert report["keyring"]["lists_backend"] is True


def test_doctor_judges_index_urls_in_pip_and_uv_configuration(monkeypatch, home_dir):
    pip_conf = Path(os.environ["XDG_CONFIG_HOME"]) / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True)
    pip_conf.write_text(f"[global]\nextra-index-url = {INDEX}\n")
    monkeypatch.setenv(
        "PIP_INDEX_URL", "https://_json_key_base64:c2VjcmV0@us-python.pkg.dev/p/r/simple/"
    )
    uv_toml = Path(os.environ["XDG_CONFIG_HOME"]) / "uv" / "uv.toml"
    uv_toml.parent.mkdir(parents=True)
    uv_toml.write_text(f'[[index]]\nname = "private"\nurl = "{INDEX}"\n')
    _, report = doctor()
    by_where = {entry["where"]: entry for entry in report["index_urls"]}
    # It names the pip it talks to where that pip can be found.
    assert re.match(r"pip( [0-9.]+)? asks keyring", by_where[str(pip_conf)]["verdict"])
    assert "keyring is never asked" in by_where["$PIP_INDEX_URL"]["verdict"]
    assert "c2VjcmV0" not in json.dumps(report)
    assert "uv will not ask keyring" in by_where[str(uv_toml)]["verdict"]


def test_doctor_text_output_never_shows_the_token(sa_env, fake_google):
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "token: OK from service account sa@proj.iam.gserviceaccount.com" in result.stdout
    assert not any(fake_google.is_live(word) for word in result.stdout.split())
    (token,) = fake_google.issued
    assert token not in result.stdout + result.stderr


def test_verbose_logging_tells_the_story_without_secrets(sa_env, fake_google):
    result = run_cli("-v", "token")
    (token,) = fake_google.issued
    assert result.stdout.strip() == token
    assert "got a token from service account" in result.stderr
    assert token not in result.stderr
    again = run_cli("-v", "token")
    assert "cache" in again.stderr
    assert token not in again.stderr


# --- print-settings ------------------------------------------------------------------------


def print_settings(*args):
    base = ["--location", "europe-west1", "--project", "acme", "--repository", "wheels"]
    return run_cli("print-settings", *base, *args)


def test_print_settings_gives_every_tool_its_own_file():
    result = print_settings()
    assert result.returncode == 0, result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("# =====")]
    assert [h.split()[2].rstrip(":") for h in headers] == list(gauth.SETTINGS)
    assert "index-url = https://europe-west1-python.pkg.dev/acme/wheels/simple/" in result.stdout
    assert "https://oauth2accesstoken@europe-west1-python.pkg.dev/acme/wheels/simple/" in (
        result.stdout
    )
    assert "repository = https://europe-west1-python.pkg.dev/acme/wheels/" in result.stdout


@pytest.mark.parametrize("tool", list(gauth.SETTINGS))
def test_print_settings_for_one_tool_is_one_file_its_tool_can_read(tool):
    import configparser

    result = print_settings("--tool", tool)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "=====" not in text
    if tool in ("pip", "pip-subprocess", "twine", "tox"):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)  # a second [global] would raise DuplicateSectionError
    elif tool in ("uv", "uv-pyproject", "pdm", "hatch", "pipenv"):
        tomllib = pytest.importorskip("tomllib")
        tomllib.loads(text)
    else:  # command lists: every line a comment or a command the shell can parse
        import shlex

        assert all(shlex.split(line, comments=True) is not None for line in text.splitlines())


def test_print_settings_never_prints_an_extra_index_beside_pypi():
    text = print_settings().stdout
    assert "extra-index-url" not in text and "EXTRA_INDEX" not in text
    assert "dependency confusion" in text
    assert "virtual repository with PyPI as its upstream" in text
    assert "explicit = true" in text


def test_print_settings_for_poetry_sets_no_username_without_a_password():
    commands = [
        line for line in print_settings("--tool", "poetry").stdout.splitlines() if line[:1] != "#"
    ]
    assert commands and not any("http-basic" in line for line in commands)


def test_print_settings_help_lists_every_tool():
    text = run_cli("print-settings", "--help").stdout
    for tool in gauth.SETTINGS:
        assert f"  {tool} " in text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--repository", "repo\n[global]"),
        ("--repository", "Repo"),
        ("--repository", "r/../x"),
        ("--project", "acme wheels"),
        ("--project", "acme@evil.example"),
        ("--location", "us.evil.example/x"),
        ("--location", ""),
        ("--repository", "r" * 70),
    ],
)
def test_print_settings_refuses_a_name_artifact_registry_would_not_have(option, value):
    args = {"--location": "us", "--project": "acme", "--repository": "wheels", option: value}
    result = run_cli("print-settings", *[part for pair in args.items() for part in pair])
    assert (result.returncode, result.stdout) == (2, "")
    assert f"not an Artifact Registry {option[2:]} id" in result.stderr
    assert "Traceback" not in result.stderr


# --- the real keyring CLI ------------------------------------------------------------------------


def keyring_cli(*args, python=sys.executable, env=None):
    return subprocess.run(
        [python, "-m", "keyring", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.clients
def test_keyring_lists_the_backend_at_priority_nine():
    result = keyring_cli("--list-backends")
    assert "artifactregistry_gauth.GooglePyPIAuth (priority: 9)" in result.stdout.splitlines()


@pytest.mark.clients
@pytest.mark.parametrize("service", [INDEX, "us-python.pkg.dev"])
def test_keyring_get_prints_the_token(monkeypatch, sa_file, fake_google, service):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    result = keyring_cli("get", service, "oauth2accesstoken")
    assert result.returncode == 0, result.stderr
    assert fake_google.is_live(result.stdout.strip())


@pytest.mark.clients
def test_keyring_get_for_another_host_prints_nothing(monkeypatch, sa_file, fake_google):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    result = keyring_cli("get", "https://example.com/", "oauth2accesstoken")
    assert (result.returncode, result.stdout) == (1, "")
    assert fake_google.token_requests == []


@pytest.mark.clients
def test_keyring_get_without_credentials_is_one_line_not_a_traceback():
    result = keyring_cli("get", INDEX, "oauth2accesstoken")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("artifactregistry-gauth: no Google credentials found")


@pytest.mark.clients
@pytest.mark.parametrize(
    "imports", ["import artifactregistry_gauth, keyring", "import keyring, artifactregistry_gauth"]
)
def test_keyring_picks_the_backend_whatever_the_import_order(imports):
    code = f"{imports}; print(type(keyring.get_keyring()).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() in ("GooglePyPIAuth", "ChainerBackend"), result.stderr
    chained = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{imports}; print([str(b) for b in keyring.backend.get_all_keyring()])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "artifactregistry_gauth.GooglePyPIAuth (priority: 9)" in chained.stdout


@pytest.fixture(scope="session")
def keyring_only_venv(tmp_path_factory):
    """A virtualenv with keyring and nothing of ours, for the vendored single file."""
    venv = tmp_path_factory.mktemp("keyring-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "keyring"],
        check=True,
        timeout=300,
    )
    return python


@pytest.mark.clients
def test_vendored_single_file_works_through_keyringrc(
    monkeypatch, tmp_path, sa_file, fake_google, keyring_only_venv
):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "artifactregistry_gauth.py").write_bytes(
        (ROOT / "artifactregistry_gauth.py").read_bytes()
    )
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "python_keyring"
    config.mkdir(parents=True)
    (config / "keyringrc.cfg").write_text(
        textwrap.dedent(
            f"""\
            [backend]
            default-keyring = artifactregistry_gauth.GooglePyPIAuth
            keyring-path = {vendor}
            """
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    result = keyring_cli("get", INDEX, "oauth2accesstoken", python=str(keyring_only_venv))
    assert result.returncode == 0, result.stderr
    assert fake_google.is_live(result.stdout.strip())


# --- secrets never leak ---------------------------------------------------------------------

REFRESH = "1//SENTINEL-refresh-token-0001"
CLIENT_SECRET = "SENTINEL-client-secret-0002"
HANDED_TOKEN = "ya29.SENTINEL-handed-over-0003"


def echo(*secrets):
    """An OAuth error whose description repeats what we sent, as a careless server might."""
    return (400, {"error": "invalid_grant", "error_description": "got " + " ".join(secrets)})


def leak_user_refused(request, monkeypatch):
    https = request.getfixturevalue("google_https")
    path = request.getfixturevalue("user_file")(refresh_token=REFRESH, client_secret=CLIENT_SECRET)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    https.fake.script(*[echo(REFRESH, CLIENT_SECRET)] * 9)
    return [REFRESH, CLIENT_SECRET]


def leak_user_server_errors(request, monkeypatch):
    https = request.getfixturevalue("google_https")
    path = request.getfixturevalue("user_file")(refresh_token=REFRESH, client_secret=CLIENT_SECRET)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    https.fake.script(*[(500, f"oops\n{REFRESH}\n{CLIENT_SECRET}")] * 9)
    return [REFRESH, CLIENT_SECRET]


def leak_wrong_key(request, monkeypatch):
    rsa_key = request.getfixturevalue("rsa_key")
    path = request.getfixturevalue("sa_file")(register=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return rsa_key.pkcs8_pem.splitlines()[1:-1]


def leak_truncated_key(request, monkeypatch):
    rsa_key = request.getfixturevalue("rsa_key")
    lines = rsa_key.pkcs8_pem.splitlines()
    path = write(
        request.getfixturevalue("tmp_path"), sa_json(rsa_key, private_key="\n".join(lines[:9]))
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return lines[1:9]


def leak_good_key(request, monkeypatch):
    path = request.getfixturevalue("sa_file")()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    request.getfixturevalue("fake_google").expires_in = 3599
    return request.getfixturevalue("rsa_key").pkcs8_pem.splitlines()[1:-1]


def leak_handed_over(request, monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", HANDED_TOKEN)
    return [HANDED_TOKEN]


def leak_bad_token_file(request, monkeypatch):
    path = request.getfixturevalue("tmp_path") / "token"
    path.write_text(f"{HANDED_TOKEN} and more")
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(path))
    return [HANDED_TOKEN]


LEAKS = [
    leak_user_refused,
    leak_user_server_errors,
    leak_wrong_key,
    leak_truncated_key,
    leak_good_key,
    leak_handed_over,
    leak_bad_token_file,
]


@pytest.mark.parametrize("scenario", LEAKS, ids=[f.__name__[5:] for f in LEAKS])
def test_no_secret_reaches_output_logs_errors_or_cache_names(
    request, monkeypatch, caplog, scenario
):
    secrets = scenario(request, monkeypatch)
    seen = []
    with caplog.at_level(logging.DEBUG, logger="artifactregistry_gauth"):
        try:
            gauth.get_token()  # the token itself is the answer; it must show nowhere else
        except gauth.CredentialError as exc:
            seen.append(str(exc))
    seen += [record.getMessage() for record in caplog.records]
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_DEBUG", "1")
    for args in (["token"], ["doctor"], ["doctor", "--json"]):
        result = run_cli(*args)
        seen += [result.stderr, result.stdout if args[0] == "doctor" else ""]
    seen += [p.name for p in Path(os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"]).glob("*")]
    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text


def test_the_secret_guard_catches_a_secret_in_an_error(user_file):
    from conftest import SECRETS

    user_file(refresh_token="1//guard-sentinel-refresh")
    assert "1//guard-sentinel-refresh" in SECRETS
    with pytest.raises(AssertionError, match="carries a secret"):
        gauth.CredentialError("oops 1//guard-sentinel-refresh")
