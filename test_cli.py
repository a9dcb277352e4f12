"""The command line: `token`, `get` and a link named keyring, `doctor`, `print-settings`,
`netrc`, `credential-helper`."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import artifactregistry_gauth as gauth
from fakes import (
    FIFO,
    SYMLINK,
    WINDOWS,
    assert_private,
    posix_case,
    posix_only,
    register_secret,
)
from fakes.programs import write_shell_program
from fakes.testing import keyring_cli, run_cli, run_main, write

ROOT = Path(__file__).resolve().parent
HOST = "us-python.pkg.dev"
INDEX = f"https://{HOST}/proj/repo/simple/"


# The user's pip file where pip reads it on this OS.
USERS_PIP_FILE = "AppData/Roaming/pip/pip.ini" if WINDOWS else ".config/pip/pip.conf"


def write_pip_conf(text):
    pip_conf = Path(os.environ["HOME"], USERS_PIP_FILE)
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(text)
    return pip_conf


def shown_urls(report):
    return [entry["url"] for entry in report]


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
    pip_conf = write_pip_conf(f"[global]\nextra-index-url = {INDEX}\n")
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


# --- doctor: URLs in configuration, their passwords masked --------------------------------------

SECRET = "s3cr3t-Pa55word"  # every password in the table below contains it

MASKING_CASES = [
    (
        "an @ in the password",
        f"https://user:{SECRET}@x@{HOST}/p/r/simple/",
        [f"https://user:***@{HOST}/p/r/simple/"],
    ),
    (
        "a colon and an @ in the password",
        f"https://user:a:{SECRET}@b@{HOST}/p/r/simple/",
        [f"https://user:***@{HOST}/p/r/simple/"],
    ),
    (
        "two URLs on one line",
        f"https://oauth2accesstoken@{HOST}/p/r/simple/ "
        f"https://_json_key_base64:{SECRET}@europe-python.pkg.dev/p/r/simple/",
        [
            f"https://oauth2accesstoken@{HOST}/p/r/simple/",
            "https://_json_key_base64:***@europe-python.pkg.dev/p/r/simple/",
        ],
    ),
    (
        "two URLs with only a comma between them",
        f"https://a:{SECRET}1@{HOST}/p/r/simple/,https://b:{SECRET}2@{HOST}/q/r/simple/",
        [f"https://a:***@{HOST}/p/r/simple/", f"https://b:***@{HOST}/q/r/simple/"],
    ),
    (
        "//oauth2accesstoken@ elsewhere in the string",
        f"https://u:{SECRET}@{HOST}/p/r/simple/?next=//oauth2accesstoken@{HOST}/",
        [f"https://u:***@{HOST}/p/r/simple/"],
    ),
    (
        "//oauth2accesstoken@ in another URL on the line",
        f"https://oauth2accesstoken@{HOST}/a/ https://u:{SECRET}@{HOST}/p/r/simple/",
        [f"https://oauth2accesstoken@{HOST}/a/", f"https://u:***@{HOST}/p/r/simple/"],
    ),
    (
        "a password for another host, then ours",
        f"https://u:{SECRET}@mirror.example/?x=https://{HOST}/p/r/simple/",
        [f"https://{HOST}/p/r/simple/"],
    ),
    (
        "upper-case scheme and host",
        f"HTTPS://U:{SECRET}@US-PYTHON.PKG.DEV/p/r/simple/",
        ["https://U:***@US-PYTHON.PKG.DEV/p/r/simple/"],
    ),
    (
        "a password-looking query is not shown",
        f"https://{HOST}/p/r/simple/?token={SECRET}",
        [f"https://{HOST}/p/r/simple/"],
    ),
    (
        "an empty password",
        f"https://u:@{HOST}/p/r/simple/",
        [f"https://u:***@{HOST}/p/r/simple/"],
    ),
]


@pytest.mark.parametrize(
    ("line", "shown"), [c[1:] for c in MASKING_CASES], ids=[c[0] for c in MASKING_CASES]
)
def test_doctor_masks_every_password_in_configured_urls(line, shown):
    write_pip_conf(f"[global]\nextra-index-url = {line}\n")
    report = gauth._index_url_report()
    assert shown_urls(report) == shown
    assert SECRET not in json.dumps(report)
    assert "x@" not in json.dumps(report)


def test_doctor_masks_passwords_in_environment_urls(monkeypatch):
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"{INDEX} https://u:{SECRET}@x@{HOST}/p/r/simple/")
    report = gauth._index_url_report()
    assert shown_urls(report) == [INDEX, f"https://u:***@{HOST}/p/r/simple/"]
    assert SECRET not in json.dumps(report)


def crafted_pyproject(repeats=8000):
    """56 KB that took the old pattern 4-6 s: many URL starts and no pkg.dev after them."""
    return f'x = "https://u:{SECRET}@{HOST}/p/r/simple/ ' + "http://" * repeats + '"\n'


def test_doctor_scans_a_crafted_pyproject_in_linear_work(monkeypatch, tmp_path):
    text = crafted_pyproject()
    assert len(text) > 56_000
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert shown_urls(gauth._index_url_report()) == [f"https://u:***@{HOST}/p/r/simple/"]
    # The work: every character of the text belongs to at most one URL candidate, and each
    # candidate is split once (the pattern has no nested repetition: linear by construction).
    candidates = gauth._urls_in(text)
    assert sum(len(url) for url in candidates) <= len(text)
    assert len(candidates) == 8001


def test_doctor_reads_a_config_file_up_to_its_size_bound(monkeypatch, tmp_path):
    padding = "#" * gauth.MAX_CONFIG_BYTES + "\n"
    (tmp_path / "uv.toml").write_text(f'{padding}[[index]]\nurl = "{INDEX}"\n')
    monkeypatch.chdir(tmp_path)
    assert gauth._index_url_report() == []


@posix_only(FIFO)
def test_doctor_skips_a_fifo_named_like_a_config_file(monkeypatch, tmp_path):
    os.mkfifo(tmp_path / "pyproject.toml")
    monkeypatch.chdir(tmp_path)
    assert gauth._index_url_report() == []


def test_doctor_reports_a_bounded_number_of_urls(monkeypatch):
    many = " ".join(f"https://{HOST}/p/r{i}/simple/" for i in range(500))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", many)
    assert len(gauth._index_url_report()) == gauth.MAX_REPORTED_URLS


# --- doctor: settings that keep a tool from asking keyring -------------------------------------


def warnings_about(word):
    return [w for w in gauth.diagnose()["warnings"] if word in w]


def fake_keyring_venv(root, version):
    """A venv-like folder whose keyring lists our backend, with keyring `version` in it.

    POSIX: bin/keyring and lib/python3.11/site-packages; Windows: Scripts\\keyring.cmd
    and Lib\\site-packages, as venv lays them out there.
    """
    scripts, site = ("Scripts", "Lib") if WINDOWS else ("bin", "lib/python3.11")
    (root / scripts).mkdir(parents=True)
    (root / site / "site-packages" / f"keyring-{version}.dist-info").mkdir(parents=True)
    listed = "artifactregistry_gauth.GooglePyPIAuth (priority: 9)"
    return write_shell_program(
        root / scripts / "keyring", posix=f"echo '{listed}'\n", windows=f"echo {listed}\n"
    )


def put_keyring_on_path(bin_dir, monkeypatch, keyring):
    """Make `keyring` the one on PATH; return the folder it is found in.

    POSIX: linked from bin_dir, as pipx links it. Windows: its Scripts folder goes on PATH.
    """
    if not WINDOWS:
        (bin_dir / "keyring").symlink_to(keyring)
        return bin_dir
    monkeypatch.setenv("PATH", os.pathsep.join([str(keyring.parent), os.environ["PATH"]]))
    return keyring.parent


@pytest.mark.parametrize(("version", "warned"), [("25.4.0", True), ("25.7.0", False)])
def test_doctor_warns_of_keyring_25_4_0_on_path(bin_dir, tmp_path, monkeypatch, version, warned):
    keyring = fake_keyring_venv(tmp_path / "pipx-venv", version)
    put_keyring_on_path(bin_dir, monkeypatch, keyring)
    assert gauth._keyring_executable_report()["version"] == version
    assert bool(warnings_about("Anonymous credential has no username")) is warned


@pytest.mark.parametrize(("version", "warned"), [("25.4.0", True), ("25.7.0", False)])
def test_doctor_warns_of_an_importable_keyring_25_4_0(tmp_path, version, warned):
    stub = tmp_path / "stub" / "keyring"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"__version__ = {version!r}\ndef get_keyring(): return 'x'\n")
    (stub / "backend.py").write_text("def get_all_keyring(): return []\n")
    env = dict(os.environ, PYTHONPATH=str(stub.parent))
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert report["keyring"]["version"] == version
    assert any("Anonymous credential" in w for w in report["warnings"]) is warned


@pytest.mark.parametrize(("pip_beside_it", "warned"), [(True, True), (False, False)])
def test_doctor_warns_of_a_keyring_in_pips_scripts_directory(
    bin_dir, tmp_path, monkeypatch, pip_beside_it, warned
):
    keyring = fake_keyring_venv(tmp_path / "venv", "25.7.0")
    folder = put_keyring_on_path(bin_dir, monkeypatch, keyring)
    if pip_beside_it:
        write_shell_program(folder / "pip", posix="", windows="")
    assert bool(warnings_about("whose subprocess provider skips it")) is warned


@pytest.mark.parametrize(("provider", "warned"), [("", False), ("subprocess", True)])
def test_doctor_minds_the_keyring_beside_its_own_pip_only_for_the_subprocess_provider(
    bin_dir, tmp_path, monkeypatch, provider, warned
):
    # doctor's own environment holds pip, keyring and the backend: pip imports keyring.
    keyring = fake_keyring_venv(tmp_path / "venv", "25.7.0")
    folder = put_keyring_on_path(bin_dir, monkeypatch, keyring)
    write_shell_program(folder / "pip", posix="", windows="")
    monkeypatch.setattr(sys, "executable", str(folder / "python"))
    monkeypatch.setenv("PIP_KEYRING_PROVIDER", provider)
    assert bool(warnings_about("whose subprocess provider skips it")) is warned


@pytest.mark.parametrize(
    ("env", "pip_conf", "warned"),
    [
        ({"PIP_NO_INPUT": "1"}, "", True),
        ({"PIP_NO_INPUT": "yes", "PIP_KEYRING_PROVIDER": "auto"}, "", True),
        ({}, "[global]\nno-input = true\n", True),
        ({}, "[install]\nno_input = on\n", True),
        ({"PIP_NO_INPUT": "1", "PIP_KEYRING_PROVIDER": "import"}, "", False),
        ({}, "[global]\nno-input = true\nkeyring-provider = subprocess\n", False),
        ({"PIP_NO_INPUT": "0"}, "[global]\nno-input = true\n", False),
        ({}, "", False),
    ],
)
def test_doctor_warns_of_pip_no_input_with_the_auto_provider(monkeypatch, env, pip_conf, warned):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    write_pip_conf(pip_conf)
    assert bool(warnings_about("never asks keyring")) is warned


def write_file(relative, text):
    path = Path(os.environ["HOME"], relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


UPLOAD = f"https://{HOST}/proj/repo/"
USERNAME_CASES = [
    (
        "pip.conf URL",
        USERS_PIP_FILE,
        "[global]\nindex-url = https://{user}@" + HOST + "/p/r/simple/\n",
        {},
    ),
    (".pypirc", ".pypirc", "[gar]\nrepository = " + UPLOAD + "\nusername = {user}\n", {}),
    (
        "hatch",
        ".config/hatch/config.toml",
        '[publish.index]\nrepo = "' + UPLOAD + '"\nuser = "{user}"\n',
        {},
    ),
    (
        "pdm",
        ".config/pdm/config.toml",
        '[repository.gar]\nurl = "' + UPLOAD + '"\nusername = "{user}"\n',
        {},
    ),
    ("uv publish", None, None, {"UV_PUBLISH_URL": UPLOAD, "UV_PUBLISH_USERNAME": "{user}"}),
    ("twine env", None, None, {"TWINE_REPOSITORY_URL": UPLOAD, "TWINE_USERNAME": "{user}"}),
    (
        "uv index env",
        ".config/uv/uv.toml",
        '[[index]]\nname = "gar"\nurl = "' + INDEX + '"\n',
        {"UV_INDEX_GAR_USERNAME": "{user}"},
    ),
]


@pytest.mark.parametrize(
    ("user", "ok"), [("__token__", False), ("someone", False), ("oauth2accesstoken", True)]
)
@pytest.mark.parametrize(
    ("relative", "text", "env"), [c[1:] for c in USERNAME_CASES], ids=[c[0] for c in USERNAME_CASES]
)
def test_doctor_says_the_username_must_be_oauth2accesstoken(
    monkeypatch, relative, text, env, user, ok
):
    if relative:
        write_file(relative, text.format(user=user))
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(user=user))
    (entry,) = gauth._index_url_report()
    assert entry["ok"] is ok, entry
    assert ("the username is" in entry["verdict"]) is not ok
    if user == "__token__":
        assert "__token__ (PyPI's)" in entry["verdict"]


FIXES = {  # what doctor tells each case to write instead of __token__
    "pip.conf URL": f"write https://oauth2accesstoken@{HOST}/p/r/simple/ instead",
    ".pypirc": "set username to oauth2accesstoken",
    "hatch": "set user to oauth2accesstoken",
    "pdm": "set username to oauth2accesstoken",
    "uv publish": "set UV_PUBLISH_USERNAME=oauth2accesstoken",
    "twine env": "set TWINE_USERNAME=oauth2accesstoken",
    "uv index env": "set UV_INDEX_GAR_USERNAME=oauth2accesstoken",
}


@pytest.mark.parametrize(
    ("case", "relative", "text", "env"), USERNAME_CASES, ids=[c[0] for c in USERNAME_CASES]
)
def test_doctor_exits_1_and_names_the_replacement_for_a_token_username(
    monkeypatch, capsys, case, relative, text, env
):
    if relative:
        write_file(relative, text.format(user="__token__"))
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(user="__token__"))
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.doctor-fix")
    code, out, _ = run_main(capsys, "doctor")
    assert code == 1
    problems = out.split("\nWill fail:\n", 1)[1]
    assert FIXES[case] in problems


UV_INDEX_CASES = [
    ("no username, no authenticate", f'[[index]]\nname = "gar"\nurl = "{INDEX}"\n', {}, False),
    (
        "authenticate always",
        f'[[index]]\nname = "gar"\nurl = "{INDEX}"\nauthenticate = "always"  # c\n',
        {},
        True,
    ),
    (
        "username in the URL",
        f'[[index]]\nname = "gar"\nurl = "https://oauth2accesstoken@{HOST}/p/r/simple/"\n',
        {},
        True,
    ),
    (
        "username in the environment",
        f'[[index]]\nname = "my-gar"\nurl = "{INDEX}"\n',
        {"UV_INDEX_MY_GAR_USERNAME": "oauth2accesstoken"},
        True,
    ),
    ("pyproject, no username", f'[[tool.uv.index]]\nname = "gar"\nurl = "{INDEX}"\n', {}, False),
    (
        "pyproject, authenticate always",
        f'[[tool.uv.index]]\nurl = "{INDEX}"\nauthenticate = "always"\n',
        {},
        True,
    ),
]


@pytest.mark.parametrize(
    ("text", "env", "ok"), [c[1:] for c in UV_INDEX_CASES], ids=[c[0] for c in UV_INDEX_CASES]
)
def test_doctor_says_when_uv_will_not_ask_keyring(monkeypatch, tmp_path, text, env, ok):
    name = "pyproject.toml" if "tool.uv" in text else "uv.toml"
    (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    (entry,) = gauth._index_url_report()
    assert entry["tool"] == "uv"
    assert entry["ok"] is ok
    assert ("uv will not ask keyring" in entry["verdict"]) is not ok
    if not ok:
        assert 'add authenticate = "always"' in entry["verdict"]


def test_doctor_text_marks_what_to_fix(monkeypatch):
    monkeypatch.setenv("PIP_NO_INPUT", "1")
    monkeypatch.setenv("PIP_INDEX_URL", f"https://__token__@{HOST}/p/r/simple/")
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.doctor-text")
    text = gauth._format_report(gauth.diagnose())
    assert f"  ! https://__token__@{HOST}/p/r/simple/ ($PIP_INDEX_URL): the username is" in text
    assert "Warnings:\n  ! pip's no-input" in text


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
        ("--location", "us-centrl1"),  # a typo: the host would not exist
        ("--location", "mars"),
        ("--location", "europe-west01"),
        ("--location", "global"),
        ("--repository", "r" * 70),
    ],
)
def test_print_settings_refuses_a_name_artifact_registry_would_not_have(option, value):
    args = {"--location": "us", "--project": "acme", "--repository": "wheels", option: value}
    result = run_cli("print-settings", *[part for pair in args.items() for part in pair])
    assert (result.returncode, result.stdout) == (2, "")
    assert f"not an Artifact Registry {option[2:]}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "location", ["us", "europe", "asia", "us-central1", "northamerica-northeast2", "me-central2"]
)
def test_print_settings_prints_only_hosts_the_backend_answers_for(location):
    result = run_cli(
        "print-settings", "--location", location, "--project", "acme", "--repository", "wheels"
    )
    assert result.returncode == 0, result.stderr
    host = f"{location}-python.pkg.dev"
    assert f"https://{host}/acme/wheels/simple/" in result.stdout
    assert gauth.answers_for(f"https://{host}/acme/wheels/simple/", "oauth2accesstoken")
    assert gauth.answers_for(host, "oauth2accesstoken")  # the bare name uv and pdm may ask


# --- netrc ----------------------------------------------------------------------------------------

TOKEN = "ya29.netrc-test-token"
ENTRY = f"machine {HOST} login oauth2accesstoken password {TOKEN}\n"


@pytest.fixture
def held_token(monkeypatch):
    """A token handed over in GOOGLE_OAUTH_ACCESS_TOKEN (its expiry unknown)."""
    register_secret(TOKEN, access_token=True)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)
    return TOKEN


@pytest.mark.parametrize(
    "given",
    [HOST, f"{HOST}:443", f"https://{HOST}/proj/repo/simple/", "US-PYTHON.PKG.DEV."],
    ids=["host", "host-and-port", "url", "upper-case-trailing-dot"],
)
def test_netrc_prints_an_entry_for_the_hostname(capsys, held_token, given):
    assert run_main(capsys, "netrc", given) == (0, ENTRY, "")


def test_netrc_prints_one_entry_per_host(capsys, held_token):
    code, out, _ = run_main(capsys, "netrc", HOST, "europe-python.pkg.dev", HOST)
    assert code == 0
    assert out == ENTRY + ENTRY.replace(HOST, "europe-python.pkg.dev")


def test_netrc_answers_for_hosts_in_artifactregistry_gauth_hosts(capsys, held_token, monkeypatch):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", "*.corp.test")
    assert run_main(capsys, "netrc", "pypi.corp.test")[1] == ENTRY.replace(HOST, "pypi.corp.test")


@pytest.mark.parametrize(
    "host",
    [
        "pypi.org",
        "https://pypi.org/simple/",
        f"http://{HOST}/proj/repo/simple/",
        f"https://{HOST}@evil.example/",
        f"https://evil.example/{HOST}/",
        f"{HOST}.evil.example",
        "[::1]",
        "",
        "a b.pkg.dev",
    ],
)
def test_netrc_never_writes_a_token_for_another_host(capsys, held_token, tmp_path, host):
    target = tmp_path / "netrc"
    code, out, err = run_main(capsys, "netrc", HOST, host, "--output", str(target))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "is not an Artifact Registry host" in err
    assert not target.exists()


@pytest.mark.parametrize(
    "token", ["ya29.a0_Ab-Cd.Ef_gh", "ya29.c.b0Aaek_x-y~z+/=", "0123456789_abcdef"]
)
def test_netrc_carries_any_token_google_issues(capsys, monkeypatch, token):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", token)
    register_secret(token, access_token=True)
    assert run_main(capsys, "netrc", HOST)[1] == ENTRY.replace(TOKEN, token)


@pytest.mark.parametrize(
    "token",
    ["ya29.a b", "ya29.a\tb", 'ya29."quoted"', "ya29.#comment", "ya29.caf\u00e9", "ya29.a\\b"],
)
def test_netrc_refuses_a_token_it_cannot_write(capsys, monkeypatch, tmp_path, token):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", token)
    register_secret(token, access_token=True)
    code, out, err = run_main(capsys, "netrc", HOST, "--output", str(tmp_path / "netrc"))
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert token not in err
    assert not (tmp_path / "netrc").exists()


def test_netrc_without_hosts_writes_the_configured_ones(capsys, held_token, monkeypatch, tmp_path):
    write_pip_conf(f"[global]\nextra-index-url = {INDEX}\n    https://pypi.org/simple/\n")
    (tmp_path / "uv.toml").write_text(
        '[[index]]\nname = "eu"\nurl = "https://europe-python.pkg.dev/p/r/simple/"\n'
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "netrc")
    assert code == 0
    assert out == ENTRY + ENTRY.replace(HOST, "europe-python.pkg.dev")


def test_netrc_without_hosts_or_configuration_says_what_to_do(capsys, held_token):
    code, out, err = run_main(capsys, "netrc")
    assert (code, out) == (2, "")
    assert "name the hosts, e.g. `netrc us-python.pkg.dev`" in err


def test_netrc_without_credentials_says_why_in_one_line(capsys, tmp_path):
    code, out, err = run_main(capsys, "netrc", HOST, "--output", str(tmp_path / "netrc"))
    assert (code, out) == (1, "")
    assert err.startswith("artifactregistry-gauth: no Google credentials found")
    assert err.count("\n") == 1
    assert not (tmp_path / "netrc").exists()


def test_netrc_output_creates_a_private_file(capsys, held_token, tmp_path):
    target = tmp_path / "out" / "netrc"
    target.parent.mkdir()
    code, out, err = run_main(capsys, "netrc", HOST, "--output", str(target))
    assert (code, out) == (0, "")
    assert err == f"artifactregistry-gauth: wrote {HOST} to {target}\n"
    assert target.read_text() == ENTRY
    assert_private(target)
    assert [p.name for p in target.parent.iterdir()] == ["netrc"]  # no temporary file left


OTHERS_BEFORE = (
    "# my machines\n"
    "machine example.com login me password pw1\n"
    "macdef init\n"
    f"machine {HOST} login not-an-entry password inside-a-macro\n"
    "\n"
)
OTHERS_AFTER = "machine other.example\n    login you\n    password secret2\n    account acct\n"


@pytest.mark.parametrize(
    "ours",
    [
        f"machine {HOST} login oauth2accesstoken password ya29.stale\n",
        f"machine {HOST}\n  login oauth2accesstoken\n  password ya29.stale\n",
        f"machine {HOST.upper()} password ya29.stale\n",
    ],
    ids=["one-line", "multi-line", "no-login"],
)
def test_netrc_output_puts_our_entry_first_and_removes_the_old_one(
    capsys, held_token, tmp_path, ours
):
    target = tmp_path / "netrc"
    # LF line ends on every OS: write_text's CR LF on Windows is refused after a macdef.
    target.write_bytes((OTHERS_BEFORE + ours + OTHERS_AFTER).encode())
    target.chmod(0o644)
    assert run_main(capsys, "netrc", HOST, "--output", str(target))[0] == 0
    assert target.read_text() == ENTRY + OTHERS_BEFORE + OTHERS_AFTER
    assert_private(target)


def test_a_netrc_that_a_reader_holds_open_for_a_moment_is_still_replaced(
    capsys, held_token, tmp_path
):
    # Windows will not replace a file while anything has it open (a reader, a virus scanner).
    target = tmp_path / "netrc"
    target.write_bytes(b"machine evil.test login bob password x\n")
    reader = open(target, "rb")  # closed by the timer, as a reader closes it
    threading.Timer(0.3, reader.close).start()
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(target))
    assert (code, err) == (0, f"artifactregistry-gauth: wrote {HOST} to {target}\n")
    assert target.read_bytes() == ENTRY.encode() + b"machine evil.test login bob password x\n"


def test_netrc_output_is_read_by_pythons_netrc_module(capsys, held_token, tmp_path):
    import netrc

    target = tmp_path / "netrc"
    target.write_bytes((OTHERS_BEFORE + OTHERS_AFTER).encode())  # LF, as above
    run_main(capsys, "netrc", HOST, "--output", str(target))
    parsed = netrc.netrc(str(target))
    login, account, password = parsed.authenticators(HOST)
    assert (login, account or "", password) == ("oauth2accesstoken", "", TOKEN)
    assert parsed.authenticators("other.example") == ("you", "acct", "secret2")


def test_netrc_output_refuses_an_entry_with_another_login(capsys, held_token, tmp_path):
    target = tmp_path / "netrc"
    before = f"machine {HOST} login _json_key_base64 password abc\n"
    target.write_text(before)
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(target))
    assert code == 1
    assert f"has an entry for {HOST} with another login: remove it" in err
    assert target.read_text() == before


@posix_only(SYMLINK)
def test_netrc_output_refuses_a_symlink(capsys, held_token, tmp_path):
    real = tmp_path / "real"
    real.write_text("machine a.example login u password p\n")
    link = tmp_path / "netrc"
    link.symlink_to(real)
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(link))
    assert code == 1
    assert "is a symbolic link: refusing to replace it" in err
    assert link.is_symlink() and real.read_text() == "machine a.example login u password p\n"


@pytest.mark.parametrize(
    "make",
    [
        posix_case(lambda p: os.mkfifo(p) or p, reason=FIFO, id="a fifo"),
        pytest.param(lambda p: p.mkdir() or p, id="a directory"),
        pytest.param(lambda p: os.devnull, id="the null device"),
    ],
)
def test_netrc_output_refuses_what_is_not_a_file(capsys, held_token, tmp_path, make):
    target = make(tmp_path / "not-a-file")
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(target))
    assert code == 1
    assert "not a regular file: refusing to rewrite it" in err


def test_netrc_output_refuses_a_huge_file(capsys, held_token, tmp_path):
    target = tmp_path / "netrc"
    target.write_bytes(b"#" * (gauth.MAX_NETRC_BYTES + 1))
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(target))
    assert code == 1
    assert "larger than 1024 KiB: refusing to rewrite it" in err


def test_netrc_output_into_a_missing_directory_says_so(capsys, held_token, tmp_path):
    code, _, err = run_main(capsys, "netrc", HOST, "--output", str(tmp_path / "no" / "netrc"))
    assert code == 1
    assert err.startswith("artifactregistry-gauth netrc: cannot write ")
    assert err.count("\n") == 1


# --- the Bazel credential helper ------------------------------------------------------------------


def helper(capsys, request, *argv):
    data = request if isinstance(request, bytes) else json.dumps(request).encode()
    return run_main(capsys, "credential-helper", *(argv or ("get",)), stdin=data)


def basic(token):
    return "Basic " + base64.b64encode(f"oauth2accesstoken:{token}".encode()).decode()


def test_credential_helper_answers_basic_auth_and_expires_15_minutes_early(
    capsys, sa_env, fake_google
):
    code, out, err = helper(capsys, {"uri": f"{INDEX}gauth-demo/"})
    assert (code, err) == (0, "")
    (token,) = fake_google.issued
    answer = json.loads(out)
    assert set(answer) == {"headers", "expires"}
    assert answer["headers"] == {"Authorization": [basic(token)]}
    expires = gauth._parse_rfc3339(answer["expires"])
    assert answer["expires"].endswith("Z")
    refresh_at = time_now() + fake_google.expires_in - gauth.MIN_TOKEN_LIFE
    assert refresh_at - 120 <= expires <= refresh_at + 1


def time_now():
    import time

    return time.time()


def test_credential_helper_omits_expires_when_the_expiry_is_unknown(capsys, held_token):
    code, out, _ = helper(capsys, {"uri": INDEX})
    assert code == 0
    assert json.loads(out) == {"headers": {"Authorization": [basic(TOKEN)]}}


def test_credential_helper_answers_again_from_the_cache(capsys, sa_env, fake_google):
    for _ in range(3):
        assert helper(capsys, {"uri": INDEX})[0] == 0
    assert len(fake_google.issued) == 1


@pytest.mark.parametrize(
    "uri",
    [
        "https://pypi.org/simple/",
        f"http://{HOST}/proj/repo/simple/",
        HOST,
        f"ftp://{HOST}/",
        f"https://{HOST}@evil.example/",
        f"https://{HOST}.evil.example/",
        "https://github.com/bazelbuild/rules_python/archive/1.0.tar.gz",
        "",
    ],
)
def test_credential_helper_answers_nothing_for_other_uris(capsys, held_token, uri):
    assert helper(capsys, {"uri": uri}) == (0, "{}\n", "")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"",
        b"not json",
        b"[]",
        b'"https://us-python.pkg.dev/"',
        b"{}",
        b'{"url": "https://us-python.pkg.dev/"}',
        b'{"uri": 5}',
        b'{"uri": null}',
        b"\xff\xfe{}",
        b"[" * 100_000,
        b'{"uri": "' + b"a" * (64 * 1024) + b'"}',
    ],
    ids=[
        "empty",
        "not-json",
        "array",
        "string",
        "no-uri",
        "url-not-uri",
        "uri-number",
        "uri-null",
        "not-utf8",
        "deep-nesting",
        "over-64k",
    ],
)
def test_credential_helper_refuses_a_bad_request_in_one_line(capsys, held_token, request_bytes):
    code, out, err = helper(capsys, request_bytes)
    assert (code, out) == (2, "")
    assert err.startswith("artifactregistry-gauth credential-helper: the request on stdin ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [["store"], ["erase"], ["get", "extra"]])
def test_credential_helper_refuses_other_commands(capsys, held_token, argv):
    code, out, err = run_main(capsys, "credential-helper", *argv, stdin=b'{"uri": "x"}')
    assert (code, out) == (2, "")
    assert "unknown command" in err
    assert err.count("\n") == 1


def test_credential_helper_without_credentials_fails_in_one_line(capsys):
    code, out, err = helper(capsys, {"uri": INDEX})
    assert (code, out) == (1, "")
    assert err.startswith("artifactregistry-gauth: no Google credentials found")
    assert err.count("\n") == 1


def test_credential_helper_runs_as_bazel_runs_it(held_token, tmp_path):
    # Bazel runs the helper with `get` as its only argument: a wrapper script does that.
    wrapper = write_shell_program(
        tmp_path / "artifactregistry-gauth-helper",
        posix=f'exec "{sys.executable}" -m artifactregistry_gauth credential-helper "$@"\n',
        windows=f'"{sys.executable}" -m artifactregistry_gauth credential-helper %*\n',
    )
    result = subprocess.run(
        [str(wrapper), "get"],
        input=json.dumps({"uri": INDEX}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["headers"]["Authorization"] == [basic(TOKEN)]


@pytest.mark.clients
def test_credential_helper_answers_in_the_shape_uv_does(capsys, held_token, tmp_path):
    from uv import find_uv_bin

    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "UV_CREDENTIALS_DIR": str(tmp_path / "uv-credentials"),
        "UV_CONFIG_FILE": os.devnull,
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_NO_PROGRESS": "1",
        "UV_PREVIEW_FEATURES": "auth-helper",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    uv = find_uv_bin()
    login = [uv, "auth", "login", INDEX, "--username", "oauth2accesstoken", "--password", TOKEN]
    stored = subprocess.run(login, env=env, capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stderr
    request = json.dumps({"uri": f"{INDEX}gauth-demo/"})
    theirs = subprocess.run(
        [uv, "auth", "helper", "--protocol", "bazel", "get"],
        input=request,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert theirs.returncode == 0, theirs.stderr
    uvs = json.loads(theirs.stdout)
    ours = json.loads(helper(capsys, {"uri": f"{INDEX}gauth-demo/"})[1])
    # uv's answer has no `expires` (it is optional); every key uv sends, we send alike.
    assert set(uvs) <= set(ours) <= {"headers", "expires"}
    assert ours["headers"] == uvs["headers"] == {"Authorization": [basic(TOKEN)]}


# --- properties, for any input -------------------------------------------------------------------

PROPERTY = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SURROUNDINGS = st.text(alphabet="htps:/@ ,;\"'[]=\nx.pkgdev", max_size=60)
PASSWORDS = st.text(alphabet="abcXYZ0189@:!$&*+=-._~%", min_size=8, max_size=30)


@PROPERTY
@given(before=SURROUNDINGS, password=PASSWORDS, after=SURROUNDINGS)
def test_any_password_in_a_configured_url_is_never_shown(monkeypatch, before, password, after):
    url = f"https://user:{password}@{HOST}/p/r/simple/"
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"{before} {url} {after}")
    report = gauth._index_url_report()
    assert f"https://user:***@{HOST}/p/r/simple/" in shown_urls(report)
    assert password not in json.dumps(report)


@PROPERTY
@given(text=st.text(max_size=400))
def test_url_candidates_never_overlap(text):
    assert sum(len(url) for url in gauth._urls_in(text)) <= len(text)


# --- every command under a stdout that cannot encode what we print ------------------------------

ASCII_STDOUTS = [
    {"PYTHONIOENCODING": "ascii"},
    {"PYTHONIOENCODING": "cp1252"},  # Windows with the output redirected
    {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
]
EVERY_COMMAND = [
    ["doctor"],
    ["doctor", "--json"],
    ["token"],
    ["get", INDEX, "oauth2accesstoken"],
    ["print-settings", "--location", "us", "--project", "proj", "--repository", "repo"],
    ["netrc", HOST],
    ["credential-helper", "get"],
    ["--help"],
    ["doctor", "--help"],
]


@pytest.mark.parametrize("stdout_env", ASCII_STDOUTS, ids=["ascii", "cp1252", "C-locale"])
@pytest.mark.parametrize("argv", EVERY_COMMAND, ids=" ".join)
def test_every_command_answers_on_an_ascii_stdout_without_a_traceback(tmp_path, argv, stdout_env):
    cache = tmp_path / "caché-✔"  # a path doctor prints, that neither encoding can hold
    env = {**os.environ, "ARTIFACTREGISTRY_GAUTH_CACHE_DIR": str(cache), **stdout_env}
    env["GOOGLE_OAUTH_ACCESS_TOKEN"] = "ya29.ascii-stdout"
    result = subprocess.run(
        [sys.executable, "-m", "artifactregistry_gauth", *argv],
        input=json.dumps({"uri": INDEX}).encode(),
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    result.stdout.decode("ascii" if "ascii" in stdout_env.values() else "cp1252")


def test_doctor_marks_fall_back_to_ascii_when_stdout_cannot_encode_them(monkeypatch, capsys):
    import io

    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.ascii-marks")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert gauth.main(["doctor"]) == 0
    sys.stdout.flush()
    text = raw.getvalue().decode("ascii")
    assert "  + GOOGLE_OAUTH_ACCESS_TOKEN: answered: " in text
    assert "\\u2714" not in text  # a mark is a mark, not an escape


# --- the command line: options where the usage puts them ----------------------------------------

CREDS = {"username": "oauth2accesstoken", "password": TOKEN}


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "--mode", "creds", "--output", "json", INDEX],
        ["get", "--mode=creds", INDEX, "--output=json"],
        ["--mode", "creds", "get", "--output", "json", INDEX],
        ["get", INDEX, "--mode", "creds", "--output", "json"],
    ],
    ids=" ".join,
)
def test_get_takes_its_options_before_or_after_the_command_word(capsys, held_token, argv):
    code, out, err = run_main(capsys, *argv)
    assert (code, err) == (0, "")
    assert json.loads(out) == CREDS


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "-v"],
        ["-v", "token"],
        ["token", "--verbose", "--url", INDEX],
        ["doctor", "-v", "--json"],
        ["print-settings", "-v", "--location", "us", "--project", "p", "--repository", "r"],
        ["netrc", "-v", HOST],
        ["-v", "get", "--mode", "creds", "--output", "json", INDEX],
        ["get", "-v", INDEX, "oauth2accesstoken"],
    ],
    ids=" ".join,
)
def test_verbose_is_taken_before_or_after_the_command_word(held_token, argv):
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr
    assert "unrecognized arguments" not in result.stderr


def test_token_verbose_tells_the_story_on_stderr(held_token):
    result = run_cli("token", "-v")
    assert (result.returncode, result.stdout) == (0, TOKEN + "\n")
    assert "artifactregistry-gauth: " in result.stderr


def test_a_debug_line_carries_the_program_name_once(tmp_path):
    code = (
        "import artifactregistry_gauth as m\n"
        f"print(m.GooglePyPIAuth().get_password({INDEX!r}, 'oauth2accesstoken'))\n"
    )
    env = {**os.environ, "ARTIFACTREGISTRY_GAUTH_DEBUG": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.stdout == "None\n"
    assert "no Google credentials found" in result.stderr
    assert "artifactregistry-gauth: artifactregistry-gauth:" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("artifactregistry-gauth: ") for line in lines)


def test_credential_helper_without_an_operation_says_bazel_sends_get(capsys, held_token):
    code, out, err = run_main(capsys, "credential-helper")
    assert (code, out) == (2, "")
    assert "nothing" not in err
    assert "needs an operation" in err and "`get`" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", sorted(gauth.SUBCOMMANDS))
def test_every_subcommand_help_describes_it_and_its_exit_codes(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    usage, _, rest = result.stdout.partition("\n\n")
    assert usage.startswith("usage: artifactregistry-gauth ") and f" {command}" in usage
    description = rest.split("\n\n", 1)[0]
    assert description and not description.startswith(("positional", "options"))
    assert "exit status:" in result.stdout
    assert "  0 " in result.stdout


def test_token_json_prints_the_token_and_its_expiry(capsys, sa_env, fake_google):
    code, out, err = run_main(capsys, "token", "--json")
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert sorted(answer) == ["expiry", "token"]
    assert fake_google.is_live(answer["token"])
    import datetime

    expiry = datetime.datetime.strptime(answer["expiry"], "%Y-%m-%dT%H:%M:%SZ")
    left = expiry.replace(tzinfo=datetime.timezone.utc).timestamp() - time_now()
    assert 3000 < left <= 3600


def test_token_json_gives_a_null_expiry_when_it_is_unknown(capsys, held_token):
    code, out, err = run_main(capsys, "token", "--json")
    assert (code, json.loads(out), err) == (0, {"token": TOKEN, "expiry": None}, "")


# --- doctor: advice that fits what is there -----------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [("uv.toml", 'keyring-provider = "subprocess"\n\n'), ("env", "")],
    ids=["uv.toml", "UV_KEYRING_PROVIDER"],
)
def test_doctor_never_advises_the_uv_keyring_provider_already_set(monkeypatch, where):
    kind, head = where
    if kind == "env":
        monkeypatch.setenv("UV_KEYRING_PROVIDER", "subprocess")
    write_file(
        ".config/uv/uv.toml",
        head + f'[[index]]\nname = "gar"\nurl = "{INDEX}"\nauthenticate = "always"\n',
    )
    (entry,) = gauth._index_url_report()
    assert entry["ok"] and "UV_KEYRING_PROVIDER" not in entry["verdict"], entry


def test_doctor_advises_the_uv_keyring_provider_when_it_is_not_set():
    write_file(".config/uv/uv.toml", f'[[index]]\nname = "gar"\nurl = "{INDEX}"\n')
    (entry,) = gauth._index_url_report()
    assert "set UV_KEYRING_PROVIDER=subprocess" in entry["verdict"]


def test_doctor_names_the_pip_it_is_talking_to(monkeypatch):
    from importlib import metadata

    monkeypatch.setenv("PIP_INDEX_URL", INDEX)
    (entry,) = gauth._index_url_report()
    version = metadata.version("pip")
    assert f"pip {version}" in entry["verdict"]
    assert "before pip 26.2" not in entry["verdict"]


@pytest.mark.parametrize(
    ("variable", "pip_conf"),
    [("PIP_EXTRA_INDEX_URL", None), (None, f"[global]\nextra-index-url = {INDEX}\n")],
    ids=["variable", "pip.conf"],
)
def test_doctor_warns_that_an_extra_index_invites_dependency_confusion(
    monkeypatch, variable, pip_conf
):
    if variable:
        monkeypatch.setenv(variable, INDEX)
    else:
        write_pip_conf(pip_conf)
    (warning,) = warnings_about("dependency confusion")
    assert "virtual repository" in warning and "explicit = true" in warning


def test_doctor_gives_no_dependency_confusion_warning_for_an_index_url(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", INDEX)
    assert warnings_about("dependency confusion") == []


def test_doctor_counts_one_cached_token_in_the_singular(capsys, sa_env, fake_google):
    assert run_main(capsys, "token")[0] == 0
    _, out, _ = run_main(capsys, "doctor")
    assert "(1 token)" in out and "(1 tokens)" not in out


def test_doctor_says_a_token_in_the_environment_was_given_not_fetched(capsys, held_token):
    _, out, _ = run_main(capsys, "doctor")
    (line,) = [line for line in out.splitlines() if "GOOGLE_OAUTH_ACCESS_TOKEN: answered" in line]
    assert "fetched now" not in line and "from the cache" not in line


# --- doctor: the official plugin beside us ------------------------------------------------------

OFFICIAL = "keyrings.gauth.GooglePythonAuth (priority: 9)"
OURS = "artifactregistry_gauth.GooglePyPIAuth (priority: 9)"
CHAINER = "keyring.backends.chainer.ChainerBackend (priority: 10)"


@pytest.mark.parametrize(
    ("listed", "asked"),
    [
        ([CHAINER, OFFICIAL, OURS], "either"),  # equal priorities: a set's order, per process
        ([OURS, OFFICIAL], "either"),
        ([OURS.replace("9", "8"), OFFICIAL], "before"),
        ([OFFICIAL.replace("9", "8"), OURS], "after"),
        ([OFFICIAL], "before"),  # chosen alone (keyringrc.cfg): ours is never asked
    ],
)
def test_doctor_says_whether_keyring_asks_the_official_plugin_before_us(listed, asked):
    python = "/venv/bin/python"
    (rival,) = gauth._rivals(listed, python)
    assert rival == {
        "backend": "keyrings.gauth.GooglePythonAuth",
        "asked": asked,
        "fix": f"{python} -m pip uninstall keyrings.google-artifactregistry-auth",
    }


def test_doctor_sees_no_rival_among_other_backends():
    listed = [OURS, "keyring.backends.SecretService.Keyring (priority: 5)", CHAINER]
    assert gauth._rivals(listed, "/venv/bin/python") == []


PIPX_KEYRING_PYTHON = (  # where pipx puts keyring's environment on this OS
    r"C:\Users\u\pipx\venvs\keyring\Scripts\python.exe"
    if WINDOWS
    else "/home/u/.local/pipx/venvs/keyring/bin/python"
)


def test_doctor_tells_a_pipx_keyring_to_uninject_the_official_plugin():
    (rival,) = gauth._rivals([OFFICIAL, OURS], PIPX_KEYRING_PYTHON)
    assert rival["fix"] == "pipx uninject keyring keyrings.google-artifactregistry-auth"
