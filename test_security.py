"""Security: where a token may go, and a bounded one-line answer to every hostile input.

First, a token goes only to Artifact Registry, only over TLS or on this machine, and only
as one word (each table row is a hostile input with the outcome it must get; the agreement
property between our reading of a URL and urllib.parse, urllib3 (requests) and WHATWG (uv,
browsers) lives in test_fuzz.py). Then local inputs and hostile servers (issue 10).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode

import pytest

import artifactregistry_gauth as gauth
import fakes
from fakes import FIFO, MODE_BITS, OWNER, SYMLINK, WINDOWS, cases, posix_only, register_secret
from fakes.federation import ID_TOKEN_TYPE, STS_URL, SUBJECT, WORKLOAD, Executable, external
from fakes.network import Listener, reply
from fakes.programs import write_program
from fakes.testing import one_line, run_cli, sa_json, write

KIB = 1024


@pytest.fixture
def sleeps(monkeypatch):
    """Every wait the module asks for, recorded instead of slept."""
    waits = []

    def sleep(seconds):
        if not 0 <= seconds < 1e6:  # time.sleep's own ValueError or OverflowError
            raise ValueError(f"sleep length {seconds} is invalid")
        waits.append(seconds)

    monkeypatch.setattr(gauth.time, "sleep", sleep)
    return waits


# --- which host a keyring service names -----------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [
        # requests/urllib3 and WHATWG end the host at a backslash; urllib.parse does not
        "https://evil.example\\@us-python.pkg.dev/p/r/",
        "https://evil.example\\.pkg.dev/",
        "https://us-python.pkg.dev\\@evil.example/",
        "evil.example\\@us-python.pkg.dev",
        # percent-encoding in the authority is decoded by some readers only
        "https://us-python.pkg.dev%2eevil.example/",
        "https://evil.example%2f.pkg.dev/",
        "https://evil.example%40us-python.pkg.dev/",
        "https://oauth2accesstoken%3Ax@us-python.pkg.dev/",
        # whitespace and control characters are dropped by WHATWG, kept by others
        "https://evil.exa\tmple.pkg.dev/",
        "https://evil.example\n.pkg.dev/",
        "https://us-python.pkg.dev\r\nHost: evil.example/",
        "https://evil.example\x00.pkg.dev/",
        "https://us-python.pkg.dev /",
        " https://us-python.pkg.dev/",
        "https://us-python.pkg.dev/p/r/\x7f",
        # a password in the URL, or more than one @
        "https://user:secret@us-python.pkg.dev/p/r/",
        "https://oauth2accesstoken:@us-python.pkg.dev/p/r/",
        "https://a@b@us-python.pkg.dev/p/r/",
        "https://us-python.pkg.dev:443@evil.example/",
        # Unicode that IDNA maps onto ASCII (ideographic and fullwidth dots, fullwidth letters)
        "https://evil\u3002pkg.dev/",
        "https://evil\uff0epkg.dev/",
        "https://\uff55s-python.pkg.dev/",
        "https://us-python.pkg.dev\u200b/",
        # not a host name at all
        "https://[::1]/p/r/",
        "https://.pkg.dev/",
        "https://x..pkg.dev/",
        "https://-x.pkg.dev/",
        "https://x_y.pkg.dev/",
        "https://us-python.pkg.dev:44x3/",
        "https://us-python.pkg.dev:-1/",
        # the host is elsewhere
        "https://evil.example#@us-python.pkg.dev/",
        "https://evil.example?@us-python.pkg.dev/",
        "https://us-python.pkg.dev@evil.example/",
        "https://pkg.dev/",
        "http://us-python.pkg.dev/p/r/simple/",
        "ftp://us-python.pkg.dev/",
        "//us-python.pkg.dev/",
    ],
)
def test_an_ambiguous_or_foreign_service_gets_no_answer(service):
    assert gauth.service_host(service) is None or not gauth.is_registry_service(service)
    assert not gauth.answers_for(service, None)
    assert not gauth.answers_for(service, "oauth2accesstoken")


@pytest.mark.parametrize(
    ("service", "host"),
    [
        ("https://us-python.pkg.dev/p/r/simple/", "us-python.pkg.dev"),
        ("https://oauth2accesstoken@us-python.pkg.dev/p/r/", "us-python.pkg.dev"),
        ("us-python.pkg.dev", "us-python.pkg.dev"),
        ("us-python.pkg.dev:443", "us-python.pkg.dev"),
        ("https://us-python.pkg.dev:/p/", "us-python.pkg.dev"),
        ("HTTPS://EUROPE-WEST1-PYTHON.PKG.DEV./p/", "europe-west1-python.pkg.dev"),
        # only the authority decides: every reader has ended it at the first "/"
        ("https://us-python.pkg.dev/p/r/a%2Bb/x\\@evil.example", "us-python.pkg.dev"),
        ("https://us-python.pkg.dev/p/r/?next=https://evil.example\\@x", "us-python.pkg.dev"),
    ],
)
def test_a_plain_artifact_registry_service_names_its_host(service, host):
    assert gauth.service_host(service) == host
    assert gauth.answers_for(service, None)


def test_extra_hosts_obey_the_same_rules(monkeypatch):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", "*.corp.example")
    assert gauth.answers_for("https://pypi.corp.example/simple/", None)
    assert not gauth.answers_for("https://evil.example\\@pypi.corp.example/simple/", None)
    assert not gauth.answers_for("https://u:p@pypi.corp.example/simple/", None)


def test_the_backend_gives_a_backslash_url_no_token(sa_env, fake_google):
    backend = gauth.GooglePyPIAuth()
    assert backend.get_password("https://evil.example\\@us-python.pkg.dev/p/r/", None) is None
    assert backend.get_credential("https://evil.example\\.pkg.dev/", None) is None
    assert fake_google.requests == []  # decided before any I/O


# --- names that tools build from a label someone chose ----------------------------------------
#
# pdm asks keyring for `pdm-pypi-NAME` (a source) and `pdm-repository-NAME` (a publish target),
# poetry for `poetry-repository-NAME`, after the URL and the host; both then send the answer to
# the URL configured under NAME, wherever it points (pdm/_types.py populate_keyring_auth,
# poetry/utils/password_manager.py get_http_auth). hatch, twine and uv ask with the URL and
# its host only. A cloned project's pyproject.toml chooses NAME, so no such name is answered.

TOOL_BUILT_NAMES = {
    "pdm source": "pdm-pypi-{}",
    "pdm repository": "pdm-repository-{}",
    "poetry repository": "poetry-repository-{}",
}
HOST_LOOKING_LABELS = [
    "us-python.pkg.dev",
    "mirror.pkg.dev",
    "x.pkg.dev",
    "europe-west1-python.pkg.dev",
    "x@us-python.pkg.dev",
    "evil.example@us-python.pkg.dev",
    "us-python.pkg.dev:443",
    "us-python.pkg.dev/proj/repo/simple/",
    "us-python.pkg.dev.",
    ".us-python.pkg.dev",
    "-us-python.pkg.dev",
    "https://us-python.pkg.dev/",
    "://us-python.pkg.dev",
    "//us-python.pkg.dev",
    "@us-python.pkg.dev",
    "pypi.corp.example",
]


@pytest.mark.parametrize("label", HOST_LOOKING_LABELS)
@pytest.mark.parametrize("tool", TOOL_BUILT_NAMES)
def test_a_name_a_tool_builds_from_a_label_gets_no_answer(monkeypatch, tool, label):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", "*.corp.example,pypi.corp.example")
    name = TOOL_BUILT_NAMES[tool].format(label)
    for username in (None, "", "oauth2accesstoken"):
        assert not gauth.answers_for(name, username), name


def test_the_backend_gives_pdms_name_for_a_host_looking_source_no_token(sa_env, fake_google):
    backend = gauth.GooglePyPIAuth()
    assert backend.get_credential("pdm-pypi-mirror.pkg.dev", "") is None
    assert backend.get_password("pdm-pypi-mirror.pkg.dev", "__token__") is None
    assert backend.get_password("poetry-repository-us-python.pkg.dev", "oauth2accesstoken") is None
    assert backend.get_credential("evil.example@us-python.pkg.dev", None) is None
    assert fake_google.requests == []  # decided before any I/O


def test_our_keyring_get_answers_pdms_name_for_a_host_looking_source_as_keyring_does(
    monkeypatch,
):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.not-for-pdm-sources")
    command = [sys.executable, "-m", "artifactregistry_gauth", "--mode=creds"]
    result = subprocess.run(
        [*command, "get", "pdm-pypi-mirror.pkg.dev", ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # keyring's own `get` exits 1, silently, when no backend has a credential.
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


@pytest.mark.parametrize(
    "name",
    [
        "mirror.pkg.dev",
        "pkg.dev",
        "python.pkg.dev",
        "us.pkg.dev",
        "x.us-python.pkg.dev",
        "us-python.pkg.dev.evil.example",
        # a location that is not one: no number, a zero, a leading zero, an unknown continent
        "us-central-python.pkg.dev",
        "us-central0-python.pkg.dev",
        "us-central01-python.pkg.dev",
        "us-central100-python.pkg.dev",
        "mars-central1-python.pkg.dev",
        "us-up1-python.pkg.dev",
        "eu-python.pkg.dev",
        "global-python.pkg.dev",
        "us-central1-a-python.pkg.dev",
        "us1-python.pkg.dev",
        # a format that is not one
        "us-pip.pkg.dev",
        "us-python1.pkg.dev",
        "us--python.pkg.dev",
        "-python.pkg.dev",
        # more than the host: userinfo, a path, a query, a fragment, a bad port
        "oauth2accesstoken@us-python.pkg.dev",
        "evil.example@us-python.pkg.dev",
        "@us-python.pkg.dev",
        "us-python.pkg.dev/proj/repo/simple/",
        "us-python.pkg.dev/",
        "us-python.pkg.dev?x",
        "us-python.pkg.dev#x",
        "us-python.pkg.dev:x",
        "us-python.pkg.dev:443:443",
        "[::1]",
        "pdm-pypi-mirror.pkg.dev",
    ],
)
def test_a_bare_name_that_is_not_exactly_a_registry_host_gets_no_answer(name):
    assert not gauth.answers_for(name, None)
    assert not gauth.answers_for(name, "oauth2accesstoken")


@pytest.mark.parametrize(
    "name",
    [
        "us-python.pkg.dev",  # the multi-regions
        "europe-docker.pkg.dev",
        "asia-npm.pkg.dev",
        "us-central1-python.pkg.dev",  # regions: continent, direction, number
        "us-east5-go.pkg.dev",
        "europe-west12-maven.pkg.dev",
        "europe-southwest1-python.pkg.dev",
        "northamerica-northeast1-python.pkg.dev",
        "southamerica-east1-yum.pkg.dev",
        "me-central2-python.pkg.dev",
        "africa-south1-apt.pkg.dev",
        "australia-southeast1-kfp.pkg.dev",
        "asia-northeast3-generic.pkg.dev",
        "us-pypi.pkg.dev",  # the Python format's host in Artifact Registry's alpha
        "us-python.pkg.dev:443",  # uv adds an explicit port
        "us-python.pkg.dev:",  # the netloc of https://us-python.pkg.dev:/
        "US-PYTHON.PKG.DEV",
        "us-python.pkg.dev.",
    ],
)
def test_a_bare_registry_host_is_answered(name):
    assert gauth.answers_for(name, None)
    assert gauth.answers_for(name, "oauth2accesstoken")


@pytest.mark.parametrize(
    ("service", "answers"),
    [
        ("https://mirror.pkg.dev/simple/", True),  # a URL's host is where the request goes
        ("https://x.pkg.dev/", True),
        ("https://oauth2accesstoken@us-python.pkg.dev/p/r/", True),
        ("https://pypi.corp.example/simple/", True),
        ("https://x.corp.example/simple/", True),
        ("pypi.corp.example", True),  # an entry, exactly
        ("pypi.corp.example:8443", True),
        ("x.corp.example", False),  # a wildcard is for URLs: pdm-pypi-x.corp.example matches it
        ("pdm-pypi-x.corp.example", False),
        ("u@pypi.corp.example", False),
        ("pypi.corp.example/simple/", False),
    ],
)
def test_urls_name_where_the_token_goes_bare_names_must_be_exact(monkeypatch, service, answers):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", "*.corp.example, pypi.corp.example")
    assert gauth.answers_for(service, None) is answers


# --- where credentials may be sent in plain http ------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/token", True),
        ("http://127.8.9.10/token", True),
        ("http://[::1]:8080/token", True),
        ("http://localhost:8080/token", True),
        ("http://LOCALHOST/token", True),
        ("https://oauth2.googleapis.com/token", True),
        ("http://127.evil.example/token", False),
        ("http://127.0.0.1.nip.io/token", False),
        ("http://localhost.evil.example/token", False),
        ("http://127.1/token", False),  # inet_aton shorthand: not an IP literal to us
        ("http://2130706433/token", False),
        ("http://0x7f000001/token", False),
        ("http://[::ffff:127.0.0.1]/token", True),  # IPv4-mapped 127.0.0.1, on every Python
        ("http://[::ffff:10.0.0.1]/token", False),
        ("http://10.0.0.1/token", False),
        ("http://oauth2.googleapis.com/token", False),
        ("ftp://127.0.0.1/token", False),
        ("https:///token", False),
        ("https://[x/token", False),  # urlsplit: "Invalid IPv6 URL", a ValueError
        ("https://[::1/token", False),
        ("http://[::1/token", False),
    ],
)
def test_plain_http_is_allowed_only_to_a_loopback_address(url, allowed):
    if allowed:
        gauth._check_endpoint(url, "the token endpoint")
    else:
        with pytest.raises(gauth.CredentialError, match="refusing to send credentials"):
            gauth._check_endpoint(url, "the token endpoint")


UNCLOSED = (
    "https://[x/v1/projects/-/serviceAccounts/a@p.iam.gserviceaccount.com:generateAccessToken"
)


@pytest.mark.parametrize("field", ["token_uri", "token_url"])
def test_an_endpoint_with_an_unclosed_ipv6_bracket_gets_one_clear_line(
    monkeypatch, tmp_path, sa_file, field
):
    if field == "token_uri":
        path = sa_file(token_uri=UNCLOSED)
    else:
        source = {"file": str(written(tmp_path / "subject", b"subject"))}
        path = written(
            tmp_path / "creds.json", json.dumps(external(source, **{field: UNCLOSED})).encode()
        )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match="refusing to send credentials") as caught:
        gauth.get_token()
    assert "https://[x/v1/projects/" in one_line(caught)


def test_a_name_that_starts_with_127_gets_no_assertion(monkeypatch, sa_file):
    path = sa_file(token_uri="http://127.evil.example/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match="refusing to send credentials"):
        gauth.get_token()


@pytest.fixture
def recording_proxy():
    """A proxy that counts connections and answers none: any use of it is a leak."""
    with Listener(hold=False) as proxy:
        yield proxy


def test_a_loopback_token_endpoint_is_never_reached_through_a_proxy(
    monkeypatch, sa_env, fake_google, recording_proxy
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, recording_proxy.url)
    assert fake_google.is_live(gauth.get_token())
    assert recording_proxy.connections == 0


# --- the token itself must be one word --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "ya29.a b",
        "ya29.a\nmachine evil.example login x password y",
        "ya29.a\r\nX-Injected: 1",
        "ya29.a\tb",
        "ya29.\x00",
        "ya29.caf\u00e9",
        "ya29.\u2028",
    ],
)
def test_a_token_with_whitespace_or_control_characters_is_refused(fake_google, sa_env, value):
    fake_google.script((200, {"access_token": value, "expires_in": 3600}))
    with pytest.raises(gauth.CredentialError, match="not one word of printable ASCII") as caught:
        gauth.get_token()
    assert value not in str(caught.value)


def test_a_handed_over_token_with_a_newline_inside_is_refused(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.one\nya29.two")
    with pytest.raises(gauth.CredentialError, match="GOOGLE_OAUTH_ACCESS_TOKEN.*printable"):
        gauth.get_token()


def test_a_cached_token_with_a_newline_is_ignored_and_replaced(sa_env, fake_google):
    first = gauth.lookup()
    cache = gauth._CACHE
    identity = next(iter(cache._entries))
    planted = gauth.Token("ya29.x\nmachine evil.example", first.expiry, "planted")
    cache._write(identity, planted)
    gauth._forget_tokens()
    token = gauth.get_token()
    assert fake_google.is_live(token)
    assert token not in (first.value, planted.value)


# --- row 7: Retry-After is validated and clamped ------------------------------------------------

BACKOFF = "backoff"  # the header is ignored: our own jittered 0.5 s backoff
GAVE_UP = "gave up"  # longer than the budget: the HTTP error, at once

RETRY_AFTER = [
    ("1", 1.0),
    (" 2 ", 2.0),
    ("0", BACKOFF),
    ("nan", BACKOFF),
    ("NaN", BACKOFF),
    ("inf", BACKOFF),
    ("-inf", BACKOFF),
    ("1e999", BACKOFF),
    ("-5", BACKOFF),
    ("1.5", BACKOFF),
    ("garbage", BACKOFF),
    ("", BACKOFF),
    ("\u0663", BACKOFF),  # an Arabic-Indic three: a digit to str.isdigit, not to HTTP
    ("Wed, 21 Oct 2037 07:28:00 GMT", BACKOFF),
    ("99999999999", GAVE_UP),
    ("9" * 5000, GAVE_UP),  # int() refuses so many digits on Python 3.11+
]


@pytest.mark.parametrize(("header", "outcome"), RETRY_AFTER)
def test_retry_after_is_honoured_only_when_sane(sa_env, fake_google, sleeps, header, outcome):
    fake_google.script((503, {"error": "unavailable"}, {"Retry-After": header}))
    if outcome == GAVE_UP:
        with pytest.raises(gauth.CredentialError) as exc:
            gauth.get_token()
        assert "answered HTTP 503" in one_line(exc)
        assert sleeps == []
        return
    assert fake_google.is_live(gauth.get_token())
    (wait,) = sleeps
    if outcome == BACKOFF:
        assert 0.45 <= wait <= 0.55
    else:
        assert wait == outcome


@pytest.mark.parametrize("header", ["nan", "inf", "-1", "99999999999"])
def test_doctor_survives_any_retry_after(sa_env, fake_google, sleeps, header):
    fake_google.script(*[(503, {"error": "unavailable"}, {"Retry-After": header})] * 3)
    report = gauth.diagnose()
    assert not report["token"]["ok"]
    assert "HTTP 503" in report["token"]["error"]


# --- row 8: local files are regular, bounded, decoded and parsed by one loader ------------------


def written(path, data):
    path.write_bytes(data)
    return path


def make_fifo(path):
    os.mkfifo(path)
    return path


def make_symlink_to_regular(path):
    target = path.with_name(path.name + ".target")
    target.write_bytes(b"content")
    path.symlink_to(target)
    return path


LOCAL_FILES = [
    # (name, how to make it, expected bytes or the OSError's strerror)
    ("regular", lambda p: written(p, b"content"), b"content"),
    ("symlink to a regular file", make_symlink_to_regular, b"content"),
    ("empty", lambda p: written(p, b""), b""),
    # Bytes as they are: Windows' text mode would turn CR LF into LF and end at Ctrl-Z.
    ("CR LF and Ctrl-Z", lambda p: written(p, b"a\r\nb\x1ac\n"), b"a\r\nb\x1ac\n"),
    ("exactly the limit", lambda p: written(p, b"x" * 4 * KIB), b"x" * 4 * KIB),
    ("one byte too many", lambda p: written(p, b"x" * (4 * KIB + 1)), "larger than 4 KiB"),
    ("FIFO", make_fifo, "not a regular file"),
    ("a device", lambda p: "NUL" if WINDOWS else "/dev/zero", "not a regular file"),
    ("directory", lambda p: p.mkdir() or p, "not a regular file"),
    ("missing", lambda p: p, "No such file or directory"),
    ("dangling symlink", lambda p: p.symlink_to(p.with_name("gone")) or p, "No such file"),
]


@pytest.mark.parametrize(
    ("make", "outcome"),
    cases(
        LOCAL_FILES,
        {"symlink to a regular file": SYMLINK, "FIFO": FIFO, "dangling symlink": SYMLINK},
    ),
)
def test_read_local_file_reads_only_bounded_regular_files(tmp_path, make, outcome):
    path = make(tmp_path / "input")
    if isinstance(outcome, bytes):
        assert gauth.read_local_file(str(path), 4 * KIB) == outcome
        return
    with pytest.raises(OSError) as exc:
        gauth.read_local_file(str(path), 4 * KIB)
    assert outcome in exc.value.strerror


def test_a_directory_that_windows_refuses_to_open_is_not_a_regular_file(monkeypatch, tmp_path):
    # Windows' open() of a directory fails with EACCES (the rows above run it for real there).
    opened = os.open

    def open_as_windows(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return opened(path, flags, *args)

    monkeypatch.setattr(os, "open", open_as_windows)
    (tmp_path / "creds.json").mkdir()
    with pytest.raises(OSError) as exc:
        gauth.read_local_file(str(tmp_path / "creds.json"))
    assert exc.value.strerror == "not a regular file"


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (b"plain", "plain"),
        (b"\xef\xbb\xbfwith a BOM", "with a BOM"),
        ("caf\u00e9".encode(), "caf\u00e9"),
        (b"\xff\xfe latin-1 or UTF-16", "not UTF-8 text"),
        (b"caf\xe9", "not UTF-8 text"),
    ],
)
def test_read_local_text_decodes_utf8_or_says_it_is_not(tmp_path, data, outcome):
    path = tmp_path / "text"
    path.write_bytes(data)
    if outcome == "not UTF-8 text":
        with pytest.raises(OSError, match=outcome):
            gauth.read_local_text(str(path))
    else:
        assert gauth.read_local_text(str(path)) == outcome


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000

HOSTILE_FILES = [
    # (name, how to make it at a path, words the one-line error must hold)
    ("FIFO", make_fifo, "not a regular file"),
    ("a device", lambda p: "NUL" if WINDOWS else "/dev/zero", "not a regular file"),
    ("directory", lambda p: p.mkdir() or p, "not a regular file"),
    ("2 MiB", lambda p: written(p, b" " * (2 << 20) + b"{}"), "larger than 1024 KiB"),
    ("not UTF-8", lambda p: written(p, b'{"type": "caf\xe9"}'), "not UTF-8"),
    ("deeply nested", lambda p: written(p, DEEP_JSON), "nested too deeply"),
    ("missing", lambda p: p, "not found"),
]


@pytest.mark.parametrize(("make", "words"), cases(HOSTILE_FILES, {"FIFO": FIFO}))
def test_a_hostile_credentials_file_gets_one_clear_line(monkeypatch, tmp_path, make, words):
    path = str(make(tmp_path / "creds.json"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    message = one_line(exc)
    assert path in message
    assert words in message


SUBJECT_FILES = [
    ("FIFO", make_fifo, "not a regular file"),
    ("a device", lambda p: "NUL" if WINDOWS else "/dev/zero", "not a regular file"),
    ("directory", lambda p: p.mkdir() or p, "not a regular file"),
    ("2 MiB", lambda p: written(p, b"x" * (2 << 20)), "larger than 1024 KiB"),
    ("not UTF-8", lambda p: written(p, b"caf\xe9"), "not UTF-8"),
    ("missing", lambda p: p, "was not found"),
]


@pytest.mark.parametrize(("make", "words"), cases(SUBJECT_FILES, {"FIFO": FIFO}))
def test_a_hostile_subject_token_file_gets_one_clear_line(monkeypatch, tmp_path, make, words):
    token_file = str(make(tmp_path / "subject-token"))
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(external({"file": token_file})))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    message = one_line(exc)
    assert token_file in message
    assert words in message


@pytest.fixture
def executable(bin_dir, monkeypatch):
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    return Executable(bin_dir)


def fresh_response(token=SUBJECT):
    return {
        "version": 1,
        "success": True,
        "token_type": ID_TOKEN_TYPE,
        "id_token": token,
        "expiration_time": int(time.time()) + 3600,
    }


def use_executable(monkeypatch, tmp_path, google_federation, executable, output_file):
    google_federation.sts.add_provider(WORKLOAD, ID_TOKEN_TYPE, SUBJECT)
    source = executable.source(output_file=output_file)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(external(source, token_type=ID_TOKEN_TYPE, token_url=STS_URL)))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))


OUTPUT_FILES = [
    ("FIFO", make_fifo),
    ("a device", lambda p: "NUL" if WINDOWS else "/dev/zero"),
    ("directory", lambda p: p.mkdir() or p),
    ("2 MiB", lambda p: written(p, b" " * (2 << 20) + b"{}")),
    ("not UTF-8", lambda p: written(p, b'{"version": 1, "x": "caf\xe9"}')),
    ("deeply nested", lambda p: written(p, DEEP_JSON)),
]


@pytest.mark.parametrize("make", cases(OUTPUT_FILES, {"FIFO": FIFO}))
def test_a_hostile_output_file_is_ignored_and_the_executable_runs(
    monkeypatch, tmp_path, google_federation, executable, make
):
    output_file = make(tmp_path / "output.json")
    use_executable(monkeypatch, tmp_path, google_federation, executable, output_file)
    assert google_federation.sts.is_live(gauth.get_token())
    assert len(executable.calls) == 1


# --- row 10: the executable's output file counts only when it is ours alone ---------------------

ANOTHER_UID = 12345


def saved_response(path, mode=0o600, owner=None, token="planted-subject-token-0123"):
    path.write_text(json.dumps(fresh_response(token)))
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def planted_by_another_user(path):
    return saved_response(path, owner=ANOTHER_UID)


def symlink_to_ours(path):
    saved_response(path.with_name("real.json"), token=SUBJECT)
    path.symlink_to(path.with_name("real.json"))
    return path


def symlink_to_another_users(path):
    planted_by_another_user(path.with_name("real.json"))
    path.symlink_to(path.with_name("real.json"))
    return path


OUTPUT_FILE_OWNERS = [
    # (name, how the saved response got there, whether it is used instead of running)
    ("ours, 0600", lambda p: saved_response(p, token=SUBJECT), True),
    ("ours, readable by all", lambda p: saved_response(p, 0o644, token=SUBJECT), True),
    ("symlink to ours", symlink_to_ours, True),
    ("ours, group-writable", lambda p: saved_response(p, 0o620), False),
    ("ours, world-writable", lambda p: saved_response(p, 0o666), False),
    ("another user's", planted_by_another_user, False),
    ("symlink to another user's", symlink_to_another_users, False),
]


@pytest.mark.parametrize(
    ("plant", "used"),
    cases(
        OUTPUT_FILE_OWNERS,
        {
            "symlink to ours": SYMLINK,
            "ours, group-writable": MODE_BITS,
            "ours, world-writable": MODE_BITS,
            "another user's": OWNER,
            "symlink to another user's": SYMLINK,
        },
    ),
)
def test_an_output_file_is_used_only_when_nobody_else_could_have_written_it(
    monkeypatch, tmp_path, google_federation, executable, plant, used
):
    if plant in (planted_by_another_user, symlink_to_another_users) and os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    output_file = plant(tmp_path / "output.json")
    use_executable(monkeypatch, tmp_path, google_federation, executable, output_file)
    assert google_federation.sts.is_live(gauth.get_token())  # never the planted token
    assert len(executable.calls) == (0 if used else 1)


@pytest.mark.parametrize(
    ("mode", "owner", "words"),
    [(0o666, None, "writable by other users"), (0o600, ANOTHER_UID, "owned by another user")],
)
@posix_only(f"{MODE_BITS}; {OWNER}")
def test_a_silent_executable_whose_output_file_is_not_ours_alone_is_an_error(
    monkeypatch, tmp_path, google_federation, executable, mode, owner, words
):
    if owner is not None and os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    output_file = saved_response(tmp_path / "output.json", mode, owner)
    use_executable(monkeypatch, tmp_path, google_federation, executable, output_file)
    executable.configure(response="")
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    message = one_line(exc)
    assert str(output_file) in message
    assert words in message


# --- row 9: RSA keys are bounded in size and consistent -----------------------------------------


def der_integer(value):
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading zero keeps it positive
    return b"\x02" + der_length(len(body)) + body


def der_length(length):
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def pkcs1_pem(n, e, d, p, q, dp, dq, qinv):
    import base64
    import textwrap

    body = b"".join(der_integer(v) for v in (0, n, e, d, p, q, dp, dq, qinv))
    der = b"\x30" + der_length(len(body)) + body
    lines = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----\n"


def key_numbers(p, q, e=65537):
    """The eight PKCS#1 numbers for factors p and q (prime or not)."""
    import math

    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    d = pow(e, -1, lam)
    return dict(n=p * q, e=e, d=d, p=p, q=q, dp=d % (p - 1), dq=d % (q - 1), qinv=pow(q, -1, p))


def generated(bits):
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    return key_numbers(numbers.p, numbers.q)


def primes_of_1024_bit_keys(count):
    """Pairs of 512-bit primes, from throwaway 1024-bit keys."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    primes = []
    while len(primes) < count:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        numbers = key.private_numbers()
        primes += [numbers.p, numbers.q]
    return primes


def composite_factors():
    """Factors that are each a product of two primes: a 2048-bit n that is no RSA key."""
    while True:
        p1, p2, p3, p4 = primes_of_1024_bit_keys(4)
        if (p1 * p2 * p3 * p4).bit_length() == 2048:
            try:
                return key_numbers(p1 * p2, p3 * p4)
            except ValueError:  # 65537 happens to divide lcm(p - 1, q - 1)
                continue


def changed(**changes):
    def make():
        numbers = generated(2048)
        for name, change in changes.items():
            numbers[name] = change(numbers)
        return numbers

    return make


def oversized(bits):
    """A key whose size alone must refuse it: its other numbers are never looked at."""
    return lambda: dict(n=(1 << (bits - 1)) | 1, e=65537, d=3, p=5, q=7, dp=1, dq=1, qinv=1)


def tiny_factor():
    """n = 3 * q: consistent CRT numbers, but one factor of two bits."""
    q = (1 << 2046) + 1
    while (q - 1) % 65537 == 0 or q % 3 == 0:
        q += 2
    return key_numbers(3, q)


SIGNS = "signs"

RSA_KEYS = [
    # (name, how to make the numbers, "signs" or words of the KeyFormatError)
    ("2048-bit", lambda: generated(2048), SIGNS),
    ("3072-bit", lambda: generated(3072), SIGNS),
    ("4096-bit", lambda: generated(4096), SIGNS),
    ("d reduced mod phi", changed(d=lambda k: pow(65537, -1, (k["p"] - 1) * (k["q"] - 1))), SIGNS),
    ("1024-bit", lambda: generated(1024), "1024-bit key; only 2048 to 4096"),
    ("4104-bit", oversized(4104), "4104-bit key; only 2048 to 4096"),
    ("16384-bit", oversized(16384), "16384-bit key; only 2048 to 4096"),
    ("composite factors", composite_factors, "not prime"),
    ("a tiny factor", tiny_factor, "not form a consistent RSA key"),
    ("wrong d", changed(d=lambda k: k["d"] + 2), "not form a consistent RSA key"),
    ("unreduced dp", changed(dp=lambda k: k["dp"] + ((k["p"] - 1) << 4000)), "consistent"),
    ("huge dp", changed(dp=lambda k: k["dp"] + (k["p"] - 1) * (1 << 100_000)), "consistent"),
    ("wrong qinv", changed(qinv=lambda k: k["qinv"] + 1), "not form a consistent RSA key"),
    ("even e", changed(e=lambda k: 65536), "not form a consistent RSA key"),
    ("e of 1", changed(e=lambda k: 1), "not form a consistent RSA key"),
    ("e of 300 bits", changed(e=lambda k: (1 << 300) + 1), "not form a consistent RSA key"),
    ("n not p*q", changed(n=lambda k: k["n"] + 2), "not form a consistent RSA key"),
    ("p and q swapped with qinv", changed(p=lambda k: k["q"], q=lambda k: k["p"]), "consistent"),
]


@pytest.mark.parametrize(
    ("make", "outcome"), [c[1:] for c in RSA_KEYS], ids=[c[0] for c in RSA_KEYS]
)
def test_rsa_keys_are_bounded_and_consistent_or_refused(make, outcome):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    numbers = make()
    pem = pkcs1_pem(**numbers)
    if outcome != SIGNS:
        with pytest.raises(gauth.KeyFormatError, match=outcome):
            gauth.RsaPrivateKey.from_pem(pem).sign_rs256(b"message")
        return
    signature = gauth.RsaPrivateKey.from_pem(pem).sign_rs256(b"message")
    public = rsa.RSAPublicNumbers(numbers["e"], numbers["n"]).public_key()
    public.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


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


# The guard itself (conftest.py's secrets_never_leak), run on tests that leak through each way
# out of the program. Its verdict names how many secrets showed where, never a secret.
LEAKY_TESTS = """
import logging
import os
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import register_secret
from fakes.testing import run_cli, run_main

SECRET = "guard-sentinel-secret"  # a refresh token, say: it shows nowhere
TOKEN = "ya29.guard-sentinel-token"  # an access token: the answer of `token`


@pytest.fixture(autouse=True)
def secrets():
    register_secret(SECRET)
    register_secret(TOKEN, access_token=True)


def test_printed():
    print("said", SECRET)


def test_said_by_our_command_in_a_subprocess():
    assert SECRET in run_cli("no-such-command-" + SECRET).stderr


def test_said_by_our_command_in_this_process(capsys):
    assert SECRET in run_main(capsys, "no-such-command-" + SECRET)[2]


def test_logged():
    logging.getLogger("artifactregistry_gauth").debug("said %s", SECRET)


def test_a_cache_file_name():
    cache = Path(os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"])
    cache.mkdir()
    (cache / SECRET).touch()


def test_an_error_caught():
    with pytest.raises(gauth.CredentialError):
        raise gauth.CredentialError("said " + SECRET)


def test_an_error_that_fails_the_test():
    raise gauth.CredentialError("said " + SECRET)


def test_a_token_on_stderr():
    assert TOKEN in run_cli("no-such-command-" + TOKEN).stderr


def test_a_token_printed_by_token():
    env = {**os.environ, "GOOGLE_OAUTH_ACCESS_TOKEN": TOKEN}
    assert run_cli("token", env=env).stdout == TOKEN + "\\n"


@pytest.fixture(scope="session")
def session_secret():
    register_secret("session-sentinel-secret")


def test_a_session_fixture_sets_up(session_secret):
    pass


def test_a_session_fixture_used_again(session_secret):
    print("session-sentinel-secret")


def test_a_session_fixture_not_used():
    print("session-sentinel-secret")


def test_one_secret_of_its_own():
    register_secret("own-sentinel-secret")


def test_the_next_one():
    print("own-sentinel-secret")
"""

GUARD_VERDICTS = {
    "test_printed": "1 in the stdout of the test (call)",
    "test_said_by_our_command_in_a_subprocess": "1 in the stderr of `artifactregistry_gauth`",
    "test_said_by_our_command_in_this_process": "1 in the stderr of `artifactregistry_gauth`",
    "test_logged": "1 in the log",
    "test_a_cache_file_name": "1 in the names of the files in the cache directory",
    "test_an_error_caught": "1 in the error caught by pytest.raises (CredentialError)",
    "test_an_error_that_fails_the_test": "1 in the error that failed the test",
    "test_a_token_on_stderr": "1 in the stderr of `artifactregistry_gauth`",
    "test_a_session_fixture_used_again": "1 in the stdout of the test (call)",
}


def test_the_secrets_guard_fails_each_leak_saying_how_many_and_where(pytester, monkeypatch):
    root = Path(__file__).resolve().parent
    pytester.makeconftest((root / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(test_leaks=LEAKY_TESTS)
    monkeypatch.setenv("PYTHONPATH", str(root))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    said = {}  # the line under each "___ ERROR at teardown of NAME ___"
    for line, following in zip(result.outlines, result.outlines[1:]):
        teardown = re.fullmatch(r"_+ ERROR at teardown of (\w+) _+", line)
        if teardown:
            said[teardown.group(1)] = following.replace("secrets_never_leak: ", "", 1)
    assert said == {
        name: f"1 secret(s) left the program: {where}" for name, where in GUARD_VERDICTS.items()
    }
    # A leak is an error at teardown: the calls of all but one of those tests passed.
    result.assert_outcomes(passed=13, failed=1, errors=len(GUARD_VERDICTS))
    output = "\n".join(result.outlines + result.errlines)
    assert "guard-sentinel" not in output  # nor in the failure's traceback: *** there
    assert "***" in output


@pytest.mark.parametrize(
    ("argv", "prints"),
    [
        (["python", "-m", "artifactregistry_gauth", "token"], True),
        (["artifactregistry-gauth", "--output", "json", "get", "https://x", "u"], True),
        (["artifactregistry_gauth", "netrc", "us-python.pkg.dev"], True),
        (["artifactregistry_gauth", "netrc", "us-python.pkg.dev", "--output", "f"], False),
        (["artifactregistry_gauth", "credential-helper", "get"], True),
        (["python", "-m", "keyring", "get", "https://x", "oauth2accesstoken"], True),
        (["artifactregistry_gauth", "doctor"], False),
        (["artifactregistry_gauth", "print-settings"], False),
        (["python", "-c", "import artifactregistry_gauth as m; m.main(['token'])"], True),
    ],
)
def test_only_a_command_whose_job_is_to_print_a_token_may_show_one(argv, prints):
    scan = fakes.SecretScan()
    scan.add({"ya29.guard-sentinel-token": True, "guard-sentinel-secret": False})
    assert fakes.is_ours(argv)
    assert fakes.prints_a_token(argv) is prints
    both = "ya29.guard-sentinel-token guard-sentinel-secret"
    scan.saw("stdout", both, answer=fakes.prints_a_token(argv))
    scan.saw("stderr", both)
    assert scan.leaks() == {"stdout": 1 if prints else 2, "stderr": 2}


@pytest.mark.parametrize(
    "argv",
    [
        ["curl", "--netrc-file", "/tmp/test_artifactregistry_gauth0/netrc", "https://x/"],
        ["python3.9", "-I", "-c", "import netrc, sys; print(netrc.netrc(sys.argv[1]))"],
        ["uv", "pip", "install", "--index-url", "https://x/simple/", "pkg"],
    ],
)
def test_what_other_programs_print_is_not_checked_as_ours(argv):
    assert not fakes.is_ours(argv)  # a netrc reader prints the token it read, as it should


# --- row 11: a server that echoes what we sent never makes us print a secret --------------------

REFRESH_TOKEN = '1//0gEcho-Refresh/Token+with=odd&chars é"x'
CLIENT_SECRET = "GOCSPX-echo/secret+=é"
WF_CLIENT_SECRET = "wf-echo/secret+tail"
SUBJECT_TOKEN = "eyJhbGciOiJSUzI1NiJ9.echo/subject+token.sig"


def every_form(secret):
    """What the test counts as a leak: the secret in each encoding a server might use."""
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
    forms |= {re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), form) for form in forms}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    data = secret.encode()
    for encoded in (base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()):
        forms |= {encoded, encoded.rstrip("=")}
    forms |= {data.hex(), data.hex().upper()}
    return forms


def basic_forms(client_id, secret):
    pair = f"{client_id}:{secret}"
    return {*every_form(secret), pair, base64.b64encode(pair.encode()).decode()}


SECRET_FIELDS = ("refresh_token", "client_secret", "subject_token")


def secret_fields(record):
    return {name: value for name, value in record.form.items() if name in SECRET_FIELDS}


def echo_body(record):
    return urlencode(secret_fields(record))


def echo_body_lowercase_escapes(record):
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), echo_body(record))


def echo_values(record):
    return "; ".join(f"{name}={value}" for name, value in secret_fields(record).items())


def echo_json(record):
    return json.dumps(secret_fields(record))


def echo_json_unicode(record):
    return json.dumps(secret_fields(record), ensure_ascii=False).replace("/", "\\/")


def echo_quoted_values(record):
    return " ".join(quote(value, safe="") for value in secret_fields(record).values())


def echo_base64(record):
    return " ".join(base64.b64encode(v.encode()).decode() for v in secret_fields(record).values())


def echo_base64url_unpadded(record):
    values = secret_fields(record).values()
    return " ".join(base64.urlsafe_b64encode(v.encode()).decode().rstrip("=") for v in values)


def echo_hex(record):
    return " ".join(value.encode().hex() for value in secret_fields(record).values())


def echo_authorization(record):
    return json.dumps({"authorization": record.headers["authorization"]})


def echo_decoded_basic(record):
    credential = record.headers["authorization"].split(" ", 1)[1]
    return "client " + base64.b64decode(credential).decode()


FORM_ECHOES = [
    echo_body,
    echo_body_lowercase_escapes,
    echo_values,
    echo_json,
    echo_json_unicode,
    echo_quoted_values,
    echo_base64,
    echo_base64url_unpadded,
    echo_hex,
]


def echoing(encode, style, echoed):
    def respond(record):
        said = encode(record)
        echoed.append(said)
        if style == "oauth":
            return reply(400, {"error": "invalid_request", "error_description": "got " + said})
        return reply(400, {"error": {"code": 400, "message": "got " + said, "status": "INVALID"}})

    return respond


def user_credentials(monkeypatch, tmp_path, fake_google, google_https, user_file):
    path = user_file(refresh_token=REFRESH_TOKEN, client_secret=CLIENT_SECRET, register=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return every_form(REFRESH_TOKEN) | every_form(CLIENT_SECRET)


def federation_with_client_auth(monkeypatch, tmp_path, fake_google, google_https, user_file):
    token_file = tmp_path / "subject"
    token_file.write_text(SUBJECT_TOKEN)
    info = external(
        {"file": str(token_file)},
        token_url=fake_google.token_url,
        client_id="wf-client",
        client_secret=WF_CLIENT_SECRET,
    )
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    register_secret(SUBJECT_TOKEN, WF_CLIENT_SECRET)
    return every_form(SUBJECT_TOKEN) | basic_forms("wf-client", WF_CLIENT_SECRET)


ECHO_CASES = [
    *[(user_credentials, encode) for encode in FORM_ECHOES],
    *[
        (federation_with_client_auth, encode)
        for encode in (*FORM_ECHOES, echo_authorization, echo_decoded_basic)
    ],
]


@pytest.mark.parametrize("style", ["oauth", "google"])
@pytest.mark.parametrize(
    ("credentials", "encode"),
    ECHO_CASES,
    ids=[f"{c.__name__}-{e.__name__}" for c, e in ECHO_CASES],
)
def test_an_echoed_secret_is_masked_in_every_encoding(
    monkeypatch, tmp_path, fake_google, google_https, user_file, credentials, encode, style
):
    forms = credentials(monkeypatch, tmp_path, fake_google, google_https, user_file)
    register_secret(*forms)  # so the autouse guard checks the logs for them too
    echoed = []
    monkeypatch.setattr(fake_google, "respond", echoing(encode, style, echoed))
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    message = one_line(exc)
    assert [form for form in forms if form in echoed[0]]  # the server did echo a secret
    assert "***" in message
    assert not [form for form in forms if form in message]
    assert not [form for form in forms if form in json.dumps(gauth.diagnose())]


def test_a_long_server_message_is_cut_short(monkeypatch, sa_env, fake_google):
    fake_google.script((400, {"error": "invalid_grant", "error_description": "blah " * 10_000}))
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    assert one_line(exc).count("blah") <= gauth.MAX_QUOTED // 5


# --- text that cannot be sent: one line, never a UnicodeEncodeError ---------------------------

INDEX = "https://us-python.pkg.dev/proj/repo/simple/"
LONE_SURROGATE = "abc\ud800def"  # what a JSON "\ud800" escape without its pair decodes to


def surrogate_subject_file(tmp_path, fake_idp):
    token_file = tmp_path / "subject.json"
    token_file.write_text(json.dumps({"id_token": LONE_SURROGATE}))  # written as \ud800
    return {"file": str(token_file)}


def surrogate_subject_url(tmp_path, fake_idp):
    fake_idp.token, fake_idp.json_field = LONE_SURROGATE, "id_token"
    return {"url": fake_idp.url}


@pytest.fixture(params=[surrogate_subject_file, surrogate_subject_url])
def unsendable_subject(request, tmp_path, monkeypatch):
    source = request.param(tmp_path, request.getfixturevalue("fake_idp"))
    source["format"] = {"type": "json", "subject_token_field_name": "id_token"}
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(external(source, token_url="http://127.0.0.1:9/token")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    return creds


UNSENDABLE = "subject_token to send to Google's STS holds a lone surrogate"


def test_a_subject_token_that_cannot_be_sent_is_one_line_from_get_password(
    unsendable_subject, caplog
):
    with caplog.at_level("WARNING", logger="artifactregistry_gauth"):
        assert gauth.GooglePyPIAuth().get_password(INDEX, "oauth2accesstoken") is None
    [line] = caplog.messages
    assert line.startswith(f"artifactregistry-gauth: {unsendable_subject}: ")
    assert UNSENDABLE in line


@pytest.mark.parametrize("command", [["token"], ["get", INDEX, "oauth2accesstoken"]])
def test_a_subject_token_that_cannot_be_sent_is_one_line_from_the_cli(unsendable_subject, command):
    done = subprocess.run(
        [sys.executable, "-m", "artifactregistry_gauth", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert UNSENDABLE in line and str(unsendable_subject) in line


UNSENDABLE_FILES = [
    # (name, credential_source, extra fields of the file, words of the one line)
    (
        "header value beyond Latin-1",
        {"url": "http://127.0.0.1:9/idp", "headers": {"Metadata": "\u20ac"}},
        {},
        "the 'Metadata' header for http://127.0.0.1:9/idp holds characters",
    ),
    (
        "header value with a lone surrogate",
        {"url": "http://127.0.0.1:9/idp", "headers": {"Metadata": "\ud800"}},
        {},
        "the 'Metadata' header",
    ),
    (
        "header value with a line break",
        {"url": "http://127.0.0.1:9/idp", "headers": {"Metadata": "a\r\nX-Injected: 1"}},
        {},
        "the 'Metadata' header",
    ),
    (
        "header name with a space",
        {"url": "http://127.0.0.1:9/idp", "headers": {"Meta data": "True"}},
        {},
        "the 'Meta data' header",
    ),
    (
        "non-ASCII subject token URL",
        {"url": "http://127.0.0.1:9/t\u00f6ken"},
        {},
        "the URL http://127.0.0.1:9/t\u00f6ken holds characters that cannot be sent",
    ),
    (
        "non-ASCII token_url",
        {"file": "SUBJECT_FILE"},
        {"token_url": "http://127.0.0.1:9/t\u00f6ken"},
        "the URL http://127.0.0.1:9/t\u00f6ken holds characters that cannot be sent",
    ),
    (
        "audience with a lone surrogate",
        {"file": "SUBJECT_FILE"},
        {"audience": WORKLOAD + "\ud800"},
        "the audience to send to Google's STS holds a lone surrogate",
    ),
    (
        "client secret with a lone surrogate",
        {"file": "SUBJECT_FILE"},
        {"client_id": "c", "client_secret": "\ud800"},
        "the client_id or client_secret holds a lone surrogate",
    ),
    (
        "AWS secret with a lone surrogate",
        {
            "environment_id": "aws1",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?"
            "Action=GetCallerIdentity&Version=2011-06-15",
        },
        {"subject_token_type": "urn:ietf:params:aws:token-type:aws4_request"},
        "the AWS secret access key holds a lone surrogate",
    ),
    (
        "executable audience with a NUL",
        {"executable": {"command": "/bin/true"}},
        {"audience": WORKLOAD + "\x00"},
        "cannot run the executable '/bin/true' (its command line or environment holds",
    ),
    (
        "executable command with a lone surrogate",
        {"executable": {"command": "/bin/true \ud800"}},
        {},
        "cannot run the executable '/bin/true' (its command line or environment holds",
    ),
]


@pytest.mark.parametrize(
    ("source", "extra", "words"),
    cases(
        UNSENDABLE_FILES,
        {
            "executable command with a lone surrogate": "a command line of bytes "
            "(Windows' UTF-16 command line holds a lone surrogate)"
        },
    ),
)
def test_text_that_cannot_be_sent_is_one_clear_line(monkeypatch, tmp_path, source, extra, words):
    subject = tmp_path / "subject"
    subject.write_text(SUBJECT)
    if source.get("file") == "SUBJECT_FILE":
        source = {"file": str(subject)}
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    if "environment_id" in source:
        # The environment cannot hold a lone surrogate; AWS metadata's JSON can.
        aws = ("us-east-1", "AKIAEXAMPLE", "\ud800", "")
        monkeypatch.setattr(gauth.AwsFederation, "_region_and_credentials", lambda *_: aws)
    info = external(source, **{"token_url": "http://127.0.0.1:9/token", **extra})
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    message = one_line(exc)
    assert message.startswith(f"{creds}: ")
    assert words in message


# --- a password in a URL we quote is shown as *** ---------------------------------------------

URL_PASSWORD = "Url-Pa55word-Never-Shown"
AWS_VERIFY = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"


def with_password(path, scheme="http"):
    return f"{scheme}://robot:{URL_PASSWORD}@127.0.0.1:9/{path}"


PASSWORD_URLS = [
    # (name, credential_source, extra fields of the file)
    ("subject token URL", {"url": with_password("idp?resource=x")}, {}),
    ("subject token URL without a port", {"url": f"http://robot:{URL_PASSWORD}@127.0.0.1/"}, {}),
    ("token_url", {"file": "SUBJECT_FILE"}, {"token_url": with_password("token")}),
    ("token_url not https", {"file": "SUBJECT_FILE"}, {"token_url": with_password("t", "ftp")}),
    (
        "AWS region_url",
        {"environment_id": "aws1", "region_url": with_password("zone")},
        {"subject_token_type": "urn:ietf:params:aws:token-type:aws4_request"},
    ),
    (
        "AWS session URL",
        {
            "environment_id": "aws1",
            "url": "http://127.0.0.1:9/creds",
            "imdsv2_session_token_url": with_password("api/token"),
        },
        {"subject_token_type": "urn:ietf:params:aws:token-type:aws4_request"},
    ),
]


@pytest.mark.parametrize(
    ("source", "extra"), [row[1:] for row in PASSWORD_URLS], ids=[row[0] for row in PASSWORD_URLS]
)
def test_a_password_in_a_url_is_masked_in_errors_and_logs(
    monkeypatch, tmp_path, caplog, source, extra
):
    register_secret(URL_PASSWORD)  # the autouse guard scans every error and log line for it
    subject = tmp_path / "subject"
    subject.write_text(SUBJECT)
    if source.get("file") == "SUBJECT_FILE":
        source = {"file": str(subject)}
    if "environment_id" in source:
        source["regional_cred_verification_url"] = AWS_VERIFY
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID"):
            monkeypatch.delenv(name, raising=False)
        if "region_url" not in source:
            monkeypatch.setenv("AWS_REGION", "us-east-1")
    info = external(source, **{"token_url": "http://127.0.0.1:9/token", **extra})
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    with caplog.at_level("DEBUG", logger="artifactregistry_gauth"):
        with pytest.raises(gauth.CredentialError) as exc:
            gauth.get_token()
    message = one_line(exc)
    assert "robot:***@127.0.0.1" in message
    assert URL_PASSWORD not in message + caplog.text


def test_a_url_with_a_password_is_refused_before_any_connection(monkeypatch, tmp_path):
    connected = []
    monkeypatch.setattr(gauth.Transport, "_exchange", lambda *args: connected.append(args))
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(external({"url": with_password("idp")})))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    with pytest.raises(gauth.CredentialError, match=r"robot:\*\*\*@.* has a user name or password"):
        gauth.get_token()
    assert connected == []  # not even a DNS lookup of "robot:PASSWORD@127.0.0.1"


def test_the_cli_masks_a_password_in_a_url_it_refuses():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "artifactregistry_gauth",
            "token",
            "--url",
            with_password("x", "https"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "robot:***@127.0.0.1" in done.stderr
    assert URL_PASSWORD not in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://a.example/p?token=secret#frag", "https://a.example/p"),
        ("http://u:p@h:1/x", "http://u:***@h:1/x"),
        ("http://u@h/x", "http://u@h/x"),
        ("http://u:p:q@x@h/", "http://u:***@h/"),
        ("http://" + "t" * 50 + "@h/", "http://***@h/"),
        ("u:p@h/x", "u:***@h/x"),
        ("http://[::1/x", "http://[::1/x"),  # urlsplit would raise; quoting never does
    ],
)
def test_a_quoted_url_never_shows_a_password_query_or_fragment(url, shown):
    assert gauth._quoted_url(url) == shown


# --- row 12: what a command prints is capped as HTTP bodies are ---------------------------------

LIMIT = 64 * KIB


def python(code):
    return [sys.executable, "-c", code]


RUNS = [
    # (name, code, returncode and stdout, or the exception and words)
    ("quiet", "import sys; sys.stdout.buffer.write(b'hi\\n')", (0, b"hi\n")),  # no \r on Windows
    ("fails", "import sys; sys.stderr.write('no'); sys.exit(3)", (3, b"")),
    ("exactly the limit", f"import sys; sys.stdout.write('x' * {LIMIT})", (0, b"x" * LIMIT)),
    (
        "one byte too many",
        f"import sys; sys.stdout.write('x' * {LIMIT + 1})",
        (gauth._OutputTooLargeError, f"printed more than {LIMIT} bytes on stdout"),
    ),
    (
        "endless stdout",
        "import sys\nwhile True: sys.stdout.write('x' * 65536)",
        (gauth._OutputTooLargeError, "on stdout"),
    ),
    (
        "endless stderr",
        "import sys\nwhile True: sys.stderr.write('x' * 65536)",
        (gauth._OutputTooLargeError, "on stderr"),
    ),
    (
        "too much, then hangs",
        f"import sys, time; print('x' * {2 * LIMIT}, flush=True); time.sleep(60)",
        (gauth._OutputTooLargeError, "on stdout"),
    ),
    ("hangs", "import time; time.sleep(60)", (subprocess.TimeoutExpired, "timed out")),
]


@pytest.mark.parametrize(("code", "outcome"), [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
def test_run_capped_keeps_at_most_the_limit_and_kills_the_rest(code, outcome):
    argv = python(code)
    if isinstance(outcome[0], int):
        done = gauth._run_capped(argv, None, 30, LIMIT)
        assert (done.returncode, done.stdout) == outcome
        return
    timeout = 1.0 if outcome[0] is subprocess.TimeoutExpired else 30
    with pytest.raises(outcome[0], match=outcome[1]):
        gauth._run_capped(argv, None, timeout, LIMIT)


def test_a_timeout_is_bounded_even_when_the_command_cannot_be_killed(monkeypatch, tmp_path):
    # taskkill can fail (access denied, a broken SystemRoot) and a kill can be ignored: the
    # lookup must still end within its timeout and the kill grace, never wait for the command.
    monkeypatch.setenv("SystemRoot", str(tmp_path / "no-windows"))  # no taskkill.exe there
    monkeypatch.setattr(os, "killpg", lambda pid, sig: None, raising=False)
    monkeypatch.setattr(subprocess.Popen, "kill", lambda self: None)
    stop = tmp_path / "stop"
    argv = python(
        "import os, time\nend = time.monotonic() + 60\n"
        f"while time.monotonic() < end and not os.path.exists({str(stop)!r}): time.sleep(0.05)"
    )
    started = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            gauth._run_capped(argv, None, 0.5, LIMIT)
        # Not a speed check: the command runs on for 60 s unless told to stop.
        assert time.monotonic() - started < 0.5 + gauth.KILL_GRACE + 30
    finally:
        stop.touch()


def test_run_capped_says_when_a_command_cannot_start(tmp_path):
    with pytest.raises(OSError):
        gauth._run_capped([str(tmp_path / "missing")], None, 5, LIMIT)


LOUD_EXECUTABLES = [
    ("2 MiB on stdout", "sys.stdout.write('x' * (2 << 20))", "printed more than 1 MiB on stdout"),
    ("2 MiB on stderr", "sys.stderr.write('x' * (2 << 20))", "printed more than 1 MiB on stderr"),
    ("endless output", "while True: sys.stdout.write('x' * 65536)", "more than 1 MiB on stdout"),
]


@pytest.mark.parametrize(
    ("code", "words"), [r[1:] for r in LOUD_EXECUTABLES], ids=[r[0] for r in LOUD_EXECUTABLES]
)
def test_an_executable_that_prints_too_much_is_killed_with_one_clear_line(
    monkeypatch, tmp_path, bin_dir, code, words
):
    script = write_program(bin_dir / "loud-helper", f"import sys\n{code}\n")
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")
    source = {"executable": {"command": str(script), "timeout_millis": 30_000}}
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(external(source, token_type=ID_TOKEN_TYPE)))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    with pytest.raises(gauth.CredentialError) as exc:
        gauth.get_token()
    assert words in one_line(exc)


def test_a_response_padded_to_the_limit_is_still_read(
    monkeypatch, tmp_path, google_federation, executable
):
    text = json.dumps(fresh_response())
    executable.configure(response=text + " " * (gauth.MAX_RESPONSE_BYTES - len(text)))
    use_executable(monkeypatch, tmp_path, google_federation, executable, None)
    assert google_federation.sts.is_live(gauth.get_token())


# --- row 14: the cache directory and its lock belong to us alone --------------------------------


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")


def directory(path, mode=0o700, owner=None):
    path.mkdir()
    path.chmod(mode)
    if owner is not None:
        needs_root()
        os.chown(path, owner, owner)
    return path


def link_to(make):
    def plant(path):
        target = make(path.with_name(path.name + "-target"))
        path.symlink_to(target)
        return target

    return plant


REPAIRED, UNTOUCHED, REFUSED = "repaired to 0700", "used as it is", "not used"

CACHE_DIRECTORIES = [
    # (name, how the directory is found, what becomes of it)
    ("ours, 0700", directory, UNTOUCHED),
    ("ours, 0755", lambda p: directory(p, 0o755), UNTOUCHED),
    ("ours, world-writable", lambda p: directory(p, 0o777), REPAIRED),
    ("ours, group-writable", lambda p: directory(p, 0o770), REPAIRED),
    ("ours, sticky and world-writable", lambda p: directory(p, 0o1777), REPAIRED),
    ("another user's", lambda p: directory(p, 0o700, ANOTHER_UID), REFUSED),
    ("another user's, world-writable", lambda p: directory(p, 0o777, ANOTHER_UID), REFUSED),
    ("symlink to ours", link_to(directory), UNTOUCHED),
    ("symlink to ours, world-writable", link_to(lambda p: directory(p, 0o777)), REPAIRED),
    ("symlink to another user's", link_to(lambda p: directory(p, 0o777, ANOTHER_UID)), REFUSED),
    ("a file", lambda p: written(p, b"not a directory"), REFUSED),
    ("a dangling symlink", lambda p: p.symlink_to(p.with_name("gone")) or p, REFUSED),
]


@pytest.mark.parametrize(
    ("make", "outcome"),
    cases(
        CACHE_DIRECTORIES,
        {
            "ours, world-writable": MODE_BITS,
            "ours, group-writable": MODE_BITS,
            "ours, sticky and world-writable": MODE_BITS,
            "another user's": OWNER,
            "another user's, world-writable": OWNER,
            "symlink to ours": SYMLINK,
            "symlink to ours, world-writable": SYMLINK,
            "symlink to another user's": SYMLINK,
            "a dangling symlink": SYMLINK,
        },
    ),
)
def test_a_cache_directory_others_can_write_is_repaired_or_refused(
    monkeypatch, tmp_path, sa_env, fake_google, make, outcome
):
    path = tmp_path / "cache"
    target = make(path)
    mode = os.stat(target).st_mode & 0o7777 if os.path.isdir(target) else None
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_CACHE_DIR", str(path))
    assert fake_google.is_live(gauth.get_token())
    if outcome == REFUSED:
        assert not os.path.isdir(target) or os.listdir(target) == []
        return
    assert [name for name in os.listdir(target) if name.endswith(".token")]
    assert os.stat(target).st_mode & 0o7777 == (0o700 if outcome == REPAIRED else mode)


def plant_symlink(lock, victim):
    lock.symlink_to(victim)


def plant_dangling_symlink(lock, victim):
    lock.symlink_to(victim.with_name("created-through-the-link"))


def plant_fifo(lock, victim):
    os.mkfifo(lock)


def plant_foreign_lock_and_hold_it(lock, victim):
    import fcntl

    needs_root()
    lock.write_bytes(b"")
    lock.chmod(0o666)
    os.chown(lock, ANOTHER_UID, ANOTHER_UID)
    holder = os.open(lock, os.O_RDWR)  # another process would hold it the same way
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    PLANTED_FDS.append(holder)


def plant_readable_lock(lock, victim):
    lock.write_bytes(b"")
    lock.chmod(0o666)


PLANTED_FDS: list = []

LOCKS = [
    pytest.param(plant_symlink, marks=posix_only(SYMLINK)),
    pytest.param(plant_dangling_symlink, marks=posix_only(SYMLINK)),
    pytest.param(plant_fifo, marks=posix_only(FIFO)),
    pytest.param(plant_foreign_lock_and_hold_it, marks=posix_only(OWNER)),
]


@pytest.fixture
def planted_fds():
    yield PLANTED_FDS
    while PLANTED_FDS:
        os.close(PLANTED_FDS.pop())


@pytest.mark.parametrize("plant", [*LOCKS, plant_readable_lock])
def test_a_planted_lock_file_is_replaced_never_followed_or_waited_on(
    isolated_env, tmp_path, sa_env, fake_google, sleeps, planted_fds, plant
):
    gauth.get_token()  # creates the cache directory and the lock file
    (lock,) = isolated_env.cache_dir.glob("*.lock")
    for entry in isolated_env.cache_dir.glob("*.token"):
        entry.unlink()  # so the next lookup is cold and takes the lock
    lock.unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    plant(lock, victim)
    gauth._forget_tokens()
    assert fake_google.is_live(gauth.get_token())
    assert sleeps == []  # no waiting on a lock someone else holds
    assert victim.read_bytes() == b"precious"
    assert not victim.with_name("created-through-the-link").exists()
    assert lock.is_file() and not lock.is_symlink()
    if not WINDOWS:  # Windows: no owner uid, no mode bits
        assert lock.stat().st_uid == os.getuid() and lock.stat().st_mode & 0o077 == 0


@posix_only(FIFO)
def test_a_fifo_planted_as_a_cache_entry_is_ignored_without_blocking(
    isolated_env, sa_env, fake_google
):
    gauth.get_token()
    (entry,) = isolated_env.cache_dir.glob("*.token")
    entry.unlink()
    os.mkfifo(entry)
    gauth._forget_tokens()
    assert fake_google.is_live(gauth.get_token())
    assert entry.is_file()  # replaced by a good entry
