"""`netrc --output` against the programs that read netrc files: Python's `netrc` (this Python
and 3.9, whose tokenizers differ), requests' `get_netrc_auth`, curl and uv.

Whatever the file held before, after our command either every reader pairs our token with our
host and no other, or the file is byte for byte as it was and the command said why in one line.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import artifactregistry_gauth as gauth
from fakes import register_secret
from fakes.network import FakeService, reply
from fakes.testing import run_main

try:
    from noxfile import find_python  # the Pythons nox runs the suite on, found the same way
except ImportError:  # no nox (the Windows run installs none): no other Python is looked for
    find_python = None

ROOT = Path(__file__).resolve().parent
HOST = "us-python.pkg.dev"
OTHERS = ("evil.test", "127.0.0.1")  # hosts a hostile file names: they must never see our token
TOKEN = "ya29.netrc-readers-token"
STALE = "ya29.stale-netrc-token"
ENTRY = f"machine {HOST} login oauth2accesstoken password {TOKEN}\n"
OURS = ("oauth2accesstoken", TOKEN)


@pytest.fixture(autouse=True)
def held_token(monkeypatch):
    """A token handed over in GOOGLE_OAUTH_ACCESS_TOKEN: no Google endpoint is needed."""
    register_secret(TOKEN, STALE, access_token=True)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)


def write_ours(capsys, path, *hosts):
    """Run `netrc HOST... --output path` in this process: (exit code, stderr)."""
    code, out, err = run_main(capsys, "netrc", *(hosts or (HOST,)), "--output", str(path))
    assert out == ""
    return code, err


# --- the readers ------------------------------------------------------------------------------
# Each returns how it pairs credentials with each host: {host: (login, password) or None}, or
# the string "rejects the file" when it reads no credentials from it at all.

REJECTS = "rejects the file"
HOSTS = (HOST, *OTHERS)


def _pair(found):
    return None if found is None else (found[0], found[-1])


def python_netrc(path):
    """Python's own netrc module, in this process."""
    import netrc

    try:
        parsed = netrc.netrc(str(path))
    except (netrc.NetrcParseError, UnicodeDecodeError):
        return REJECTS
    return {host: _pair(parsed.authenticators(host)) for host in HOSTS}


PYTHON39_READER = textwrap.dedent(
    """
    import json, netrc, sys
    try:
        parsed = netrc.netrc(sys.argv[1])
    except (netrc.NetrcParseError, UnicodeDecodeError):
        print(json.dumps("rejects the file"))
    else:
        found = {h: parsed.authenticators(h) for h in sys.argv[2:]}
        print(json.dumps({h: v and [v[0], v[-1]] for h, v in found.items()}))
    """
)


# Looked up at import: the tests' PATH leaves out directories that hold a gcloud, such as /usr/bin.
CURL = shutil.which("curl")
PYTHON39 = None if sys.version_info[:2] == (3, 9) or not find_python else find_python("3.9")


def python39_netrc(path):
    """Python 3.9's netrc module (shlex: no quotes, no escapes), in a subprocess."""
    done = subprocess.run(
        [PYTHON39, "-I", "-c", PYTHON39_READER, str(path), *HOSTS],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "LC_ALL": "C.UTF-8"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    return found if found == REJECTS else {h: v and tuple(v) for h, v in found.items()}


def requests_netrc(path, monkeypatch):
    """requests' get_netrc_auth, which pip, twine and poetry use; it gives up quietly."""
    from requests.utils import get_netrc_auth

    monkeypatch.setenv("NETRC", str(path))
    return {host: _pair(get_netrc_auth(f"https://{host}/simple/")) for host in HOSTS}


class AuthRecorder(FakeService):
    """Answers every request 401 (so that uv retries with netrc credentials) and records it.

    The clients reach every host through it as their HTTP proxy, so each request's Host
    header says which host the client meant, and its Authorization what it sent there.
    """

    def respond(self, record):
        return reply(401, "credentials?", {"WWW-Authenticate": 'Basic realm="netrc"'})

    def sent(self):
        """{host: (login, password)} of the requests that carried Basic credentials."""
        pairs = {}
        for record in self.requests:
            host = record.headers.get("host", "").rsplit(":", 1)[0]
            scheme, _, value = record.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "basic":
                login, _, password = base64.b64decode(value).decode().partition(":")
                pairs[host] = (login, password)
        return pairs


@pytest.fixture
def recorder():
    with AuthRecorder() as fake:
        yield fake


def client_env(recorder, path):
    proxy = f"http://127.0.0.1:{recorder.port}"
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "NETRC": str(path),
        "http_proxy": proxy,
        "HTTP_PROXY": proxy,
        "no_proxy": "",
        "NO_PROXY": "",
        "UV_KEYRING_PROVIDER": "disabled",
        "UV_NO_CACHE": "1",
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }


def curl_netrc(path, recorder):
    """curl's own parser: what curl sends to each host, through the recording proxy."""
    recorder.requests.clear()
    urls = [f"http://{host}/simple/" for host in HOSTS]
    done = subprocess.run(
        [CURL, "-sS", "--max-time", "20", "--netrc-file", str(path), "--proxy",
         f"http://127.0.0.1:{recorder.port}", "--noproxy", "", *urls, "-o", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        env=client_env(recorder, path),
    )  # fmt: skip
    if done.returncode == 26:  # CURLE_READ_ERROR: ".netrc parser error"
        return REJECTS
    assert done.returncode == 0, done.stderr[-2000:]
    sent = recorder.sent()
    return {host: sent.get(host) for host in HOSTS}


def uv_binary():
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    return found


def uv_netrc(path, recorder, tmp_path):
    """uv's own parser: what uv sends to each index host after a 401, through the proxy."""
    recorder.requests.clear()
    env = client_env(recorder, path)
    runs = [
        subprocess.Popen(
            [
                uv_binary(),
                "pip",
                "install",
                "--python",
                sys.executable,
                "--target",
                str(tmp_path / f"uv-{i}"),
                "--index-url",
                f"http://{host}/simple/",
                "gauth-none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, host in enumerate(HOSTS)
    ]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    if any("netrc" in error.lower() for error in errors):  # "Error reading netrc file"
        return REJECTS
    sent = recorder.sent()
    return {host: sent.get(host) for host in HOSTS}


def every_reader(path, monkeypatch, recorder, tmp_path):
    """{reader: what it reads} for every reader installed here."""
    found = {
        "python": python_netrc(path),
        "requests": requests_netrc(path, monkeypatch),
    }
    if PYTHON39:
        found["python3.9"] = python39_netrc(path)
    if CURL:
        found["curl"] = curl_netrc(path, recorder)
    if uv_binary():
        found["uv"] = uv_netrc(path, recorder, tmp_path)
    return found


def assert_token_only_for_our_host(reads):
    for reader, pairs in reads.items():
        assert pairs != REJECTS, f"{reader} rejects a file we wrote"
        assert pairs[HOST] == OURS, f"{reader} does not give {HOST} our token"
        for host in OTHERS:
            assert TOKEN not in (pairs[host] or ()), f"{reader} sends our token to {host}"


# --- hostile files crossed with the real readers ----------------------------------------------

HOSTILE = {
    # The reproductions first.
    "an unclosed quote on the last line": 'machine 127.0.0.1 login bob password "x',
    "a backslash that continues a quote onto our entry": (
        'machine 127.0.0.1 login bob password "x\\\n'
        f'machine {HOST} login oauth2accesstoken password {STALE}"\n'
    ),
    "a dangling login at the end": "machine 127.0.0.1 login",
    "a dangling login and a line end": "machine evil.test login\n",
    "a dangling password at the end": "machine evil.test login bob password\n",
    # curl takes a word starting with # as a comment, Python as the value.
    "a password that curl reads as a comment": "machine evil.test login bob password #x\n",
    "a login that curl reads as a comment": "machine evil.test login #x\n",
    # A keyword where a value should be.
    "a keyword as a login": "machine evil.test login machine\n",
    "a machine called default": "machine default login bob password x\n",
    # Keywords only some readers know, or only in some cases.
    "user, which curl does not know": "machine evil.test user bob password x\n",
    "upper-case keywords, which only curl knows": "MACHINE evil.test LOGIN bob PASSWORD x\n",
    "an unknown keyword": "machine evil.test login bob password x port 443\n",
    "fields before any machine": "login bob password x\n",
    # Entries readers delimit differently.
    "an entry without a password (Python 3.9 rejects the file)": "machine evil.test login bob\n",
    "an entry without a login (curl reads on past it)": (
        "machine evil.test password x\ndefault login anonymous password me\n"
    ),
    "default before a machine (curl stops at default)": (
        "default login anonymous password me\nmachine evil.test login bob password x\n"
    ),
    "two entries for one machine (curl takes the first, Python the last)": (
        "machine evil.test login bob password x\nmachine EVIL.test login eve password y\n"
    ),
    "a password given twice (curl takes the first, Python the last)": (
        "machine evil.test login bob password x password y\n"
    ),
    "a comment inside an entry (Python 3.9 ends the entry there)": (
        "machine evil.test login bob\n# the password:\npassword x\n"
    ),
    "a # alone at a line end after an entry (Python 3.9 skips the next line)": (
        f"machine evil.test login bob password x\n#\n"
        f"machine {HOST} login oauth2accesstoken password {STALE}\n"
    ),
    "a #word comment that goes on (Python reads the rest)": (
        "machine evil.test login bob password x\n#note login eve\n"
    ),
    "a comment after an empty line (Python 3.10+ and uv read its words)": (
        "machine evil.test login bob password x\n\n# two words\n"
    ),
    "a comment after a CR LF line end (uv reads its words)": (
        "machine evil.test login bob password x\r\n# two words\r\n"
    ),
    # macdef bodies that readers end in different places.
    "a macdef without its empty line": "machine evil.test login bob password x\nmacdef m\nls\n",
    "a macdef line with a blank after the name (Python and uv start the body there)": (
        "macdef m \nmachine evil.test login bob password x\n\n"
    ),
    "a macdef line of blanks (uv ends the macro there)": (
        "macdef m\nls\n  \nmachine evil.test login eve password y\n\n"
    ),
    "a macdef line ending in CR LF (uv ends the macro there)": (
        "macdef init\r\nmachine evil.test login bob password x\r\n\r\n"
        f"machine {HOST} login oauth2accesstoken password {STALE}\r\n"
    ),
    "a macdef without a name on its line": "macdef\nm\nls\n\n",
    # Bytes the readers split differently.
    "a control character": "machine evil.test login bob password x\x0by\n",
    "a lone carriage return (a line end for Python only)": (
        "machine evil.test login bob password x\rmachine 127.0.0.1 login eve password y\n"
    ),
    "a NUL byte": "machine evil.test login bob password x\x00\n",
    "non-ASCII text": "machine evil.test login b\u00f6b password x\n",
    "a line longer than curl reads": "machine evil.test login bob password " + "x" * 5000 + "\n",
}

ACCEPTED = {
    "an empty file": "",
    "a file without a final line end": "machine evil.test login bob password x",
    "comments and blank lines": (
        "# my machines\n\nmachine evil.test login bob password x # the test box\n"
        "#note\n   # indented\n"
    ),
    "an entry over several lines": "machine evil.test\n  login bob\n\tpassword x\n  account a\n",
    "a macdef": "machine evil.test login bob password x\nmacdef init\ncd /pub\n\n",
    "default last": "machine evil.test login bob password x\ndefault login anonymous password me\n",
    "CR LF line ends": (
        "# machines\r\nmachine evil.test login bob password x\r\n"
        "machine 127.0.0.1 login eve password y\r\n"
    ),
    "our stale entry in a CR LF file": (
        f"machine evil.test login bob password x\r\nmacdef init\ncd /pub\r\n\r\n"
        f"machine {HOST} login oauth2accesstoken password {STALE}\r\n"
    ),
    "our stale entry among others": (
        f"machine evil.test login bob password x\nmachine {HOST} login oauth2accesstoken\n"
        f"  password {STALE}\nmachine 127.0.0.1 login eve password y\n"
    ),
}


@pytest.mark.parametrize("before", list(HOSTILE.values()), ids=list(HOSTILE))
def test_netrc_refuses_a_file_the_readers_disagree_on_and_leaves_it_as_it_was(
    capsys, tmp_path, before
):
    target = tmp_path / "netrc"
    target.write_bytes(before.encode())
    target.chmod(0o600)
    code, err = write_ours(capsys, target)
    assert code == 1
    assert err.startswith(f"artifactregistry-gauth netrc: {target}: line ")
    assert err.count("\n") == 1
    assert TOKEN not in err and STALE not in err
    assert target.read_bytes() == before.encode()


@pytest.mark.parametrize("before", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_netrc_writes_our_entry_first_and_keeps_every_other_entry(capsys, tmp_path, before):
    target = tmp_path / "netrc"
    target.write_bytes(before.encode())
    target.chmod(0o600)
    assert write_ours(capsys, target)[0] == 0
    after = target.read_bytes().decode()
    assert after.startswith(ENTRY)
    assert STALE not in after
    if STALE not in before:
        assert after == ENTRY + before


@pytest.mark.parametrize(
    "before",
    [*HOSTILE.values(), *ACCEPTED.values()],
    ids=[*(f"refused: {name}" for name in HOSTILE), *(f"written: {name}" for name in ACCEPTED)],
)
def test_every_reader_pairs_our_token_with_our_host_only_or_the_file_is_unchanged(
    capsys, monkeypatch, recorder, tmp_path, before
):
    target = tmp_path / "netrc"
    target.write_bytes(before.encode())
    target.chmod(0o600)
    code, _ = write_ours(capsys, target)
    if code != 0:
        assert target.read_bytes() == before.encode()
        return
    assert_token_only_for_our_host(every_reader(target, monkeypatch, recorder, tmp_path))


def test_the_real_readers_are_here_to_ask():
    """The table above asks curl, uv and Python 3.9 where they are installed; say which are."""
    missing = [
        name
        for name, found in (
            ("curl", CURL),
            ("uv", uv_binary()),
            ("python3.9", PYTHON39 or sys.version_info[:2] == (3, 9)),
        )
        if not found
    ]
    if missing:
        pytest.skip(f"not installed here, so not asked: {', '.join(missing)}")


# --- files and directories other users can write ------------------------------------------------

posix_only = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX modes and owners")


@posix_only
@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o660])
def test_netrc_refuses_a_file_others_can_write(capsys, tmp_path, mode):
    target = tmp_path / "netrc"
    before = b"machine evil.test login bob password x\n"
    target.write_bytes(before)
    target.chmod(mode)
    code, err = write_ours(capsys, target)
    assert code == 1
    assert err == (
        f"artifactregistry-gauth netrc: {target}: writable by other users: "
        "refusing to rewrite it; remove their write access (chmod 600) first\n"
    )
    assert target.read_bytes() == before
    assert target.stat().st_mode & 0o777 == mode


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_netrc_refuses_a_directory_others_can_write_without_the_sticky_bit(capsys, tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    code, err = write_ours(capsys, shared / "netrc")
    assert code == 1
    assert err == (
        f"artifactregistry-gauth netrc: {shared}: other users can write this directory "
        "and it has no sticky bit, so they could replace the file: write the netrc elsewhere\n"
    )
    assert list(shared.iterdir()) == []


@posix_only
def test_netrc_writes_into_a_shared_directory_with_the_sticky_bit(capsys, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert write_ours(capsys, shared / "netrc")[0] == 0
    assert (shared / "netrc").read_text() == ENTRY


# --- concurrent writers --------------------------------------------------------------------------

PARALLEL_HOSTS = [
    "us-python.pkg.dev",
    "europe-python.pkg.dev",
    "asia-python.pkg.dev",
    "us-central1-python.pkg.dev",
    "europe-west1-python.pkg.dev",
    "asia-east1-python.pkg.dev",
]


def test_concurrent_netrc_writers_lose_no_entry(tmp_path):
    target = tmp_path / "netrc"
    env = {**os.environ, "GOOGLE_OAUTH_ACCESS_TOKEN": TOKEN}
    for _ in range(2):  # without a lock, a round loses an entry about every other time
        target.write_text("machine evil.test login bob password x\n")
        target.chmod(0o600)
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "artifactregistry_gauth",
                    "netrc",
                    host,
                    "--output",
                    str(target),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host in PARALLEL_HOSTS
        ]
        errors = [run.communicate(timeout=60)[1] for run in runs]
        failed = "".join(e for run, e in zip(runs, errors) if run.returncode)
        assert [run.returncode for run in runs] == [0] * len(runs), failed  # whole, not cut
        text = target.read_text()
        for host in PARALLEL_HOSTS:
            assert text.count(f"machine {host} login oauth2accesstoken password {TOKEN}\n") == 1
        assert text.endswith("machine evil.test login bob password x\n")


# --- properties ---------------------------------------------------------------------------------

PROPERTY = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Words and separators that netrc readers treat specially, and some they do not.
NETRC_PIECES = st.sampled_from(
    [
        "machine", "default", "login", "password", "account", "macdef", "user", "Machine",
        "LOGIN", "port", HOST, HOST.upper(), "evil.test", "127.0.0.1", "bob", "x", STALE,
        "oauth2accesstoken", "#", "#c", '"', '"x', 'x"', "\\", "a\\ b", " ", "  ", "\t", "\n",
        "\n", "\n", "\r\n", "\r", "\n\n", "\x0b", "\u00e9",
    ]
)  # fmt: skip
NETRC_LIKE = st.lists(NETRC_PIECES, max_size=40).map(" ".join)


@PROPERTY
@given(text=NETRC_LIKE | st.text(max_size=200))
@example(text=f'machine 127.0.0.1 login bob password "x\\\nmachine {HOST} password y"')
@example(text="machine 127.0.0.1 login")
def test_for_any_file_we_accept_python_pairs_our_token_with_our_host_only(tmp_path, text):
    target = tmp_path / "netrc"
    before = text.encode("utf-8", "surrogatepass")
    target.write_bytes(before)
    target.chmod(0o600)
    code = gauth.main(["netrc", HOST, "--output", str(target)])
    if code != 0:
        assert target.read_bytes() == before
        return
    reads = python_netrc(target)
    assert reads != REJECTS
    assert reads[HOST] == OURS
    assert all(TOKEN not in (reads[host] or ()) for host in OTHERS)


@PROPERTY
@given(data=NETRC_LIKE.map(str.encode) | st.binary(max_size=300))
def test_netrc_rewrite_keeps_every_byte_of_a_file_without_our_entries(data):
    if HOST.encode() in data.lower():
        return
    try:
        out = gauth._netrc_with_entries(data, [HOST], ENTRY.encode(), "netrc")
    except gauth._CommandError:
        return  # refused: the caller leaves the file as it was
    assert out == ENTRY.encode() + data
