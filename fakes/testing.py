"""Small helpers the test modules share: run our command line or keyring's, write credential
files, check an error is one line.

What our command line prints through these helpers is shown to the secrets guard
(conftest.py's ``secrets_never_leak``): `run_main` tells it, and a subprocess's output
reaches it through ``Popen.communicate``."""

import io
import json
import subprocess
import sys
from pathlib import Path

import fakes

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


def run_main(capsys, *argv, stdin=b""):
    """Our command line in this process: (exit code, stdout, stderr), shown to the secrets guard."""
    import artifactregistry_gauth

    old, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        code = artifactregistry_gauth.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    fakes.scan_output(["artifactregistry_gauth", *argv], out, err)
    return code, out, err


def one_line(caught):
    """The message of a ``pytest.raises`` result, checked to be a single line."""
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def keyring_cli(*args, python=sys.executable, env=None):
    """``python -m keyring ARGS``: the real keyring command line, as pip runs it."""
    return subprocess.run(
        [python, "-m", "keyring", *args], capture_output=True, text=True, env=env, timeout=60
    )


def write(tmp_path, content, name="creds.json"):
    """A file in ``tmp_path`` holding ``content`` (text is written as UTF-8)."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def sa_json(rsa_key, **overrides):
    """A service account key file's JSON for ``rsa_key``; an override of None drops the field."""
    info = {
        "type": "service_account",
        "client_email": "sa@proj.iam.gserviceaccount.com",
        "private_key": rsa_key.pkcs8_pem,
        "private_key_id": "k1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(overrides)
    return json.dumps({k: v for k, v in info.items() if v is not None})
