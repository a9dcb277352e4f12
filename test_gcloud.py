"""gcloud as a credential source: whose token it returns, and the tokens it would only echo.

The first part runs against the fake gcloud of fakes/gcloud.py, which honours the same
properties as the real one. The tests marked ``gcloud`` run the real Cloud SDK (where
one is installed) against loopback fakes of Google's token and IAM endpoints.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import FIFO, WINDOWS, posix_case, register_secret
from fakes.testing import one_line

DEPLOYER = "deployer@proj.iam.gserviceaccount.com"
BUILDER = "builder@proj.iam.gserviceaccount.com"


def as_new_process():
    """Forget what this process remembers, as a new pip or uv process would start."""
    gauth._forget_tokens()


def config_dir():
    return Path(os.environ["CLOUDSDK_CONFIG"])


def write_configuration(name, text, activate=True):
    """Write gcloud's configuration ``name`` (INI text) and make it the active one."""
    directory = config_dir() / "configurations"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"config_{name}").write_text(text)
    if activate:
        (config_dir() / "active_config").write_text(name)


def set_property(where, name, value, monkeypatch, fake_gcloud):
    """Set gcloud property ``section/name`` where gcloud reads it: env, config or installation."""
    section, option = name.split("/")
    if where == "env":
        monkeypatch.setenv(f"CLOUDSDK_{section.upper()}_{option.upper()}", value)
    elif where == "configuration":
        write_configuration("default", f"[{section}]\n{option} = {value}\n")
    else:
        fake_gcloud.installation_properties.write_text(f"[{section}]\n{option} = {value}\n")


def unset_property(where, name, monkeypatch, fake_gcloud):
    section, option = name.split("/")
    if where == "env":
        monkeypatch.delenv(f"CLOUDSDK_{section.upper()}_{option.upper()}")
    elif where == "configuration":
        write_configuration("default", "")
    else:
        fake_gcloud.installation_properties.write_text("")


def key_file(tmp_path, email, name="key.json"):
    """A credential file as gcloud's credential_file_override names it (only its email matters)."""
    path = tmp_path / name
    path.write_text(f'{{"type": "service_account", "client_email": "{email}"}}')
    return path


# --- whose token: the identity is every property that decides gcloud's answer ----------------


@pytest.mark.parametrize("where", ["env", "configuration", "installation"])
def test_impersonation_switched_on_and_off_never_serves_the_other_identitys_token(
    where, monkeypatch, fake_gcloud
):
    plain = gauth.get_token()
    as_new_process()
    set_property(where, "auth/impersonate_service_account", DEPLOYER, monkeypatch, fake_gcloud)
    impersonated = gauth.get_token()
    as_new_process()
    unset_property(where, "auth/impersonate_service_account", monkeypatch, fake_gcloud)
    again = gauth.get_token()
    assert fake_gcloud.principals[plain] == "user@example.com"
    assert fake_gcloud.principals[impersonated] == DEPLOYER
    assert again == plain  # the plain account's token, still good, from the disk cache
    assert len(fake_gcloud.calls) == 2


@pytest.mark.parametrize("where", ["env", "configuration", "installation"])
def test_a_credential_file_override_is_a_new_identity(where, tmp_path, monkeypatch, fake_gcloud):
    plain = gauth.get_token()
    as_new_process()
    override = key_file(tmp_path, BUILDER)
    set_property(where, "auth/credential_file_override", str(override), monkeypatch, fake_gcloud)
    overridden = gauth.get_token()
    assert fake_gcloud.principals[plain] == "user@example.com"
    assert fake_gcloud.principals[overridden] == BUILDER


def test_a_credential_file_rewritten_in_place_is_a_new_identity(tmp_path, monkeypatch, fake_gcloud):
    # google-github-actions/auth writes a new file at the same path for every job.
    override = key_file(tmp_path, BUILDER)
    monkeypatch.setenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", str(override))
    first = gauth.get_token()
    as_new_process()
    key_file(tmp_path, DEPLOYER)
    second = gauth.get_token()
    assert fake_gcloud.principals[first] == BUILDER
    assert fake_gcloud.principals[second] == DEPLOYER


def test_an_impersonated_access_token_file_rewritten_in_place_is_a_new_identity(
    tmp_path, monkeypatch, fake_gcloud
):
    token_file = tmp_path / "token"
    token_file.write_text("ya29.first-source-token")
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", DEPLOYER)
    first = gauth.get_token()
    as_new_process()
    token_file.write_text("ya29.second-source-token")
    second = gauth.get_token()
    assert first != second
    assert len(fake_gcloud.calls) == 2


@pytest.mark.parametrize(
    ("installation", "configuration", "env", "expected"),
    [
        (BUILDER, "", None, BUILDER),
        (BUILDER, DEPLOYER, None, DEPLOYER),
        (BUILDER, DEPLOYER, "env@proj.iam.gserviceaccount.com", "env@proj.iam.gserviceaccount.com"),
        (BUILDER, DEPLOYER, "", "user@example.com"),  # set but empty: no impersonation
    ],
)
def test_properties_are_read_in_gclouds_precedence(
    installation, configuration, env, expected, monkeypatch, fake_gcloud
):
    fake_gcloud.installation_properties.write_text(
        f"[auth]\nimpersonate_service_account = {installation}\n"
    )
    if configuration:
        write_configuration("default", f"[auth]\nimpersonate_service_account = {configuration}\n")
    if env is not None:
        monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", env)
    token = gauth.lookup()
    assert fake_gcloud.principals[token.value] == expected
    impersonating = expected != "user@example.com"
    assert (f"impersonating {expected}" in token.source) == impersonating


def test_an_empty_core_account_variable_means_no_account_as_in_gcloud(monkeypatch, fake_gcloud):
    write_configuration("default", "[core]\naccount = me@example.com\n")
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "")
    with pytest.raises(gauth.CredentialError, match="no active account|do not currently have"):
        gauth.get_token()


def test_the_account_comes_from_the_active_configuration(monkeypatch, fake_gcloud):
    write_configuration("home", "[core]\naccount = me@home.example\n", activate=False)
    write_configuration("work", "[core]\naccount = me@work.example\n")
    work = gauth.get_token()
    monkeypatch.setenv("CLOUDSDK_ACTIVE_CONFIG_NAME", "home")
    home = gauth.get_token()
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "me@elsewhere.example")
    elsewhere = gauth.get_token()
    principals = fake_gcloud.principals
    assert principals[work] == "me@work.example"
    assert principals[home] == "me@home.example"
    assert principals[elsewhere] == "me@elsewhere.example"


@pytest.mark.parametrize(
    ("content", "configuration", "has_file"),
    [
        ("work", "work", True),
        # gcloud takes it literally: a file that is not there, and on Windows none can be
        ("work\n", "work\n", not WINDOWS),
        ("work\r\n", "work\n", not WINDOWS),  # read as text, newlines translated
        ("", "default", True),
        ("Work", "default", False),  # a name gcloud rejects: it starts default afresh
        ("work\n\n", "default", False),
        ("\ufeffwork", "default", False),
    ],
)
def test_the_active_configuration_name_is_read_as_gcloud_reads_it(content, configuration, has_file):
    config_dir().mkdir(parents=True)
    (config_dir() / "active_config").write_bytes(content.encode("utf-8"))
    name, path = gauth.gcloud_active_configuration(str(config_dir()))
    assert name == configuration
    assert path == (str(config_dir() / "configurations" / f"config_{name}") if has_file else None)


@pytest.mark.parametrize("name", ["NONE", "work"])
def test_the_configuration_variable_wins_over_active_config(name, monkeypatch):
    config_dir().mkdir(parents=True)
    (config_dir() / "active_config").write_text("home")
    monkeypatch.setenv("CLOUDSDK_ACTIVE_CONFIG_NAME", name)
    configuration, path = gauth.gcloud_active_configuration(str(config_dir()))
    assert configuration == name
    assert (path is None) == (name == "NONE")


def test_a_trailing_newline_in_active_config_is_no_account_as_in_gcloud(fake_gcloud):
    fake_gcloud.configure(account=None)  # gcloud has no account beyond its properties
    write_configuration("work", "[core]\naccount = me@work.example\n")
    (config_dir() / "active_config").write_bytes(b"work\n")  # \n, not Windows' \r\n
    with pytest.raises(gauth.CredentialError, match="do not currently have an active account"):
        gauth.get_token()


def test_the_sdk_root_is_found_through_the_link_on_path(fake_gcloud):
    found = gauth.gcloud_installation_properties(str(fake_gcloud.path))
    assert found == str(fake_gcloud.installation_properties)


def test_describe_and_doctor_name_the_impersonated_account(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "me@example.com")
    write_configuration("ci", f"[auth]\nimpersonate_service_account = {DEPLOYER}\n")
    report = gauth.diagnose()
    (step,) = [s for s in report["sources"] if s["source"] == "gcloud"]
    expected = f"gcloud (me@example.com impersonating {DEPLOYER}, configuration ci)"
    assert step["detail"] == expected
    assert report["token"]["source"] == expected


def test_a_delegation_chain_impersonates_its_last_account(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", f"{BUILDER},{DEPLOYER}")
    token = gauth.get_token()
    assert fake_gcloud.principals[token] == DEPLOYER
    assert f"impersonating {DEPLOYER}" in gauth.lookup().source


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("active_config", b"\xff\xfe", "active_config: cannot read gcloud's active configuration"),
        posix_case(
            "active_config", "fifo", "active_config: cannot read.*not a regular file", reason=FIFO
        ),
        ("active_config", "directory", "active_config: cannot read.*not a regular file"),
        ("configurations/config_default", b"\xff[core]", "config_default: cannot read.*UTF-8"),
        ("configurations/config_default", b"account = x\n", "config_default: gcloud cannot parse"),
        (
            "configurations/config_default",
            b"[core]\naccount = a%b\n",
            "cannot read property core/account",
        ),
        ("configurations/config_default", b"[auth]\na = 1\na = 2\n", "gcloud cannot parse"),
        posix_case(
            "configurations/config_default",
            "fifo",
            "config_default: cannot read.*regular file",
            reason=FIFO,
        ),
    ],
)
def test_broken_gcloud_configuration_files_get_a_clear_error(name, content, message, fake_gcloud):
    path = config_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name != "active_config":
        (config_dir() / "active_config").write_text("default")
    if content == "fifo":
        _fifo(path)
    elif content == "directory":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert "\n" not in str(caught.value)
    assert fake_gcloud.calls == []


# Each reference recurses, six to a line, ten lines deep: about 10 million substitutions for
# configparser (and so for gcloud, which interpolates every section) from 470 bytes.
NESTED = "[other]\nv0 = %%\n" + "".join(
    f"v{n} = " + f"%(v{n - 1})s" * 6 + "\n" for n in range(1, 10)
)
PROXY_PASSWORD = "Proxy-Pa55word"

CONFIG_VALUES = [
    # (name, INI text, the one line's words (None: it reads), words it must never show)
    (
        "a % gcloud cannot read",
        f"[proxy]\npassword = {PROXY_PASSWORD}%x\n",
        "proxy/password",
        "Pa55",
    ),
    ("a %% for a literal %", f"[proxy]\npassword = {PROXY_PASSWORD}%%\n", None, "Pa55"),
    ("a reference to no option", "[proxy]\npassword = %(nothing)s\n", "proxy/password", None),
    ("references in a loop", "[other]\na = %(b)s\nb = %(a)s\n", "other/a", None),
    ("nested references", NESTED, "other/v", None),
    ("a line that is not a setting", f"[other]\nx = a\n{PROXY_PASSWORD}\n", "line 3", "Pa55"),
    ("an option twice", f"[proxy]\npassword = {PROXY_PASSWORD}\npassword = 2\n", "line 3", "Pa55"),
    ("a line before any section", f"password = {PROXY_PASSWORD}\n", "line 1", "Pa55"),
]


@pytest.mark.parametrize(
    ("text", "words", "unsaid"),
    [row[1:] for row in CONFIG_VALUES],
    ids=[row[0] for row in CONFIG_VALUES],
)
def test_gcloud_configuration_fails_where_gcloud_fails_and_never_quotes_a_value(
    text, words, unsaid, fake_gcloud
):
    write_configuration("default", text + f"[core]\naccount = {DEPLOYER}\n")
    if words is None:
        assert gauth.GcloudSettings.read(str(fake_gcloud.path)).get("core/account") == DEPLOYER
        return
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.GcloudSettings.read(str(fake_gcloud.path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(config_dir() / "configurations" / "config_default"))
    assert words in message
    assert unsaid is None or unsaid not in message


@pytest.mark.parametrize(
    ("text", "account"),
    [
        ("[core]\nuser = deployer\naccount = %(user)s@proj.iam.gserviceaccount.com\n", DEPLOYER),
        ("[DEFAULT]\nuser = deployer\n[core]\naccount = %(user)s@x.com\n", "deployer@x.com"),
        ("[core]\naccount = 100%% %(Name)s\nname = sure\n", "100% sure"),
    ],
)
def test_interpolation_in_a_decisive_property_reads_as_configparser_reads_it(text, account):
    write_configuration("default", text)
    assert gauth.GcloudSettings.read(None).get("core/account") == account


@pytest.mark.parametrize(
    "make",
    [
        posix_case(getattr(os, "mkfifo", None), reason=FIFO, id="fifo"),  # None on Windows
        pytest.param(os.mkdir, id="directory"),
    ],
)
def test_a_broken_gcloud_configuration_without_gcloud_installed_is_skipped(make):
    config_dir().mkdir(parents=True)
    make(config_dir() / "active_config")
    with pytest.raises(gauth.NotApplicable, match="gcloud is not on PATH.*active_config"):
        gauth._gcloud()


def federation_file(tmp_path, token_file, token_url="https://sts.googleapis.com/v1/token"):
    """An external_account file as gcloud's `create-cred-config` writes it."""
    path = tmp_path / "federation.json"
    info = {
        "type": "external_account",
        "audience": WORKLOAD,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": token_url,
        "credential_source": {"file": str(token_file)},
    }
    path.write_text(json.dumps(info))
    return path


WORKLOAD = (
    "//iam.googleapis.com/projects/123456/locations/global/"
    "workloadIdentityPools/pool/providers/provider"
)


def test_a_federation_override_is_keyed_by_its_subject_token(tmp_path, monkeypatch, fake_gcloud):
    # A shared runner: the same creds file each job, pointing at a per-job token file.
    token_file = tmp_path / "job-token"
    token_file.write_text("job-1-subject-token")
    override = federation_file(tmp_path, token_file)
    monkeypatch.setenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", str(override))
    first = gauth.get_token()
    as_new_process()
    again = gauth.get_token()
    as_new_process()
    token_file.write_text("job-2-subject-token")
    second = gauth.get_token()
    assert again == first
    assert second != first
    assert len(fake_gcloud.calls) == 2


def test_a_missing_subject_of_a_federation_override_is_one_line(tmp_path, monkeypatch, fake_gcloud):
    override = federation_file(tmp_path, tmp_path / "gone")
    monkeypatch.setenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", str(override))
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{override}: the subject token file {tmp_path / 'gone'}")
    assert fake_gcloud.calls == []


# --- tokens gcloud would only echo: the variable, then the file; keyed by their value --------


def test_cloudsdk_auth_access_token_is_served_without_running_gcloud(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.from-the-variable")
    token = gauth.lookup()
    assert token.value == "ya29.from-the-variable"
    assert token.source == "access token from $CLOUDSDK_AUTH_ACCESS_TOKEN"
    assert fake_gcloud.calls == []


def test_cloudsdk_auth_access_token_is_served_without_gcloud_installed(monkeypatch):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.from-the-variable")
    assert gauth.get_token() == "ya29.from-the-variable"


def test_cloudsdk_auth_access_token_wins_over_the_token_file(monkeypatch, tmp_path, fake_gcloud):
    token_file = tmp_path / "token"
    token_file.write_text("ya29.from-the-file")
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.from-the-variable")
    assert gauth.get_token() == "ya29.from-the-variable"
    assert fake_gcloud.calls == []


def test_an_access_token_file_set_in_the_configuration_is_read_without_gcloud(
    tmp_path, fake_gcloud
):
    token_file = tmp_path / "token"
    token_file.write_text("ya29.from-the-file\n")
    write_configuration("default", f"[auth]\naccess_token_file = {token_file}\n")
    assert gauth.get_token() == "ya29.from-the-file"
    assert fake_gcloud.calls == []


def test_a_broken_access_token_file_names_the_configuration_that_set_it(tmp_path, fake_gcloud):
    write_configuration("default", f"[auth]\naccess_token_file = {tmp_path / 'gone'}\n")
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert str(caught.value).endswith(
        f"fix or unset auth/access_token_file in {config_dir() / 'configurations/config_default'}"
    )


def test_an_impersonated_access_token_is_traded_by_gcloud(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.the-source-token")
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", DEPLOYER)
    token = gauth.lookup()
    assert fake_gcloud.principals[token.value] == DEPLOYER
    assert token.source == (
        f"gcloud (the token in $CLOUDSDK_AUTH_ACCESS_TOKEN impersonating {DEPLOYER}, "
        "configuration default)"
    )


def test_a_changed_google_oauth_access_token_is_served_at_once(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.first-explicit-token")
    assert gauth.get_token() == "ya29.first-explicit-token"
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.second-explicit-token")
    assert gauth.get_token() == "ya29.second-explicit-token"


def test_a_changed_cloudsdk_auth_access_token_is_served_at_once(monkeypatch):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.first-variable-token")
    assert gauth.get_token() == "ya29.first-variable-token"
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", "ya29.second-variable-token")
    assert gauth.get_token() == "ya29.second-variable-token"


def test_a_rewritten_access_token_file_is_served_at_once(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("ya29.first-file-token")
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(token_file))
    assert gauth.get_token() == "ya29.first-file-token"
    token_file.write_text("ya29.second-file-token")
    assert gauth.get_token() == "ya29.second-file-token"


@pytest.mark.parametrize(
    "variable",
    ["GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"],
)
def test_no_identity_holds_the_token_itself(variable, monkeypatch, tmp_path, fake_gcloud):
    secret = "ya29.never-in-an-identity-" + "x" * 20
    register_secret(secret)
    if variable.endswith("_FILE"):
        (tmp_path / "token").write_text(secret)
        monkeypatch.setenv(variable, str(tmp_path / "token"))
    else:
        monkeypatch.setenv(variable, secret)
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", DEPLOYER)  # gcloud's too
    identities = []
    for _, step in gauth.DISCOVERY:
        try:
            identities.append(step().static_identity)
        except gauth.NotApplicable:
            continue
    assert identities
    assert not any(secret in identity for identity in identities)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "does not hold one access token"),
        (b"ya29.a ya29.b", "does not hold one access token"),
        (b"\xff\xfe", "cannot read it.*UTF-8"),
        posix_case("fifo", "cannot read it.*not a regular file", reason=FIFO),
        (b"x" * 100_000, "cannot read it.*larger than"),
    ],
)
def test_a_bad_access_token_file_gets_a_clear_error(content, message, monkeypatch, tmp_path):
    path = tmp_path / "token"
    if content == "fifo":
        _fifo(path)
    else:
        path.write_bytes(content)
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(path))
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"], ids=["endless device", "empty device"])
def test_a_device_as_access_token_file_is_refused(path, monkeypatch):
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", path)
    with pytest.raises(gauth.CredentialError, match="not a regular file"):
        gauth.get_token()


# --- PATH: never the working directory ------------------------------------------------------


def make_program(directory, name):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("entry", ["", ".", "bin", "./bin"], ids=repr)
@pytest.mark.parametrize("platform", ["nt", "posix"])
def test_a_program_in_the_working_directory_is_never_run(entry, platform, tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    name = "gcloud.cmd" if platform == "nt" else "gcloud"
    make_program(checkout, name)
    make_program(checkout / "bin", name)
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("PATH", entry)
    monkeypatch.setattr(os, "name", platform)
    assert gauth._find_executable(name) is None


def test_gcloud_cmd_in_the_working_directory_is_not_gcloud_on_windows(tmp_path, monkeypatch):
    make_program(tmp_path / "checkout", "gcloud.cmd")
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setenv("PATH", os.pathsep.join(["", "."]))
    monkeypatch.setattr(os, "name", "nt")
    with pytest.raises(gauth.NotApplicable, match="gcloud is not on PATH"):
        gauth._gcloud()


def test_windows_search_tries_pathext_in_each_path_directory(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    make_program(first, "keyring.txt")
    wanted = make_program(second, "keyring.EXE")
    make_program(tmp_path, "keyring.EXE")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", os.pathsep.join([".", str(first), str(second)]))
    monkeypatch.setenv("PATHEXT", ".COM;.EXE;.BAT;.CMD")
    monkeypatch.setattr(os, "name", "nt")
    assert gauth._find_executable("keyring") == str(wanted)


def test_a_named_extension_is_searched_as_given_on_windows(tmp_path, monkeypatch):
    wanted = make_program(tmp_path / "sdk", "gcloud.cmd")
    make_program(tmp_path / "sdk", "gcloud.cmd.exe")
    monkeypatch.setenv("PATH", str(tmp_path / "sdk"))
    monkeypatch.setattr(os, "name", "nt")
    assert gauth._find_executable("gcloud.cmd") == str(wanted)


def test_the_first_absolute_path_entry_wins(tmp_path, monkeypatch):
    name = "gcloud.cmd" if WINDOWS else "gcloud"  # found through PATHEXT on Windows
    make_program(tmp_path / "a", "not-this")
    wanted = make_program(tmp_path / "b", name)
    make_program(tmp_path / "c", name)
    path = [str(tmp_path / "a"), "", str(tmp_path / "b"), str(tmp_path / "c")]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    assert gauth._find_executable("gcloud") == str(wanted)


def test_doctor_never_reports_a_keyring_from_the_working_directory(tmp_path, monkeypatch):
    make_program(tmp_path / "checkout", "keyring")
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setenv("PATH", ".")
    assert gauth._keyring_executable_report()["path"] is None


# --- running gcloud: its own bound, capped output, hints that fit ----------------------------


def test_a_hanging_gcloud_is_killed_at_its_own_bound(monkeypatch, fake_gcloud):
    monkeypatch.setattr(gauth, "GCLOUD_TIMEOUT", 1.0)
    fake_gcloud.configure(mode="hang")
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "did not answer within 1 s" in message
    assert "network" in message and "proxy" in message
    assert "gcloud auth login" not in message


def test_gcloud_gets_its_own_bound_not_what_the_lookup_budget_left(monkeypatch, fake_gcloud):
    monkeypatch.setattr(gauth, "LOOKUP_BUDGET", 0.3)
    fake_gcloud.configure(mode="sleep", seconds=1.0)
    assert gauth.get_token() in fake_gcloud.issued


def test_a_timeout_also_ends_what_gcloud_started(monkeypatch, bin_dir, fake_gcloud):
    # Windows' gcloud.cmd and some installs run Python as a child, not with exec. The fake
    # is such a gcloud.cmd on Windows; elsewhere a shell wrapper makes it one.
    if not WINDOWS:
        child = bin_dir / "gcloud-child"
        child.symlink_to(fake_gcloud.path.resolve())
        fake_gcloud.path.unlink()
        fake_gcloud.path.write_text(f'#!/bin/sh\n"{child}" "$@"\nexit $?\n')
        fake_gcloud.path.chmod(0o755)
    # The hang must begin before the timeout: under Wine cmd.exe and python.exe take seconds.
    monkeypatch.setattr(gauth, "GCLOUD_TIMEOUT", 5.0 if WINDOWS else 1.0)
    fake_gcloud.configure(mode="hang")
    with pytest.raises(gauth.CredentialError, match="did not answer"):
        gauth.get_token()
    (call,) = fake_gcloud.calls
    assert _ends(call["pid"])


def _ends(pid):
    """True once the process is gone or a zombie: SIGKILL takes effect when it next runs."""
    if WINDOWS:  # no /proc: wait on the process itself, if it is still there
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return True  # no such process any more
        try:
            return kernel32.WaitForSingleObject(handle, 10_000) == 0  # WAIT_OBJECT_0
        finally:
            kernel32.CloseHandle(handle)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "State:\tZ" in status:
            return True
        time.sleep(0.01)
    return False


def test_gcloud_that_answers_and_exits_is_not_waited_for_past_its_exit(monkeypatch, fake_gcloud):
    # A child it left running holds its stdout open: the pipe would close only when the
    # child ends. gcloud's exit with a whole answer is the end of the answer.
    fake_gcloud.configure(linger=120)
    monkeypatch.setattr(gauth, "GCLOUD_TIMEOUT", 20.0)
    token = gauth.lookup()
    assert token.value in fake_gcloud.issued
    [child] = fake_gcloud.lingering
    assert _ends(child), "what it left holding the pipe was ended with it"


def test_gcloud_that_fails_and_exits_is_not_waited_for_past_its_exit(monkeypatch, fake_gcloud):
    # Its error is on stderr, but a child it left running holds the pipes: waiting for them
    # to close would turn gcloud's own words and fix into a timeout.
    fake_gcloud.configure(
        mode="fail",
        stderr="ERROR: (gcloud.config.config-helper) There was a problem refreshing your "
        "current auth tokens: Reauthentication required.",
        linger=120,
    )
    monkeypatch.setattr(gauth, "GCLOUD_TIMEOUT", 20.0)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.lookup()
    assert "sign in again: run `gcloud auth login`" in one_line(caught)
    assert "timed out" not in str(caught.value)
    [child] = fake_gcloud.lingering
    assert _ends(child), "what it left holding the pipes was ended with it"


def test_huge_gcloud_output_is_not_held_in_memory(fake_gcloud):
    fake_gcloud.configure(mode="junk", stdout="x" * (3 << 20))
    with pytest.raises(gauth.CredentialError, match="gcloud printed more than 1 MiB on stdout"):
        gauth.get_token()


SA_INVALID_GRANT = (
    "ERROR: (gcloud.config.config-helper) There was a problem refreshing auth tokens for "
    "account {account}: ('invalid_grant: Invalid JWT Signature.', {{'error': 'invalid_grant'}})"
)
USER_INVALID_GRANT = (
    "ERROR: (gcloud.config.config-helper) There was a problem refreshing your current auth "
    "tokens: ('invalid_grant: Bad Request', {'error': 'invalid_grant'})"
)


@pytest.mark.parametrize(
    ("account", "stderr", "hint", "not_hint"),
    [
        (
            "ci@proj.iam.gserviceaccount.com",
            SA_INVALID_GRANT.format(account="ci@proj.iam.gserviceaccount.com"),
            "gcloud auth activate-service-account --key-file=KEY.json` for ci@proj",
            "gcloud auth login",
        ),
        (
            "me@example.com",
            "ERROR: (gcloud.config.config-helper) Please run: $ gcloud auth "
            "activate-service-account --key-file=...",
            "activate-service-account --key-file=KEY.json",
            "gcloud auth login",
        ),
        ("me@example.com", USER_INVALID_GRANT, "run `gcloud auth login`", "activate-service"),
        (
            "",
            "ERROR: (gcloud.config.config-helper) You do not currently have an active account "
            "selected.",
            "run `gcloud auth login`",
            "activate-service",
        ),
        (
            "me@example.com",
            "ERROR: (gcloud.config.config-helper) There was a problem refreshing your current "
            "auth tokens: HTTPSConnectionPool(host='oauth2.googleapis.com', port=443): Max "
            "retries exceeded with url: /token "
            "(Caused by ProxyError('Unable to connect to proxy'))",
            "check the network and any proxy",
            "gcloud auth login",
        ),
        (
            "me@example.com",
            "ERROR: (gcloud.config.config-helper) Failed to impersonate [deployer@proj.iam."
            "gserviceaccount.com]. Make sure the account that's trying to impersonate it has "
            "access to the service account itself and the "
            '"roles/iam.serviceAccountTokenCreator" role.',
            "roles/iam.serviceAccountTokenCreator",
            "gcloud auth login",
        ),
    ],
    ids=["sa-invalid-grant", "sa-said-by-gcloud", "user", "no-account", "network", "impersonation"],
)
def test_the_fix_fits_the_account_and_the_failure(
    account, stderr, hint, not_hint, monkeypatch, fake_gcloud
):
    if account:
        monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", account)
    fake_gcloud.configure(mode="fail", stderr=stderr)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert hint in message
    assert not_hint not in message.split(";", 1)[1]
    assert "\n" not in message


def test_gcloud_errors_name_the_identity_that_failed(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "me@example.com")
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", DEPLOYER)
    fake_gcloud.configure(mode="fail", stderr="ERROR: (gcloud.config.config-helper) nope")
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert str(caught.value).startswith(
        f"gcloud (me@example.com impersonating {DEPLOYER}, configuration default): ERROR:"
    )


# --- the real Cloud SDK ----------------------------------------------------------------------
#
# Each real gcloud run costs about a second: every test below runs it only a few times.

SA = "ci@proj.iam.gserviceaccount.com"
OTHER_SA = "other@proj.iam.gserviceaccount.com"


@pytest.mark.gcloud
def test_real_gcloud_an_activated_service_account_is_served_and_cached(real_gcloud):
    real_gcloud.activate(SA)
    first = gauth.lookup()
    as_new_process()
    again = gauth.lookup()
    assert real_gcloud.principal(first.value) == SA
    assert again.value == first.value
    assert first.source == f"gcloud ({SA}, configuration default)"


@pytest.mark.gcloud
def test_real_gcloud_impersonation_on_and_off_gets_each_identity_its_own_token(real_gcloud):
    real_gcloud.iam.add_service_account(DEPLOYER)
    real_gcloud.activate(SA)
    plain = gauth.get_token()
    as_new_process()
    real_gcloud.run("config", "set", "auth/impersonate_service_account", DEPLOYER)
    impersonated = gauth.lookup()
    as_new_process()
    real_gcloud.run("config", "unset", "auth/impersonate_service_account")
    again = gauth.get_token()
    assert real_gcloud.principal(plain) == SA
    assert real_gcloud.principal(impersonated.value) == DEPLOYER
    assert impersonated.source == f"gcloud ({SA} impersonating {DEPLOYER}, configuration default)"
    assert again == plain


@pytest.mark.gcloud
def test_real_gcloud_configurations_and_variables_select_the_account(real_gcloud, monkeypatch):
    real_gcloud.activate(OTHER_SA)
    real_gcloud.activate(SA)  # the active account of the default configuration now
    write_configuration("other", f"[core]\naccount = {OTHER_SA}\n", activate=False)
    by_file = gauth.get_token()
    monkeypatch.setenv("CLOUDSDK_ACTIVE_CONFIG_NAME", "other")
    by_configuration = gauth.get_token()
    monkeypatch.delenv("CLOUDSDK_ACTIVE_CONFIG_NAME")
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", OTHER_SA)
    by_variable = gauth.get_token()
    assert real_gcloud.principal(by_file) == SA
    assert real_gcloud.principal(by_configuration) == OTHER_SA
    assert real_gcloud.principal(by_variable) == OTHER_SA


@pytest.mark.gcloud
def test_real_gcloud_impersonation_in_the_installation_properties(
    real_gcloud, real_gcloud_sdk, bin_dir
):
    (bin_dir / "gcloud").unlink()
    (bin_dir / "gcloud").symlink_to(real_gcloud_sdk / "bin" / "gcloud")
    properties = real_gcloud_sdk / "properties"
    real_gcloud.iam.add_service_account(DEPLOYER)
    real_gcloud.activate(SA)
    plain = gauth.get_token()
    as_new_process()
    properties.write_text(f"[auth]\nimpersonate_service_account = {DEPLOYER}\n")
    try:
        impersonated = gauth.get_token()
    finally:
        properties.unlink()
    assert real_gcloud.principal(plain) == SA
    assert real_gcloud.principal(impersonated) == DEPLOYER


@pytest.mark.gcloud
def test_real_gcloud_credential_file_rewritten_in_place_is_a_new_identity(real_gcloud, monkeypatch):
    override = real_gcloud.key_file(SA, "gha-creds.json")
    monkeypatch.setenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", str(override))
    first = gauth.get_token()
    as_new_process()
    real_gcloud.key_file(OTHER_SA, "gha-creds.json")
    second = gauth.get_token()
    assert real_gcloud.principal(first) == SA
    assert real_gcloud.principal(second) == OTHER_SA


@pytest.mark.gcloud
def test_real_gcloud_trades_an_access_token_when_impersonating(real_gcloud, monkeypatch):
    real_gcloud.iam.add_service_account(DEPLOYER)
    source = real_gcloud.token_endpoint._issue(SA)  # a live token of SA, as if handed over
    monkeypatch.setenv("CLOUDSDK_AUTH_ACCESS_TOKEN", json.loads(source.body)["access_token"])
    monkeypatch.setenv("CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT", DEPLOYER)
    assert real_gcloud.principal(gauth.get_token()) == DEPLOYER


@pytest.mark.gcloud
@pytest.mark.parametrize(
    ("active_config", "account_variable"),
    [("default", None), ("default\n", None), ("Default", None), ("default", "")],
    ids=["no-account", "name-with-newline", "rejected-name", "empty-account-variable"],
)
def test_real_gcloud_without_an_active_account_says_run_gcloud_login(
    active_config, account_variable, real_gcloud, monkeypatch
):
    # An account that gcloud would only complain has no credentials, if it read it.
    account = "" if account_variable is None and active_config == "default" else SA
    write_configuration("default", f"[core]\naccount = {account}\n" if account else "")
    (config_dir() / "active_config").write_text(active_config)
    if account_variable is not None:
        monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", account_variable)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "You do not currently have an active account selected" in message
    assert message.endswith("run `gcloud auth login` (or `gcloud config set account ACCOUNT`)")


@pytest.mark.gcloud
def test_real_gcloud_invalid_grant_for_a_service_account_says_activate_a_key(real_gcloud):
    real_gcloud.token_endpoint.expires_in = 600  # under --min-expiry=15m: gcloud refreshes
    real_gcloud.activate(SA)
    real_gcloud.token_endpoint.revoked.add(SA)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "invalid_grant" in message
    assert f"gcloud auth activate-service-account --key-file=KEY.json` for {SA}" in message
    assert "gcloud auth login" not in message


@pytest.mark.gcloud
def test_real_gcloud_hanging_endpoint_is_a_timeout_not_a_login_problem(real_gcloud, monkeypatch):
    real_gcloud.token_endpoint.expires_in = 600  # under --min-expiry=15m: gcloud refreshes
    real_gcloud.activate(SA)
    asked = len(real_gcloud.token_endpoint.requests)
    real_gcloud.token_endpoint.script("HANG")
    monkeypatch.setattr(gauth, "GCLOUD_TIMEOUT", 4.0)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert len(real_gcloud.token_endpoint.requests) > asked  # it hung on the endpoint
    assert "did not answer within 4 s" in message
    assert "proxy" in message
    assert "gcloud auth login" not in message


@pytest.mark.gcloud
def test_real_gcloud_sdk_root_is_where_gcloud_says(real_gcloud):
    done = real_gcloud.run("info", "--format=value(config.paths.installation_properties_path)")
    found = gauth.gcloud_installation_properties(str(real_gcloud.path))
    assert found == done.stdout.strip()


@pytest.mark.gcloud
def test_real_gcloud_external_account_adc_file_is_used(real_gcloud, tmp_path):
    audience = (
        "//iam.googleapis.com/projects/123456/locations/global/"
        "workloadIdentityPools/pool/providers/provider"
    )
    subject = "eyJhbGciOiJSUzI1NiJ9.gcloud-subject.sig"
    register_secret(subject)
    (tmp_path / "subject.txt").write_text(subject)
    real_gcloud.token_endpoint.subject_tokens[audience] = subject
    creds = tmp_path / "creds.json"
    real_gcloud.run(
        "iam",
        "workload-identity-pools",
        "create-cred-config",
        audience.removeprefix("//iam.googleapis.com/"),
        f"--credential-source-file={tmp_path / 'subject.txt'}",
        f"--output-file={creds}",
    )
    # gcloud exchanges the subject token when it logs in: at the fake on loopback.
    info = json.loads(creds.read_text())
    creds.write_text(json.dumps({**info, "token_url": real_gcloud.token_endpoint.token_url}))
    real_gcloud.run("auth", "login", f"--cred-file={creds}", "--update-adc")
    adc = config_dir() / "application_default_credentials.json"
    token = gauth.lookup()
    assert json.loads(adc.read_text())["type"] == "external_account"
    assert real_gcloud.principal(token.value) == audience
    assert token.source.endswith(f"from {adc}")


@pytest.mark.gcloud
def test_real_gcloud_federation_override_gets_each_jobs_subject_its_own_token(
    real_gcloud, monkeypatch, tmp_path
):
    endpoint = real_gcloud.token_endpoint
    token_file = tmp_path / "job-token"
    override = federation_file(tmp_path, token_file, endpoint.token_url)
    monkeypatch.setenv("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", str(override))
    tokens = []
    for job in ("job-1", "job-2"):
        subject = f"eyJhbGciOiJSUzI1NiJ9.{job}-subject.sig"
        register_secret(subject)
        token_file.write_text(subject)
        endpoint.subject_tokens[WORKLOAD] = subject  # the previous job's is no longer valid
        tokens.append(gauth.get_token())
        as_new_process()
    assert tokens[0] != tokens[1]
    assert all(real_gcloud.principal(token) == WORKLOAD for token in tokens)


@pytest.mark.gcloud
def test_real_gcloud_fails_on_a_percent_in_any_section_as_we_do(real_gcloud):
    # gcloud interpolates every section when it loads its properties, so a bare % in
    # [proxy] password stops every gcloud command; we fail too, without quoting it.
    write_configuration("default", f"[core]\naccount = {SA}\n[proxy]\npassword = Pa55%x\n")
    done = real_gcloud.run("config", "get", "core/account", check=False)
    assert done.returncode != 0
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    assert "proxy/password" in str(caught.value)
    assert "Pa55" not in str(caught.value)


def test_gcloud_with_no_account_keeps_its_message_and_what_was_tried_before_it(fake_gcloud):
    fake_gcloud.configure(account=None)
    with pytest.raises(gauth.CredentialError) as caught:
        gauth.get_token()
    message = str(caught.value)
    assert "do not currently have an active account" in message  # gcloud's own words
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message  # what was tried before gcloud
    assert "not on Google Cloud" in message
    assert message.startswith("no Google credentials found (")
    assert message.endswith("run `gcloud auth login` (or `gcloud config set account ACCOUNT`)")
    assert "\n" not in message
