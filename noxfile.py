"""The test suite on every supported Python this machine has: ``nox`` (see CONTRIBUTING.md).

``nox`` runs ``tests`` on each one found; ``nox -s tests-3.9 -- -m "not clients" -x`` one
of them with pytest arguments. Interpreters are looked for on PATH, then in pyenv's
versions (``$PYENV_ROOT``, else ``~/.pyenv``), so pyenv shims of versions that are not
selected do not hide them. Sessions of Pythons not found are skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")  # as setup.cfg's classifiers say

nox.options.sessions = ["tests"]
# uv makes each environment in seconds; nothing is downloaded but packages from PyPI.
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"
nox.options.reuse_venv = "yes"


def _candidates(version: str) -> list:
    name = f"python{version}"
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    in_pyenv = glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", name))
    return [shutil.which(name), *sorted(in_pyenv, reverse=True)]


def _runs_as(executable: str | None, version: str) -> bool:
    """True if the file is a working Python of this version (a pyenv shim may not be)."""
    if not executable:
        return False
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == version


def find_python(version: str) -> str | None:
    """The path of a working ``pythonX.Y``, or None."""
    return next((c for c in _candidates(version) if _runs_as(c, version)), None)


def _available() -> dict:
    found = {version: find_python(version) for version in SUPPORTED}
    return {version: path for version, path in found.items() if path}


AVAILABLE = _available()
# nox finds ``pythonX.Y`` on PATH: put those found in pyenv ahead of its broken shims.
os.environ["PATH"] = os.pathsep.join(
    [
        *(os.path.dirname(p) for v, p in AVAILABLE.items() if shutil.which(f"python{v}") != p),
        os.environ.get("PATH", ""),
    ]
)
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")


@nox.session(python=list(SUPPORTED))
def tests(session: nox.Session) -> None:
    """The pytest suite; arguments after ``--`` go to pytest."""
    if session.python not in AVAILABLE:
        session.skip(f"Python {session.python} is not installed (looked on PATH and in pyenv)")
    # uv's environments have no pip, and the client tests download wheels with it.
    session.install("pip", "-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=False)
def pythons(session: nox.Session) -> None:
    """Print the supported Pythons found here, oldest first, one ``X.Y PATH`` a line."""
    for version, path in AVAILABLE.items():
        print(version, path)
