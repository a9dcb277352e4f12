"""Small helpers the test modules share: run our command line, check an error is one line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, stdin="", env=None, cwd=ROOT):
    """``python -m artifactregistry_gauth ARGS`` with text output captured, within a minute."""
    return subprocess.run(
        [sys.executable, "-m", "artifactregistry_gauth", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def one_line(caught):
    """The message of a ``pytest.raises`` result, checked to be a single line."""
    message = str(caught.value)
    assert "\n" not in message, message
    return message
