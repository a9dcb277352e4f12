"""The test world's fakes, one module per thing imitated; standard library plus test extras.

- ``fakes.network``: the loopback HTTP(S) server every fake runs on, the one request
  record (`Recorded`), the routing CONNECT proxy, silent listeners, refused ports, the test CA.
- ``fakes.google``: Google's OAuth token endpoint (RS256 checked with ``cryptography``),
  STS, IAM credentials, a subject-token identity provider.
- ``fakes.metadata``: the GCE metadata server (also as a starting pod's), AWS IMDS.
- ``fakes.gcloud``: the fake ``gcloud`` executable in its SDK layout, and the real one isolated.
- ``fakes.registry``: Artifact Registry repositories, open mirrors, uploads and wheels.
- ``fakes.programs``: programs the tests write (``#!`` scripts, ``.cmd`` on Windows).
- ``fakes.trust``: a truststore module and macOS's ``security``, for the TLS trust stores.

`posix_only` marks what Windows has no equivalent of (FIFOs, owners, mode bits, symlink
planting): skipped there, with the reason in the skip. `wine_gap` marks what fails only
under Wine, which runs the Windows suite here: an expected failure there, naming the gap.

Every secret a fake hands out or a test writes is registered here (`register_secret`),
for the running test only, so that the suite's guard (conftest.py's ``secrets_never_leak``)
can look for it in what leaves the program during that test (`SecretScan`).
"""

import os
import re
import sys
from contextlib import contextmanager

import pytest

WINDOWS = sys.platform == "win32"


def _under_wine() -> bool:
    """Whether this Windows is Wine (its ntdll exports wine_get_version), not Microsoft's."""
    if not WINDOWS:
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")


WINE = _under_wine()


def _not_there() -> str:
    """The OS's words for a file that is not there, as os.stat says them (Windows has its own)."""
    try:
        os.stat(os.path.join(os.path.dirname(os.path.abspath(__file__)), "not-there"))
    except FileNotFoundError as exc:
        return exc.strerror
    raise AssertionError("fakes/not-there exists")


NOT_THERE = _not_there()


def posix_only(reason):
    """Skip on Windows, saying which POSIX-only thing the test needs."""
    return pytest.mark.skipif(WINDOWS, reason=f"POSIX only: {reason}")


def posix_case(*values, reason, id=None):
    """A parametrize case that is POSIX only, for `reason`."""
    return pytest.param(*values, marks=posix_only(reason), id=id)


def cases(rows, posix_only_rows=None):
    """pytest.param for each (id, value, ...) row of a table; a row whose id is a key of
    `posix_only_rows` is skipped on Windows with that reason."""
    posix_only_rows = posix_only_rows or {}
    unknown = set(posix_only_rows) - {row[0] for row in rows}
    if unknown:
        raise ValueError(f"no such rows: {sorted(unknown)}")
    return [
        pytest.param(*row[1:], id=row[0], marks=[posix_only(posix_only_rows[row[0]])])
        if row[0] in posix_only_rows
        else pytest.param(*row[1:], id=row[0])
        for row in rows
    ]


# The reasons, named once.
FIFO = "a named pipe made with mkfifo"
OWNER = "a file owned by another user (chown)"
MODE_BITS = "permission bits (Windows protects files with ACLs)"
SYMLINK = "a planted symlink (Windows needs a privilege to make one)"


# The Wine 8.0 gaps that tests meet (the rig bridges others: .ci/windows/setup.sh), named once.
WINE_PARTIAL_CHAIN = (
    "crypt32's SSL chain policy passes a chain that stops short of a root "
    "(CERT_TRUST_IS_PARTIAL_CHAIN), so truststore trusts a leaf whose issuer is in no store"
)
WINE_CHAIN_ENGINE = (
    "CertCreateCertificateChainEngine refuses (E_INVALIDARG) the CERT_CHAIN_ENGINE_CONFIG "
    "with dwExclusiveFlags that truststore passes to trust the CAs loaded into its context"
)


def wine_gap(gap):
    """Expected to fail under Wine, for `gap` (strict: a Wine that fixed it is noticed)."""
    return pytest.mark.xfail(WINE, reason=f"Wine gap: {gap}", strict=True)


def assert_private(path, mode=0o600):
    """The file's permission bits are `mode` (POSIX); on Windows its ACL, which is not read."""
    if not WINDOWS:
        actual = os.stat(path).st_mode & 0o777
        if actual != mode:
            raise AssertionError(f"{path} has mode {actual:o}, not {mode:o}")


# --- The secrets guard's registry: what one test handed out, and what left the program --------


class SecretScan:
    """The secrets of one test, and every text that left the program while it ran.

    An access token may show where a command's job is to print one (`scan_output`);
    every other secret, and an access token anywhere else, is a leak.
    """

    def __init__(self):
        self.secrets = {}  # secret -> whether it is an access token (a command's answer)
        self.texts = []  # (where, text, whether an access token may show in it)

    def add(self, secrets):
        """Add {secret: whether it is an access token}; a secret said to be both is not one."""
        for secret, is_token in secrets.items():
            self.secrets[secret] = self.secrets.get(secret, True) and is_token

    def saw(self, where, text, answer=False):
        """Note a text that left the program; `where` must not quote it."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if text:
            self.texts.append((where, text, answer))

    def leaks(self):
        """{where: how many secrets showed there}: the secrets themselves are never named."""
        found = {}
        for where, text, answer in self.texts:
            count = sum(
                secret in text
                for secret, is_token in self.secrets.items()
                if not (answer and is_token)
            )
            if count:
                found[where] = found.get(where, 0) + count
        return found

    def mask(self, text):
        """The text with every secret of this test replaced by ***."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


_running = None  # the SecretScan of the test that is running, if any
_setting_up = []  # the session- or module-scoped fixtures being set up, innermost last
_fixture_secrets = {}  # such a fixture's name -> a SecretScan of what it registered


def register_secret(*values, access_token=False):
    """Remember credential material the fakes hand out or the tests write, for this test.

    While a session- or module-scoped fixture is set up, its secrets are kept for every test
    that uses it. `access_token`: an issued token, which `token`, `get`, `netrc` and
    `credential-helper` may print. Outside a test (at import, in the bench) nothing is kept.
    """
    found = {v: access_token for v in values if isinstance(v, str) and len(v) >= 8}
    if _setting_up:
        _fixture_secrets.setdefault(_setting_up[-1], SecretScan()).add(found)
    elif _running is not None:
        _running.add(found)


def start_scan():
    """A new, empty registry for the test that starts."""
    global _running
    _running = SecretScan()
    return _running


def stop_scan():
    global _running
    _running = None


@contextmanager
def registering_for(fixture_name):
    """Keep the secrets registered meanwhile for `fixture_name`, a higher-scoped fixture."""
    _setting_up.append(fixture_name)
    try:
        yield
    finally:
        _setting_up.pop()


def add_fixture_secrets(scan, fixture_names):
    """Add to `scan` the secrets of the higher-scoped fixtures its test uses."""
    for name in fixture_names:
        if name in _fixture_secrets:
            scan.add(_fixture_secrets[name].secrets)


_PRINTS_A_TOKEN = frozenset({"token", "get", "credential-helper"})
_OURS = frozenset({"artifactregistry_gauth", "artifactregistry-gauth", "keyring"})


def _program(argv):
    """What a command line runs: the module after ``-m``, ``-c`` (a script), or the program."""
    for option in ("-m", "-c"):
        if option in argv[1:-1]:
            return argv[argv.index(option) + 1] if option == "-m" else option
    return os.path.splitext(os.path.basename(argv[0]))[0]


def _words(argv):
    """The words of a command line; a ``-c`` script's words are the words in it."""
    for before, arg in zip(["", *argv], argv):
        if before == "-c":
            yield from re.findall(r"[\w-]+", arg)
        else:
            yield arg


def is_ours(argv):
    """Whether a command line runs our command line or keyring's (a script: one importing us)."""
    argv = [str(arg) for arg in argv]
    program = _program(argv)
    return program in _OURS or (program == "-c" and bool(_OURS & set(_words(argv))))


def prints_a_token(argv):
    """Whether a command's job is to print a token: token, get, netrc to stdout, the helper."""
    words = set(_words([str(arg) for arg in argv]))
    if "doctor" in words:
        return False
    return bool(words & _PRINTS_A_TOKEN) or ("netrc" in words and "--output" not in words)


def scan_output(argv, stdout, stderr):
    """Note what a run of our command line (or keyring's) printed, for the running test."""
    if _running is None:
        return
    argv = [str(arg) for arg in argv]
    said = [w for w in _words(argv) if w in _PRINTS_A_TOKEN | {"netrc", "doctor", "--output"}]
    command = " ".join([_program(argv), *said])
    _running.saw(f"stdout of `{command}`", stdout, answer=prints_a_token(argv))
    _running.saw(f"stderr of `{command}`", stderr)
