"""Workload/workforce identity federation and impersonation, against fakes on loopback."""

import base64
import json
import logging
import shlex
import subprocess
import sys
import time
import traceback
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import artifactregistry_gauth as gauth
from fakes.federation import (
    ID_TOKEN_TYPE,
    JWT_TYPE,
    SUBJECT,
    WORKLOAD,
    Executable,
    clear_requests,
    external,
    token_requests,
)
from fakes.google import (
    ACCESS_TOKEN_TYPE,
    AWS_TOKEN_TYPE,
    CLOUD_PLATFORM,
    IAM_SCOPE,
    OTHER_UNIVERSE,
    TOKEN_EXCHANGE,
    aws_signature_checker,
)
from fakes.testing import one_line

INDEX = "https://us-python.pkg.dev/proj/repo/simple/"
WORKFORCE = "//iam.googleapis.com/locations/global/workforcePools/wf-pool/providers/wf-provider"
SAML_TYPE = "urn:ietf:params:oauth:token-type:saml2"
TARGET = "target@proj.iam.gserviceaccount.com"
IAM_URL = (
    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
    f"{TARGET}:generateAccessToken"
)
FUZZ_SPLIT = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def use(monkeypatch, path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))


def write(tmp_path, info, name="creds.json"):
    path = tmp_path / name
    path.write_text(json.dumps(info, indent=2) if not isinstance(info, str) else info)
    return path


# --- how the command is split into words ----------------------------------------------------
#
# google-auth (google/auth/pluggable.py) runs shlex.split(command) with no shell, on every OS.
# On Windows that eats the path separators of C:\\tools\\idp.exe: there we split by the same
# rules with the backslash taken literally, so the paths people write work, and commands
# written for google-auth (backslashes doubled, or forward slashes) still do.

COMMAND_SPLITS = [
    # (id, os.name, command, argv)
    ("posix words", "posix", "/opt/idp --flag 'two words'", ["/opt/idp", "--flag", "two words"]),
    ("posix escape", "posix", r"/opt/my\ idp -x", ["/opt/my idp", "-x"]),
    ("posix tabs", "posix", "idp\t-a\n-b", ["idp", "-a", "-b"]),
    ("windows path", "nt", r"C:\tools\idp.exe --flag", [r"C:\tools\idp.exe", "--flag"]),
    (
        "windows quoted path",
        "nt",
        r'"C:\Program Files\IdP\idp.exe" --out C:\tmp\o.json',
        [r"C:\Program Files\IdP\idp.exe", "--out", r"C:\tmp\o.json"],
    ),
    ("windows words", "nt", r"idp.cmd --flag 'two words'", ["idp.cmd", "--flag", "two words"]),
    ("windows doubled", "nt", r"C:\\tools\\idp.exe", [r"C:\\tools\\idp.exe"]),
    ("windows UNC", "nt", r"\\server\share\idp.exe", [r"\\server\share\idp.exe"]),
]


@pytest.mark.parametrize(
    ("os_name", "command", "argv"),
    [row[1:] for row in COMMAND_SPLITS],
    ids=[row[0] for row in COMMAND_SPLITS],
)
def test_the_executable_command_is_split_into_words(os_name, command, argv):
    assert gauth.split_command(command, windows=os_name == "nt") == argv


@FUZZ_SPLIT
@given(command=st.text(alphabet=st.sampled_from(list("ab/ \t\\'\"#")), max_size=30))
def test_on_posix_the_command_is_split_as_google_auth_splits_it(command):
    try:
        expected = shlex.split(command)  # what google.auth.pluggable runs
    except ValueError:
        with pytest.raises(ValueError):
            gauth.split_command(command, windows=False)
        return
    assert gauth.split_command(command, windows=False) == expected


@pytest.mark.parametrize("command", ["", "   ", "idp 'unclosed", 'idp "unclosed'])
def test_an_empty_or_unbalanced_command_is_one_clear_line(monkeypatch, tmp_path, command):
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    use(monkeypatch, write(tmp_path, external({"executable": {"command": command}})))
    with pytest.raises(
        gauth.CredentialError,
        match="field 'credential_source.executable.command' (is missing or empty|cannot be split)",
    ):
        gauth.get_token()


# --- executables written by the tests ---------------------------------------------------------


@pytest.fixture
def executable(bin_dir, monkeypatch):
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    return Executable(bin_dir)


# --- scenarios: one working configuration per credential type --------------------------------


class Scenarios:
    """Builds each supported configuration against the fakes; shared by many tests below."""

    def __init__(self, request, tmp_path, fed, executable, monkeypatch):
        self.request = request
        self.tmp_path = tmp_path
        self.fed = fed
        self.executable = executable
        self.monkeypatch = monkeypatch

    def __getattr__(self, name):
        # Servers and files that only some scenarios need are made on first use.
        if name in ("aws", "idp", "sa_file", "user_file"):
            fixture = {"aws": "fake_aws", "idp": "fake_idp"}.get(name, name)
            return self.request.getfixturevalue(fixture)
        raise AttributeError(name)

    def write(self, info):
        return write(
            self.tmp_path, info, f"{info['type']}-{len(list(self.tmp_path.iterdir()))}.json"
        )

    def file_text(self):
        token_file = self.tmp_path / "subject.txt"
        token_file.write_text(SUBJECT + "\n")  # kept whole, newline and all
        self.fed.sts.add_provider(WORKLOAD, JWT_TYPE, SUBJECT + "\n")
        return self.write(external({"file": str(token_file)})), self.fed.sts

    def file_json(self):
        token_file = self.tmp_path / "subject.json"
        token_file.write_text(json.dumps({"id_token": SUBJECT, "other": "x"}))
        self.fed.sts.add_provider(WORKLOAD, ID_TOKEN_TYPE, SUBJECT)
        source = {
            "file": str(token_file),
            "format": {"type": "json", "subject_token_field_name": "id_token"},
        }
        return self.write(external(source, token_type=ID_TOKEN_TYPE)), self.fed.sts

    def url_text(self):
        self.idp.required_headers = {"Metadata": "True"}
        self.fed.sts.add_provider(WORKLOAD, JWT_TYPE, self.idp.token)
        source = {"url": self.idp.url, "headers": {"Metadata": "True"}}
        return self.write(external(source)), self.fed.sts

    def url_json(self):
        self.idp.json_field = "access_token"
        self.fed.sts.add_provider(WORKLOAD, JWT_TYPE, self.idp.token)
        source = {
            "url": self.idp.url,
            "format": {"type": "json", "subject_token_field_name": "access_token"},
        }
        return self.write(external(source)), self.fed.sts

    def executable_source(self):
        self.fed.sts.add_provider(WORKLOAD, ID_TOKEN_TYPE, SUBJECT)
        source = self.executable.source(output_file=self.tmp_path / "exe-output.json")
        return self.write(external(source, token_type=ID_TOKEN_TYPE)), self.fed.sts

    def aws_environment(self):
        for name, value in {
            "AWS_ACCESS_KEY_ID": "AKIAENVFAKE0001",
            "AWS_SECRET_ACCESS_KEY": "env-secret",
            "AWS_SESSION_TOKEN": "env-session",
            "AWS_REGION": "eu-west-1",
        }.items():
            self.monkeypatch.setenv(name, value)
        keys = {"AKIAENVFAKE0001": ("env-secret", "env-session")}
        self.fed.sts.add_provider(WORKLOAD, AWS_TOKEN_TYPE, aws_signature_checker(WORKLOAD, keys))
        info = external(self.aws.credential_source(), token_type=AWS_TOKEN_TYPE)
        return self.write(info), self.fed.sts

    def aws_metadata(self):
        keys = {self.aws.access_key_id: (self.aws.secret_access_key, self.aws.session_token)}
        self.fed.sts.add_provider(WORKLOAD, AWS_TOKEN_TYPE, aws_signature_checker(WORKLOAD, keys))
        info = external(self.aws.credential_source(), token_type=AWS_TOKEN_TYPE)
        return self.write(info), self.fed.sts

    def workforce_options(self):
        self.fed.sts.add_provider(WORKFORCE, ID_TOKEN_TYPE, SUBJECT, user_project="4242")
        token_file = self.tmp_path / "workforce.txt"
        token_file.write_text(SUBJECT)
        info = external(
            {"file": str(token_file)},
            audience=WORKFORCE,
            token_type=ID_TOKEN_TYPE,
            workforce_pool_user_project="4242",
        )
        return self.write(info), self.fed.sts

    def client_auth(self):
        client = ("wf-client", "wf-client-secret")
        self.fed.sts.add_provider(WORKFORCE, ID_TOKEN_TYPE, SUBJECT, client=client)
        token_file = self.tmp_path / "workforce.txt"
        token_file.write_text(SUBJECT)
        info = external(
            {"file": str(token_file)},
            audience=WORKFORCE,
            token_type=ID_TOKEN_TYPE,
            client_id=client[0],
            client_secret=client[1],
            workforce_pool_user_project="4242",  # the client names the project: not sent
        )
        return self.write(info), self.fed.sts

    def sts_then_impersonation(self):
        path, _ = self.file_text()
        self.fed.iam.add_service_account(TARGET)
        info = json.loads(path.read_text())
        info["service_account_impersonation_url"] = self.fed.iam.url(TARGET)
        info["service_account_impersonation"] = {"token_lifetime_seconds": 1800}
        info["quota_project_id"] = "file-quota"
        self.monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "env-quota")
        return self.write(info), self.fed.iam

    def impersonated_user(self):
        self.fed.iam.add_service_account(TARGET)
        source = json.loads(self.user_file(quota_project_id="source-quota").read_text())
        info = {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": source,
            "delegates": ["projects/-/serviceAccounts/middle@proj.iam.gserviceaccount.com"],
            "quota_project_id": "outer-quota",  # for API calls, never for the IAM call
        }
        return self.write(info), self.fed.iam

    def impersonated_service_account(self):
        self.fed.iam.add_service_account(TARGET)
        self.fed.google.expected_scope = IAM_SCOPE
        source = json.loads(self.sa_file().read_text())
        info = {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": source,
        }
        return self.write(info), self.fed.iam

    def workforce_user_info(self, **overrides):
        self.fed.sts.add_workforce_user("wf-refresh", "wf-client", "wf-secret", "wf-user")
        info = {
            "type": "external_account_authorized_user",
            "audience": WORKFORCE,
            "refresh_token": "wf-refresh",
            "token_url": "https://sts.googleapis.com/v1/oauth/token",
            "token_info_url": "https://sts.googleapis.com/v1/introspect",
            "client_id": "wf-client",
            "client_secret": "wf-secret",
            "revoke_url": "https://sts.googleapis.com/v1/oauth/token:revoke",
            "universe_domain": "googleapis.com",
        }
        info.update(overrides)
        return info

    def impersonated_workforce_user(self):
        self.fed.iam.add_service_account(TARGET)
        info = {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": self.workforce_user_info(universe_domain=OTHER_UNIVERSE),
            "delegates": [],
        }
        return self.write(info), self.fed.iam

    def workforce_user(self):
        return self.write(self.workforce_user_info()), self.fed.sts

    KINDS = (
        "file_text",
        "file_json",
        "url_text",
        "url_json",
        "executable_source",
        "aws_environment",
        "aws_metadata",
        "workforce_options",
        "client_auth",
        "sts_then_impersonation",
        "impersonated_user",
        "impersonated_service_account",
        "impersonated_workforce_user",
        "workforce_user",
    )

    def build(self, kind):
        return getattr(self, kind)()


@pytest.fixture
def scenarios(request, tmp_path, google_federation, executable, monkeypatch):
    return Scenarios(request, tmp_path, google_federation, executable, monkeypatch)


@pytest.fixture
def fed(google_federation):
    return google_federation


# --- every type yields a token ----------------------------------------------------------------


@pytest.mark.parametrize("kind", Scenarios.KINDS)
def test_every_credential_type_yields_a_live_token(scenarios, monkeypatch, kind):
    path, issuer = scenarios.build(kind)
    use(monkeypatch, path)
    token = gauth.lookup()
    assert issuer.is_live(token.value)
    assert token.expiry == pytest.approx(issuer.issued[token.value]["expiry"], abs=2)


# --- external_account: the STS exchange -------------------------------------------------------


def test_sts_exchange_sends_exactly_the_documented_fields(scenarios, fed, monkeypatch):
    path, _ = scenarios.file_text()
    use(monkeypatch, path)
    gauth.get_token()
    (request,) = fed.sts.exchanges
    assert request.form == {
        "grant_type": TOKEN_EXCHANGE,
        "audience": WORKLOAD,
        "scope": CLOUD_PLATFORM,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "subject_token": SUBJECT + "\n",
        "subject_token_type": JWT_TYPE,
    }
    assert "authorization" not in request.headers
    assert fed.connects == ["sts.googleapis.com:443"]


def test_sts_client_credentials_go_in_a_basic_header_not_the_form(scenarios, fed, monkeypatch):
    path, _ = scenarios.client_auth()
    use(monkeypatch, path)
    gauth.get_token()
    (request,) = fed.sts.exchanges
    expected = base64.b64encode(b"wf-client:wf-client-secret").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert "client_id" not in request.form and "client_secret" not in request.form
    assert "options" not in request.form  # the client already names the user project


def test_workforce_user_project_is_sent_as_double_encoded_options(scenarios, fed, monkeypatch):
    path, _ = scenarios.workforce_options()
    use(monkeypatch, path)
    gauth.get_token()
    (request,) = fed.sts.exchanges
    assert b"options=%257B%2522userProject%2522%253A%2520%25224242%2522%257D" in request.body
    assert json.loads(unquote(request.form["options"])) == {"userProject": "4242"}


def test_missing_token_url_uses_the_universes_sts(scenarios, fed, monkeypatch, tmp_path):
    path, _ = scenarios.file_text()
    info = json.loads(path.read_text())
    info.pop("token_url")
    info["universe_domain"] = OTHER_UNIVERSE
    use(monkeypatch, write(tmp_path, info, "universe.json"))
    assert fed.sts.is_live(gauth.get_token())
    assert fed.connects == [f"sts.{OTHER_UNIVERSE}:443"]


def test_impersonation_exchanges_for_the_iam_scope_then_calls_generate_access_token(
    scenarios, fed, monkeypatch
):
    path, _ = scenarios.sts_then_impersonation()
    use(monkeypatch, path)
    token = gauth.lookup()
    (exchange,) = fed.sts.exchanges
    assert exchange.form["scope"] == IAM_SCOPE
    (call,) = fed.iam.requests
    assert call.json == {"delegates": None, "scope": [CLOUD_PLATFORM], "lifetime": "1800s"}
    sts_token = call.headers["authorization"].removeprefix("Bearer ")
    assert fed.sts.issued[sts_token]["scope"] == IAM_SCOPE
    assert call.headers["x-goog-user-project"] == "env-quota"  # GOOGLE_CLOUD_QUOTA_PROJECT wins
    assert fed.iam.issued[token.value]["identity"] == TARGET
    assert "target@proj.iam.gserviceaccount.com" in token.source


def test_executable_gets_the_documented_environment_and_no_stdin(scenarios, fed, monkeypatch):
    path, _ = scenarios.sts_then_impersonation()
    info = json.loads(path.read_text())
    output_file = scenarios.tmp_path / "out.json"
    info["credential_source"] = scenarios.executable.source(output_file=output_file)
    info["subject_token_type"] = ID_TOKEN_TYPE
    fed.sts.providers[WORKLOAD].subject_token_type = ID_TOKEN_TYPE
    fed.sts.providers[WORKLOAD].accepts = SUBJECT
    use(monkeypatch, write(scenarios.tmp_path, info, "exe.json"))
    gauth.get_token()
    (call,) = scenarios.executable.calls
    assert call["argv"] == ["--flag", "two words"]  # split like a shell, run without one
    assert call["stdin_devnull"]
    assert call["env"] == {
        "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES": "1",
        "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE": WORKLOAD,
        "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE": ID_TOKEN_TYPE,
        "GOOGLE_EXTERNAL_ACCOUNT_ID": TARGET,
        "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL": TARGET,
        "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE": "0",
        "GOOGLE_EXTERNAL_ACCOUNT_REVOKE": "0",
        "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE": str(output_file),
    }


def test_executable_saml_response_is_the_subject_token(scenarios, fed, monkeypatch):
    path, _ = scenarios.executable_source()
    fed.sts.providers[WORKLOAD].subject_token_type = SAML_TYPE
    info = json.loads(path.read_text())
    info["subject_token_type"] = SAML_TYPE
    scenarios.executable.configure(
        response={"version": 1, "success": True, "token_type": SAML_TYPE, "saml_response": SUBJECT}
    )
    use(monkeypatch, write(scenarios.tmp_path, info, "saml.json"))
    assert fed.sts.is_live(gauth.get_token())


def test_unexpired_output_file_is_used_without_running_the_executable(
    scenarios, fed, monkeypatch, tmp_path
):
    path, _ = scenarios.executable_source()
    saved = {
        "version": 1,
        "success": True,
        "token_type": ID_TOKEN_TYPE,
        "id_token": SUBJECT,
        "expiration_time": int(time.time()) + 600,
    }
    (tmp_path / "exe-output.json").write_text(json.dumps(saved))
    scenarios.executable.configure(response="", exit=1)
    use(monkeypatch, path)
    assert fed.sts.is_live(gauth.get_token())
    assert scenarios.executable.calls == []


@pytest.mark.parametrize(
    "saved",
    [
        {"expiration_time": 1},  # expired
        {"expiration_time": None},  # no expiry: cannot be trusted
        {"success": False, "code": "401", "message": "old failure"},
        "half-written {",
    ],
    ids=["expired", "no-expiration", "failure", "not-json"],
)
def test_unusable_output_file_runs_the_executable_again(
    scenarios, fed, monkeypatch, tmp_path, saved
):
    path, _ = scenarios.executable_source()
    if isinstance(saved, dict):
        response = {"version": 1, "success": True, "token_type": ID_TOKEN_TYPE, "id_token": "old"}
        saved = json.dumps({k: v for k, v in {**response, **saved}.items() if v is not None})
    (tmp_path / "exe-output.json").write_text(saved)
    use(monkeypatch, path)
    assert fed.sts.is_live(gauth.get_token())
    assert len(scenarios.executable.calls) == 1


def test_executable_that_prints_nothing_is_read_from_its_output_file(scenarios, fed, monkeypatch):
    path, _ = scenarios.executable_source()
    scenarios.executable.configure(to_output_file=True)
    use(monkeypatch, path)
    assert fed.sts.is_live(gauth.get_token())


def test_a_hanging_executable_is_killed_at_its_timeout_millis(scenarios, monkeypatch):
    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 1.0)  # the network's budget, not the executable's
    path, _ = scenarios.executable_source()  # timeout_millis 5000, the shortest allowed
    scenarios.executable.configure(sleep=30)
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match=r"did not finish within 5\.0 s"):
        gauth.get_token()


def test_url_source_fetches_the_subject_token_with_the_configured_headers(
    scenarios, fed, fake_idp, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # loopback is never proxied
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    path, _ = scenarios.url_text()
    use(monkeypatch, path)
    gauth.get_token()
    (request,) = fake_idp.requests
    assert request.path == "/token?resource=gauth"
    assert request.headers["metadata"] == "True"
    assert fed.sts.exchanges[0].form["subject_token"] == fake_idp.token


# --- AWS ----------------------------------------------------------------------------------------


# The signing test vectors of google-auth's own AWS tests (its tests/test_aws.py), reproduced
# exactly (docs/protocols.md#aws).
SIGV4_TOKEN = (
    "AQoEXAMPLEH4aoAH0gNCAPyJxz4BlCFFxWNE1OPTgk5TthT+FvwqnKwRcOIfrRh3c/LTo6UDdyJwOOvEVPvLXCrrrUtdn"
    "niCEXAMPLE/IvU1dYUg2RVAJBanLiHb4IgRmpRV3zrkuWJOgQs8IZZaIv2BXIa2R4OlgkBN9bkUDNCJiBeb/AXlzBBko"
    "7b15fjrBs2+cTQtpZ3CYWFXG8C5zqx37wnOE49mRl/+OtkIKGO7fAE"
)


@pytest.mark.parametrize(
    ("session_token", "signed_headers", "signature"),
    [
        (
            "",
            "host;x-amz-date",
            "9e722e5b7bfa163447e2a14df118b45ebd283c5aea72019bdf921d6e7dc01a9a",
        ),
        (
            SIGV4_TOKEN,
            "host;x-amz-date;x-amz-security-token",
            "596aa990b792d763465d73703e684ca273c45536c6d322c31be01a41d02e5b60",
        ),
    ],
    ids=["without-session-token", "with-session-token"],
)
def test_sigv4_reproduces_the_test_vectors(session_token, signed_headers, signature):
    now = 1597128922  # 2020-08-11T06:55:22Z
    headers = gauth.aws_sigv4_headers(
        "POST",
        "https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        "us-east-2",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        session_token,
        now,
    )
    expected = {
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20200811/us-east-2/sts/aws4_request, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        ),
        "host": "sts.us-east-2.amazonaws.com",
        "x-amz-date": "20200811T065522Z",
    }
    if session_token:
        expected["x-amz-security-token"] = session_token
    assert headers == expected
    assert list(headers) == list(expected)


def decode_aws_subject_token(token):
    request = json.loads(unquote(token))
    return request, {h["key"]: h["value"] for h in request["headers"]}


def test_aws_environment_credentials_need_no_metadata_server(scenarios, fed, fake_aws, monkeypatch):
    path, _ = scenarios.aws_environment()
    use(monkeypatch, path)
    gauth.get_token()
    assert fake_aws.requests == []
    request, headers = decode_aws_subject_token(fed.sts.exchanges[0].form["subject_token"])
    assert request["url"] == (
        "https://sts.eu-west-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
    )
    assert request["method"] == "POST"
    assert [h["key"] for h in request["headers"]] == [
        "Authorization",
        "host",
        "x-amz-date",
        "x-amz-security-token",
        "x-goog-cloud-target-resource",
    ]
    assert headers["x-goog-cloud-target-resource"] == WORKLOAD
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAENVFAKE0001/")


def test_aws_metadata_gives_region_and_role_credentials_with_one_imdsv2_session(
    scenarios, fed, fake_aws, monkeypatch
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # IMDS must never be proxied
    path, _ = scenarios.aws_metadata()
    use(monkeypatch, path)
    gauth.get_token()
    calls = [(r.method, r.route) for r in fake_aws.requests]
    assert calls == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/placement/availability-zone"),
        ("GET", "/latest/meta-data/iam/security-credentials"),
        ("GET", "/latest/meta-data/iam/security-credentials/gauth-role"),
    ]
    assert fake_aws.requests[0].headers["x-aws-ec2-metadata-token-ttl-seconds"] == "300"
    session = {r.headers.get("x-aws-ec2-metadata-token") for r in fake_aws.requests[1:]}
    assert session == fake_aws.session_tokens
    request, _ = decode_aws_subject_token(fed.sts.exchanges[0].form["subject_token"])
    assert "sts.us-east-2.amazonaws.com" in request["url"]  # us-east-2b without its zone letter


def test_aws_imdsv1_when_the_file_has_no_session_url(scenarios, fed, fake_aws, monkeypatch):
    fake_aws.require_session = False
    path, _ = scenarios.aws_metadata()
    info = json.loads(path.read_text())
    del info["credential_source"]["imdsv2_session_token_url"]
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    use(monkeypatch, write(scenarios.tmp_path, info, "imdsv1.json"))
    assert fed.sts.is_live(gauth.get_token())
    assert [r.method for r in fake_aws.requests] == ["GET", "GET"]  # role and credentials only


@pytest.mark.parametrize(
    ("attribute", "field"),
    [("access_key_id", "AccessKeyId"), ("secret_access_key", "SecretAccessKey")],
)
def test_aws_metadata_credentials_without_a_key_are_one_line_naming_the_field(
    scenarios, fake_aws, monkeypatch, attribute, field
):
    setattr(fake_aws, attribute, None)
    path, _ = scenarios.aws_metadata()
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert one_line(caught).startswith(
        f"{path}: the AWS metadata server's credentials: field '{field}' is not a non-empty "
        "string; check the instance's IAM role"
    )


def test_switching_aws_keys_is_a_new_cache_identity(scenarios, monkeypatch):
    path, _ = scenarios.aws_environment()
    use(monkeypatch, path)
    first = gauth.load_adc_file(str(path), "test").identify(gauth.Transport())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHERKEY")
    assert gauth.load_adc_file(str(path), "test").identify(gauth.Transport()) != first


# --- the subject is part of the cache identity (a shared CI runner) ----------------------------
#
# One creds.json, and behind it one job's subject token, then another's: each job must get
# a Google token for its own subject, never the one cached for the job before it.


def jwt(**claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def job_token(job, serial=0):
    """A CI job's OIDC token: `sub` names the job, the times and id change on every request."""
    now = int(time.time()) + serial
    return jwt(iss="https://ci.example", sub=job, aud="gauth", iat=now, exp=now + 300, jti=serial)


def subjects_of(sts):
    return [unquote(r.form["subject_token"]) for r in sts.exchanges]


@pytest.fixture
def any_subject(fed):
    """STS accepts any JWT for the workload pool, and issues each token for its subject."""
    fed.sts.add_provider(WORKLOAD, JWT_TYPE, lambda token: None)
    return fed.sts


def next_job(token_file, token):
    token_file.write_text(token)
    gauth._forget_tokens()  # a new process: only the disk cache remembers


def test_a_new_subject_in_the_same_token_file_gets_its_own_token(
    tmp_path, any_subject, monkeypatch
):
    token_file = tmp_path / "oidc-token"
    token_file.write_text(job_token("job-a"))
    use(monkeypatch, write(tmp_path, external({"file": str(token_file)})))
    first = gauth.get_token()
    next_job(token_file, job_token("job-b"))
    second = gauth.get_token()
    assert second != first
    assert [
        json.loads(base64.urlsafe_b64decode(t.split(".")[1] + "==")).get("sub")
        for t in subjects_of(any_subject)
    ] == ["job-a", "job-b"]
    assert any_subject.issued[second]["subject_token"] == token_file.read_text()


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"], ids=["CR LF", "CR"])
def test_a_subject_token_file_is_text_with_its_line_ends_read_as_google_auth_reads_them(
    tmp_path, any_subject, monkeypatch, line_end
):
    token_file = tmp_path / "oidc-token"
    token_file.write_bytes(SUBJECT.encode() + line_end)
    use(monkeypatch, write(tmp_path, external({"file": str(token_file)})))
    token = gauth.get_token()
    with open(token_file, encoding="utf-8") as f:  # google-auth's identity_pool reads it so
        assert any_subject.issued[token]["subject_token"] == f.read() == SUBJECT + "\n"


def test_a_reissued_token_for_the_same_subject_reuses_the_cached_token(
    tmp_path, any_subject, monkeypatch
):
    token_file = tmp_path / "oidc-token"
    token_file.write_text(job_token("job-a", serial=0))
    use(monkeypatch, write(tmp_path, external({"file": str(token_file)})))
    first = gauth.get_token()
    next_job(token_file, job_token("job-a", serial=1))  # new iat, exp and jti only
    assert gauth.get_token() == first
    assert len(any_subject.exchanges) == 1


def test_an_opaque_subject_token_is_keyed_by_its_whole_value(tmp_path, fed, monkeypatch):
    fed.sts.add_provider(WORKLOAD, JWT_TYPE, lambda token: None)
    token_file = tmp_path / "opaque-token"
    token_file.write_text("opaque-a")
    use(monkeypatch, write(tmp_path, external({"file": str(token_file)})))
    first = gauth.get_token()
    next_job(token_file, "opaque-b")
    assert gauth.get_token() != first
    assert subjects_of(fed.sts) == ["opaque-a", "opaque-b"]


def test_a_new_subject_behind_the_same_url_gets_its_own_token(scenarios, fed, monkeypatch):
    path, _ = scenarios.url_text()
    fed.sts.add_provider(WORKLOAD, JWT_TYPE, lambda token: None)
    use(monkeypatch, path)
    first = gauth.get_token()
    scenarios.idp.token = "idp-jwt-next-job"
    gauth._forget_tokens()
    assert gauth.get_token() != first
    assert subjects_of(fed.sts) == [subjects_of(fed.sts)[0], "idp-jwt-next-job"]


def test_a_new_subject_from_the_same_executable_gets_its_own_token(
    tmp_path, fed, executable, monkeypatch
):
    fed.sts.add_provider(WORKLOAD, ID_TOKEN_TYPE, lambda token: None)
    use(monkeypatch, write(tmp_path, external(executable.source(), token_type=ID_TOKEN_TYPE)))
    first = gauth.get_token()
    executable.token = "next-job-subject"
    executable.configure()
    gauth._forget_tokens()
    assert gauth.get_token() != first
    assert subjects_of(fed.sts) == [SUBJECT, "next-job-subject"]


def test_other_aws_credentials_get_their_own_token(scenarios, fed, monkeypatch):
    path, _ = scenarios.aws_environment()
    use(monkeypatch, path)
    first = gauth.get_token()
    keys = {"AKIAOTHERJOB0002": ("other-secret", "other-session")}
    fed.sts.add_provider(WORKLOAD, AWS_TOKEN_TYPE, aws_signature_checker(WORKLOAD, keys))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHERJOB0002")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "other-session")
    gauth._forget_tokens()
    assert gauth.get_token() != first
    assert len(fed.sts.exchanges) == 2


# --- impersonated_service_account -------------------------------------------------------------


def test_impersonating_from_a_user_sends_delegates_and_the_sources_quota_project(
    scenarios, fed, monkeypatch
):
    path, _ = scenarios.impersonated_user()
    use(monkeypatch, path)
    token = gauth.get_token()
    assert fed.connects == ["oauth2.googleapis.com:443", "iamcredentials.googleapis.com:443"]
    (call,) = fed.iam.requests
    assert call.route == f"/v1/projects/-/serviceAccounts/{TARGET}:generateAccessToken"
    assert call.json == {
        "delegates": ["projects/-/serviceAccounts/middle@proj.iam.gserviceaccount.com"],
        "scope": [CLOUD_PLATFORM],
        "lifetime": "3600s",
    }
    assert call.headers["x-goog-user-project"] == "source-quota"
    assert fed.iam.issued[token]["source"] == "user@example.com"


def test_impersonating_from_a_service_account_key_asks_for_the_iam_scope(
    scenarios, fed, monkeypatch
):
    path, _ = scenarios.impersonated_service_account()
    use(monkeypatch, path)
    token = gauth.get_token()  # fake_google checks the JWT's scope claim is the IAM scope
    assert fed.iam.issued[token]["source"] == "sa@proj.iam.gserviceaccount.com"
    assert "x-goog-user-project" not in fed.iam.requests[0].headers


def test_impersonation_goes_to_the_source_universes_iam_endpoint(scenarios, fed, monkeypatch):
    path, _ = scenarios.impersonated_workforce_user()
    use(monkeypatch, path)
    assert fed.iam.is_live(gauth.get_token())
    assert fed.connects[-1] == f"iamcredentials.{OTHER_UNIVERSE}:443"
    assert fed.iam.requests[0].json["delegates"] == []


@pytest.mark.parametrize("fractional", [False, True])
def test_expire_time_is_read_with_or_without_fractional_seconds(
    scenarios, fed, monkeypatch, fractional
):
    fed.iam.fractional_seconds = fractional
    path, _ = scenarios.impersonated_user()
    use(monkeypatch, path)
    token = gauth.lookup()
    assert token.expiry == pytest.approx(fed.iam.issued[token.value]["expiry"], abs=1.5)


# --- external_account_authorized_user --------------------------------------------------------


def test_workforce_user_refreshes_at_token_url_with_basic_client_auth(scenarios, fed, monkeypatch):
    path, _ = scenarios.workforce_user()
    use(monkeypatch, path)
    token = gauth.get_token()
    assert fed.sts.issued[token]["identity"] == "wf-user"
    (request,) = fed.sts.requests
    assert request.route == "/v1/oauth/token"
    assert request.form == {"grant_type": "refresh_token", "refresh_token": "wf-refresh"}
    expected = base64.b64encode(b"wf-client:wf-secret").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


# --- the cache identity follows the file ------------------------------------------------------


@pytest.mark.parametrize("kind", ["file_text", "impersonated_user", "workforce_user"])
def test_editing_the_file_changes_the_cache_identity(scenarios, fed, monkeypatch, kind):
    path, issuer = scenarios.build(kind)
    use(monkeypatch, path)
    first = gauth.get_token()
    assert gauth.get_token() == first  # cached
    info = json.loads(path.read_text())
    info["quota_project_id"] = "another"
    path.write_text(json.dumps(info))
    second = gauth.get_token()
    assert second != first
    assert issuer.is_live(second)


# --- malformed configurations: one clear line each ---------------------------------------------

FILE_SOURCE = {"file": "/nonexistent/token"}
AWS_SOURCE = {
    "environment_id": "aws1",
    "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
}
USER_SOURCE = {
    "type": "authorized_user",
    "client_id": "c",
    "client_secret": "s",
    "refresh_token": "r",
}

MALFORMED = [
    ("missing audience", external(FILE_SOURCE, audience=None), "field 'audience' is missing"),
    (
        "missing subject_token_type",
        external(FILE_SOURCE, subject_token_type=None),
        "field 'subject_token_type' is missing",
    ),
    (
        "missing credential_source",
        external(None),
        "field 'credential_source' is missing.*create-cred-config",
    ),
    (
        "unknown environment_id",
        external({**AWS_SOURCE, "environment_id": "azure1"}, token_type=AWS_TOKEN_TYPE),
        "field 'credential_source.environment_id' is 'azure1', expected 'aws1'",
    ),
    (
        "aws version 2",
        external({**AWS_SOURCE, "environment_id": "aws2"}, token_type=AWS_TOKEN_TYPE),
        "field 'credential_source.environment_id' is 'aws2': only 'aws1' is supported",
    ),
    (
        "aws without verification url",
        external({"environment_id": "aws1"}, token_type=AWS_TOKEN_TYPE),
        "field 'credential_source.regional_cred_verification_url' is not an https URL",
    ),
    (
        "environment_id without the aws token type",
        external({**AWS_SOURCE, "file": "/x"}),
        "field 'credential_source.environment_id' is 'aws1', which is only for AWS",
    ),
    (
        "file and url",
        external({"file": "/x", "url": "http://127.0.0.1/"}),
        "field 'credential_source' must have exactly one of 'file', 'url'",
    ),
    (
        "no source at all",
        external({}),
        "field 'credential_source' must have exactly one of 'file', 'url', 'executable', "
        "'certificate'",
    ),
    (
        "x509 certificate without a config",
        external({"certificate": {}}),
        "field 'credential_source.certificate' needs exactly one of use_default_certificate_config",
    ),
    (
        "unknown format",
        external({"file": "/x", "format": {"type": "xml"}}),
        "field 'credential_source.format.type' is 'xml', expected 'text' or 'json'",
    ),
    (
        "json format without field",
        external({"file": "/x", "format": {"type": "json"}}),
        r"field 'credential_source.format.subject_token_field_name' is missing \(needed for "
        r"the json format\)",
    ),
    (
        "url not http",
        external({"url": "file:///etc/passwd"}),
        "field 'credential_source.url' is not an http or https URL",
    ),
    *[
        (f"unclosed IPv6 host in {name}", external(source, **extra), message)
        for name, source, extra, message in [
            ("url", {"url": "http://[::1/"}, {}, "field 'credential_source.url' is not an http"),
            (
                "regional_cred_verification_url",
                {**AWS_SOURCE, "regional_cred_verification_url": "https://[::1"},
                {"token_type": AWS_TOKEN_TYPE},
                "field 'credential_source.regional_cred_verification_url' is not an https URL",
            ),
            (
                "region_url",
                {**AWS_SOURCE, "region_url": "http://[::1/zone"},
                {"token_type": AWS_TOKEN_TYPE},
                "field 'credential_source.region_url' is not an http URL",
            ),
        ]
    ],
    (
        "user project on a workload pool",
        external(FILE_SOURCE, workforce_pool_user_project="1"),
        "'workforce_pool_user_project' is set but the audience is not a workforce pool",
    ),
    (
        "impersonation url without email",
        external(FILE_SOURCE, service_account_impersonation_url="https://iam.example/"),
        "does not end in serviceAccounts/EMAIL:generateAccessToken",
    ),
    (
        "lifetime not a number",
        external(
            FILE_SOURCE,
            service_account_impersonation_url=IAM_URL,
            service_account_impersonation={"token_lifetime_seconds": "1h"},
        ),
        r"field 'service_account_impersonation.token_lifetime_seconds' is not a whole number "
        r"from 1 to 43200; fix it or remove it \(the default is 3600\)",
    ),
    (
        "executable without command",
        external({"executable": {"timeout_millis": 5000}}),
        "field 'credential_source.executable.command' is missing",
    ),
    (
        "executable timeout too short",
        external({"executable": {"command": "x", "timeout_millis": 10}}),
        r"field 'credential_source.executable.timeout_millis' is not a number from 5000 to "
        r"120000; fix it or remove it \(the default is 30000\)",
    ),
    (
        "http token_url off loopback",
        external({"file": __file__}, token_url="http://sts.example.com/v1/token"),
        "refusing to send credentials to Google's STS 'http://sts.example.com/v1/token'",
    ),
    (
        "impersonated without source",
        {"type": "impersonated_service_account", "service_account_impersonation_url": IAM_URL},
        "field 'source_credentials' is missing.*--impersonate-service-account",
    ),
    (
        "impersonated from external_account",
        {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": external(FILE_SOURCE),
        },
        "type 'external_account' cannot be impersonated from.*into the external_account file",
    ),
    (
        "impersonated without url",
        {"type": "impersonated_service_account", "source_credentials": USER_SOURCE},
        "field 'service_account_impersonation_url' is missing",
    ),
    (
        "impersonated with bad delegates",
        {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": USER_SOURCE,
            "delegates": "a@b",
        },
        "field 'delegates' is not a list",
    ),
    (
        "impersonated source missing refresh token",
        {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": IAM_URL,
            "source_credentials": {**USER_SOURCE, "refresh_token": None},
        },
        r"\(source_credentials\): field 'refresh_token' is not a non-empty string",
    ),
    (
        "workforce user without client_secret",
        {
            "type": "external_account_authorized_user",
            "refresh_token": "r",
            "token_url": "https://sts.googleapis.com/v1/oauth/token",
            "client_id": "c",
        },
        "field 'client_secret' is missing.*--login-config",
    ),
    (
        "gdch",
        {"type": "gdch_service_account", "format_version": "1"},
        "Distributed Cloud.*gdch_service_account.*not supported",
    ),
]


@pytest.mark.parametrize(
    ("info", "message"), [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED]
)
def test_malformed_configuration_gets_one_clear_line(monkeypatch, tmp_path, info, message):
    path = write(tmp_path, info)
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert one_line(caught).startswith(str(path))


AWS = {"token_type": AWS_TOKEN_TYPE}
CERTIFICATE = {"use_default_certificate_config": True}
IMPERSONATED = {
    "type": "impersonated_service_account",
    "service_account_impersonation_url": IAM_URL,
    "source_credentials": USER_SOURCE,
}
WORKFORCE_USER = {
    "type": "external_account_authorized_user",
    "refresh_token": "r",
    "token_url": "https://sts.googleapis.com/v1/oauth/token",
    "client_id": "c",
    "client_secret": "s",
}


def with_field(info, path, value):
    """``info`` with the field at the dotted ``path`` set to ``value`` (a copy)."""
    info = json.loads(json.dumps(info))
    *parents, name = path.split(".")
    here = info
    for parent in parents:
        here = here[parent]
    here[name] = value
    return info


# (the file, the field's full path): each field gets a value of a type it never holds.
FIELDS = [
    *[
        (external(FILE_SOURCE), name)
        for name in (
            "audience",
            "subject_token_type",
            "credential_source",
            "universe_domain",
            "token_url",
            "client_id",
            "client_secret",
            "workforce_pool_user_project",
            "quota_project_id",
            "service_account_impersonation_url",
        )
    ],
    (
        external(FILE_SOURCE, service_account_impersonation_url=IAM_URL),
        "service_account_impersonation",
    ),
    (
        external(
            FILE_SOURCE,
            service_account_impersonation_url=IAM_URL,
            service_account_impersonation={"token_lifetime_seconds": 60},
        ),
        "service_account_impersonation.token_lifetime_seconds",
    ),
    (external(FILE_SOURCE), "credential_source.file"),
    (external({**FILE_SOURCE, "format": {}}), "credential_source.format"),
    (external({**FILE_SOURCE, "format": {"type": "text"}}), "credential_source.format.type"),
    (
        external({**FILE_SOURCE, "format": {"type": "json", "subject_token_field_name": "t"}}),
        "credential_source.format.subject_token_field_name",
    ),
    (external({"url": "http://127.0.0.1:9/"}), "credential_source.url"),
    (external({"url": "http://127.0.0.1:9/", "headers": {}}), "credential_source.headers"),
    *[
        (external({"executable": {"command": "x"}}), f"credential_source.executable{name}")
        for name in ("", ".command", ".timeout_millis", ".output_file")
    ],
    *[
        (external(AWS_SOURCE, **AWS), f"credential_source.{name}")
        for name in (
            "environment_id",
            "regional_cred_verification_url",
            "region_url",
            "url",
            "imdsv2_session_token_url",
        )
    ],
    *[
        (external({"certificate": CERTIFICATE}), f"credential_source.certificate{name}")
        for name in (
            "",
            ".certificate_config_location",
            ".trust_chain_path",
            ".use_default_certificate_config",
        )
    ],
    *[
        (IMPERSONATED, name)
        for name in (
            "service_account_impersonation_url",
            "source_credentials",
            "source_credentials.type",
            "delegates",
            "source_credentials.quota_project_id",
        )
    ],
    *[
        (WORKFORCE_USER, name)
        for name in ("refresh_token", "token_url", "client_id", "client_secret", "universe_domain")
    ],
]


def field_id(row):
    info, field = row
    return f"{field} (aws)" if info.get("subject_token_type") == AWS_TOKEN_TYPE else field


@pytest.mark.parametrize("wrong", [7.5, [7]], ids=["number", "list"])
@pytest.mark.parametrize(("info", "field"), FIELDS, ids=[field_id(row) for row in FIELDS])
def test_a_wrong_type_in_any_federation_field_is_one_line_naming_its_full_path(
    monkeypatch, tmp_path, info, field, wrong
):
    path = write(tmp_path, with_field(info, field, wrong))
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    line = one_line(caught)
    assert line.startswith(f"{path}: field '{field}' is not "), line
    assert "; " in line.partition(f"field '{field}' is not ")[2], line  # and says what to do


def test_executables_are_not_run_unless_allowed(monkeypatch, tmp_path, bin_dir):
    helper = Executable(bin_dir)
    use(monkeypatch, write(tmp_path, external(helper.source())))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert "set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1" in one_line(caught)
    assert helper.calls == []


FRESH = {"version": 1, "success": True, "token_type": ID_TOKEN_TYPE, "id_token": SUBJECT}
EXECUTABLE_ERRORS = [
    *[
        (
            f"no {name}",
            {"response": {**FRESH, name: None}},
            f"the executable's response: field '{name}' is missing",
        )
        for name in ("version", "success", "token_type", "id_token")
    ],
    (
        "version not a number",
        {"response": {**FRESH, "version": "1"}},
        "the executable's response: field 'version' is not a whole number",
    ),
    ("version 2", {"response": {**FRESH, "version": 2}}, "has version 2, and only version 1"),
    (
        "failure",
        {"response": {"version": 1, "success": False, "code": "401", "message": "no login"}},
        "the executable failed: 401: no login",
    ),
    (
        "failure with exit code",
        {
            "response": {"version": 1, "success": False, "code": "403", "message": "denied"},
            "exit": 1,
        },
        "the executable failed: 403: denied",
    ),
    (
        "failure without code",
        {"response": {"version": 1, "success": False}},
        "says it failed but has no code and message fields",
    ),
    ("expired", {"response": {**FRESH, "expiration_time": 1000}}, "has expired"),
    (
        "expiration_time not a number",
        {"response": {**FRESH, "expiration_time": "tomorrow"}},
        "the executable's response: field 'expiration_time' is not a number; the executable must",
    ),
    (
        "expired output file",
        {"response": {**FRESH, "expiration_time": 1000}, "to_output_file": True},
        "the token in the executable's response has expired",
    ),
    (
        "unsupported token_type",
        {"response": {**FRESH, "token_type": "urn:x"}},
        "unsupported token_type 'urn:x'",
    ),
    ("not json", {"response": "token-on-its-own"}, "response is not a JSON object"),
    ("crash", {"response": "", "stderr": "boom\n", "exit": 3}, "exited with code 3 and said: boom"),
]


@pytest.mark.parametrize(
    ("settings", "message"),
    [row[1:] for row in EXECUTABLE_ERRORS],
    ids=[row[0] for row in EXECUTABLE_ERRORS],
)
def test_executable_error_shapes_get_one_clear_line(
    monkeypatch, tmp_path, executable, settings, message
):
    response = settings.pop("response")
    if isinstance(response, dict):
        response = {k: v for k, v in response.items() if v is not None}
    executable.configure(response=response, **settings)
    path = write(tmp_path, external(executable.source(output_file=tmp_path / "out.json")))
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert one_line(caught).startswith(str(path))
    assert SUBJECT not in str(caught.value)


def test_a_missing_executable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    source = {"executable": {"command": str(tmp_path / "no-such-helper")}}
    use(monkeypatch, write(tmp_path, external(source)))
    with pytest.raises(gauth.CredentialError, match="cannot run the executable .*no-such-helper"):
        gauth.get_token()


def test_a_missing_subject_token_file_is_a_clear_error(monkeypatch, tmp_path):
    path = write(tmp_path, external({"file": str(tmp_path / "gone.jwt")}))
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert "gone.jwt (credential_source.file) was not found" in one_line(caught)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "holds no subject token"), ('{"other": 1}', "with the field 'id_token'")],
    ids=["empty", "missing-field"],
)
def test_unreadable_subject_tokens_are_clear_errors(monkeypatch, tmp_path, content, message):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    fmt = {"type": "json", "subject_token_field_name": "id_token"} if content else None
    source = {"file": str(token_file), **({"format": fmt} if fmt else {})}
    use(monkeypatch, write(tmp_path, external(source)))
    with pytest.raises(gauth.CredentialError, match=message):
        gauth.get_token()


# --- refusals and broken answers of each server ------------------------------------------------


def sts_refuses(fed, fake_aws, fake_idp):
    fed.sts.script((400, {"error": "invalid_grant", "error_description": "audience mismatch"}))


def sts_is_down(fed, fake_aws, fake_idp):
    fed.sts.script(*[(503, "unavailable")] * 3)


def sts_sends_no_token(fed, fake_aws, fake_idp):
    fed.sts.script((200, {"token_type": "Bearer"}))


def iam_denies(fed, fake_aws, fake_idp):
    fed.iam.script(
        (
            403,
            {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}},
        )
    )


def iam_sends_no_access_token(fed, fake_aws, fake_idp):
    fed.iam.script((200, {"expireTime": "2030-01-01T00:00:00Z"}))


def iam_sends_a_bad_expire_time(fed, fake_aws, fake_idp):
    fed.iam.script((200, {"accessToken": "ya29.x", "expireTime": "tomorrow"}))


def idp_refuses(fed, fake_aws, fake_idp):
    fake_idp.script((401, "no"))


def imds_refuses_a_session(fed, fake_aws, fake_idp):
    fake_aws.script((403, "Forbidden"))


def imds_has_no_role(fed, fake_aws, fake_idp):
    fake_aws.script((200, "tok"), (200, "us-east-2b"), (404, "Not Found"))


def imds_has_no_credentials(fed, fake_aws, fake_idp):
    fake_aws.script((200, "tok"), (200, "us-east-2b"), (200, "gauth-role"), (404, "Not Found"))


def workforce_refresh_refused(fed, fake_aws, fake_idp):
    fed.sts.script((400, {"error": "invalid_grant", "error_description": "expired"}))


SERVER_ERRORS = [
    ("file_text", sts_refuses, r"HTTP 400, invalid_grant: audience mismatch\).*provider accepts"),
    ("file_text", sts_is_down, r"STS at https://sts.googleapis.com/v1/token refused \(HTTP 503\)$"),
    ("file_text", sts_sends_no_token, "STS answered without an access_token"),
    ("sts_then_impersonation", iam_denies, "HTTP 403, PERMISSION_DENIED.*workloadIdentityUser"),
    ("impersonated_user", iam_denies, "HTTP 403.*serviceAccountTokenCreator on target@"),
    ("impersonated_user", iam_sends_no_access_token, "without an accessToken"),
    ("impersonated_user", iam_sends_a_bad_expire_time, "without a valid expireTime"),
    ("url_text", idp_refuses, "subject token URL http://127.0.0.1:.*/token answered HTTP 401"),
    ("aws_metadata", imds_refuses_a_session, "HTTP 403 for an IMDSv2 session token"),
    ("aws_metadata", imds_has_no_role, "HTTP 404 for the instance role name"),
    ("aws_metadata", imds_has_no_credentials, "HTTP 404 for the role's credentials"),
    ("workforce_user", workforce_refresh_refused, "invalid_grant.*--login-config"),
]


@pytest.mark.parametrize(
    ("kind", "break_it", "message"),
    SERVER_ERRORS,
    ids=[f"{kind}-{break_it.__name__}" for kind, break_it, _ in SERVER_ERRORS],
)
def test_server_refusals_get_one_clear_line(
    scenarios, fed, fake_aws, fake_idp, monkeypatch, kind, break_it, message
):
    path, _ = scenarios.build(kind)
    break_it(fed, fake_aws, fake_idp)
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert one_line(caught).startswith(str(path))


# --- secrets never leak -------------------------------------------------------------------------

SENTINELS = {
    "subject": "SENTINEL-SUBJECT-TOKEN",
    "client_secret": "SENTINEL-CLIENT-SECRET",
    "aws_secret": "SENTINEL-AWS-SECRET",
    "aws_session": "SENTINEL-AWS-SESSION",
    "refresh": "SENTINEL-REFRESH-TOKEN",
}


def all_text(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc)


@pytest.mark.parametrize("where", ["sts", "iam"])
def test_no_secret_reaches_errors_or_debug_logs(
    fed, fake_aws, monkeypatch, tmp_path, caplog, where
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASENTINEL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINELS["aws_secret"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", SENTINELS["aws_session"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    fed.sts.add_provider(
        WORKFORCE, AWS_TOKEN_TYPE, lambda token: None, client=("c", SENTINELS["client_secret"])
    )
    fed.iam.add_service_account(TARGET)
    info = external(
        fake_aws.credential_source(),
        audience=WORKFORCE,
        token_type=AWS_TOKEN_TYPE,
        client_id="c",
        client_secret=SENTINELS["client_secret"],
        service_account_impersonation_url=fed.iam.url(TARGET),
    )
    use(monkeypatch, write(tmp_path, info))
    if where == "sts":
        fed.sts.script((400, {"error": "invalid_request", "error_description": "bad"}))
    else:
        fed.iam.script((403, {"error": {"code": 403, "message": "no", "status": "DENIED"}}))
    with caplog.at_level(logging.DEBUG, logger="artifactregistry_gauth"):
        with pytest.raises(gauth.CredentialError) as caught:
            gauth.get_token()
    assert "exchanging the aws subject token" in caplog.text  # debug logging was on
    text = all_text(caught.value) + caplog.text
    issued = list(fed.sts.issued)
    for secret in [*SENTINELS.values(), *issued]:
        assert secret not in text
    assert fed.sts.exchanges, "the request was sent"


def test_no_refresh_token_or_subject_token_in_errors_of_other_types(
    fed, executable, monkeypatch, tmp_path
):
    executable.token = SENTINELS["subject"]
    executable.configure(
        response={**FRESH, "id_token": SENTINELS["subject"], "expiration_time": 1000}
    )
    use(monkeypatch, write(tmp_path, external(executable.source())))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert SENTINELS["subject"] not in all_text(caught.value)

    info = {
        "type": "external_account_authorized_user",
        "refresh_token": SENTINELS["refresh"],
        "token_url": fed.sts.refresh_url,
        "client_id": "c",
        "client_secret": SENTINELS["client_secret"],
    }
    use(monkeypatch, write(tmp_path, info, "wf.json"))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    text = all_text(caught.value)
    assert SENTINELS["refresh"] not in text and SENTINELS["client_secret"] not in text


# --- conformance with google-auth -------------------------------------------------------------
#
# google-auth is the reference: both libraries load the same file and refresh against the same
# fakes, and the token requests they send (STS, IAM, OAuth) must match field by field. Values
# that are new on every run (times, signatures, issued tokens) are compared by what they are,
# and a form's field order is not compared (it means nothing; the JWT grant's differs).
# Where we differ on purpose, it is outside the token requests:
# - google-auth asks AWS for a new IMDSv2 session token for the region and again for the
#   credentials; we reuse one per lookup (one round trip less, same credentials);
# - google-auth sends x-goog-api-client metrics headers; we send none;
# - google-auth runs an executable with our stdin and its stderr mixed into the JSON it parses;
#   we give it /dev/null (it must never wait for input) and read stderr apart (a warning
#   cannot spoil the JSON), so only the environment it receives is compared here;
# - google-auth fails on a file without token_url; we use https://sts.{universe_domain}/v1/token.


@pytest.mark.filterwarnings("ignore:The load_credentials_from_file method is deprecated")
@pytest.mark.parametrize("kind", Scenarios.KINDS)
def test_token_requests_match_google_auth(scenarios, fed, fake_aws, fake_idp, monkeypatch, kind):
    google_auth = pytest.importorskip("google.auth")
    import google.auth.transport.requests
    from google.auth import iam

    # google-auth's iam module picks its endpoint once, at its first import: after an X.509
    # test (a certificate configured) that is iamcredentials.mtls.*; these files set none.
    plain = iam._IAM_ENDPOINT.replace("//iamcredentials.mtls.", "//iamcredentials.")
    monkeypatch.setattr(iam, "_IAM_ENDPOINT", plain)
    scenarios.executable.doubled_backslashes = True  # a command both can run, on Windows too
    path, issuer = scenarios.build(kind)

    credentials, _ = google_auth.load_credentials_from_file(str(path), scopes=[CLOUD_PLATFORM])
    clear_requests(fed, fake_aws, fake_idp)  # loading may already have looked up the project
    executable_runs = len(scenarios.executable.calls)
    credentials.refresh(google.auth.transport.requests.Request())
    assert issuer.is_live(credentials.token)
    theirs = token_requests(fed)
    their_env = [c["env"] for c in scenarios.executable.calls[executable_runs:]]

    clear_requests(fed, fake_aws, fake_idp)
    (scenarios.tmp_path / "exe-output.json").unlink(missing_ok=True)
    executable_runs = len(scenarios.executable.calls)
    use(monkeypatch, path)
    assert issuer.is_live(gauth.get_token())
    ours = token_requests(fed)
    our_env = [c["env"] for c in scenarios.executable.calls[executable_runs:]]

    assert theirs[type(issuer).__name__], "google-auth sent no token request"
    assert ours == theirs
    assert our_env == their_env


# --- keyring get, end to end -------------------------------------------------------------------


@pytest.mark.clients
@pytest.mark.parametrize("kind", Scenarios.KINDS)
def test_keyring_get_answers_with_a_token_for_every_type(scenarios, monkeypatch, kind):
    path, issuer = scenarios.build(kind)
    use(monkeypatch, path)
    result = subprocess.run(
        [sys.executable, "-m", "keyring", "get", INDEX, "oauth2accesstoken"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert issuer.is_live(result.stdout.strip())
