"""The backend's public contract: which keyring questions it answers, the backend itself,
the credential sources and their discovery order, bad input, keyring's own command line and a
vendored copy. Run against fake Google servers on loopback."""

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import WINE_PARTIAL_CHAIN, wine_gap
from fakes.testing import keyring_cli, sa_json, write

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
    (
        "user with a number as rapt_token",
        '{"type": "authorized_user", "client_id": "c", "client_secret": "s", '
        '"refresh_token": "r", "rapt_token": 5}',
        "field 'rapt_token' is not a string.*application-default login",
    ),
    (
        "user with a list as account",
        '{"type": "authorized_user", "client_id": "c", "client_secret": "s", '
        '"refresh_token": "r", "account": []}',
        "field 'account' is not a string",
    ),
    (
        "user with a number as universe",
        '{"type": "authorized_user", "client_id": "c", "client_secret": "s", '
        '"refresh_token": "r", "universe_domain": 1}',
        "field 'universe_domain' is not a string",
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
    ("key id a number", {"private_key_id": 7}, "field 'private_key_id' is not a string"),
    ("universe a list", {"universe_domain": ["x"]}, "field 'universe_domain' is not a string"),
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
    # Three 500s take two backoffs (about 0.5 s and 1 s) and three signed requests: a
    # budget of 3 s leaves them room on a loaded machine; a hang still ends with it.
    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 3.0)
    fake_google.script(*replies)
    started = time.monotonic()
    with pytest.raises(gauth.CredentialError, match=message):
        gauth.get_token()
    assert time.monotonic() - started < 8  # a hang guard, not a benchmark


def test_429_with_retry_after_is_retried_after_the_wait(sa_env, fake_google):
    fake_google.script((429, {"error": "rate_limited"}, {"Retry-After": "1"}))
    assert fake_google.is_live(gauth.get_token())
    assert len(fake_google.token_requests) == 2


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


@wine_gap(WINE_PARTIAL_CHAIN)
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


# --- the real keyring CLI ------------------------------------------------------------------------


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
