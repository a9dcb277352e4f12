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
planting): skipped there, with the reason in the skip.

Every secret a fake hands out is registered here, so that the suite's guard
(conftest.py's ``secrets_never_leak``) can look for it in errors and logs.
"""

import os
import sys

import pytest

WINDOWS = sys.platform == "win32"
SECRETS: set = set()


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


def register_secret(*values):
    """Remember credential material the fakes hand out or the tests write into files."""
    SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= 8)


def assert_private(path, mode=0o600):
    """The file's permission bits are `mode` (POSIX); on Windows its ACL, which is not read."""
    if not WINDOWS:
        actual = os.stat(path).st_mode & 0o777
        if actual != mode:
            raise AssertionError(f"{path} has mode {actual:o}, not {mode:o}")
