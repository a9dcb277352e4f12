"""Throwaway virtualenvs for the bench, kept under bench/.venvs and reused between runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

STAMP = "bench-stamp.json"
_VERSIONS = """\
import importlib.metadata as md, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        found[name] = None
print(json.dumps(found))
"""


class BenchSetupError(Exception):
    """A venv could not be built; the message points at the log."""


class Venv:
    """One virtualenv: its interpreter, its scripts, and what it was built with."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.path = root / name
        self.log = root / f"{name}.log"

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def script(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def ensure(self, base_python: str, requirements: list, extra_stamp: object = None) -> bool:
        """Build the venv with ``requirements`` unless it already was; True if (re)built."""
        stamp = {
            "python": base_python,
            "requirements": requirements,
            "extra": extra_stamp,
        }
        stamp_file = self.path / STAMP
        if stamp_file.is_file() and Path(self.python).exists():
            try:
                if json.loads(stamp_file.read_text()) == stamp:
                    return False
            except ValueError:
                pass
        shutil.rmtree(self.path, ignore_errors=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self._run([base_python, "-m", "venv", str(self.path)])
        self.pip("install", *requirements)
        stamp_file.write_text(json.dumps(stamp))
        return True

    def pip(self, *args: str) -> None:
        self._run([self.python, "-m", "pip", "--disable-pip-version-check", *args])

    def versions(self, *dists: str) -> dict:
        done = subprocess.run(
            [self.python, "-c", _VERSIONS, *dists], capture_output=True, text=True, check=True
        )
        return json.loads(done.stdout)

    def _run(self, command: list) -> None:
        sys.stderr.write(f"  [{self.name}] {' '.join(command[1:])}\n")
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        if done.returncode != 0:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
            raise BenchSetupError(f"building venv {self.name} failed; see {self.log}:\n{tail}")
