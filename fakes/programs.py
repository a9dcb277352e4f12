"""Programs the tests write (fake gcloud, subject-token executables, helpers), on any OS.

`write_program` turns Python source into something the module under test can run by path
or find on PATH, the way the real thing is installed there:

- POSIX: one file starting with ``#!`` and this interpreter, mode 0o755.
- Windows: no ``#!`` and no execute bit. The source goes into ``NAME.py`` and a batch file
  ``NAME.cmd`` runs it with this interpreter, as the Windows Cloud SDK's ``gcloud.cmd``
  runs its bundled Python. ``shutil.which`` finds ``NAME`` as ``NAME.cmd`` through PATHEXT,
  and CreateProcess runs a ``.cmd`` through ``cmd.exe /c``.

`program_path` is the path a caller gives to run it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fakes import WINDOWS


def program_path(path) -> Path:
    """The file that runs the program written at `path` (``NAME.cmd`` on Windows)."""
    path = Path(path)
    return path.with_name(path.name + ".cmd") if WINDOWS else path


def write_program(path, source: str, python: str = sys.executable) -> Path:
    """Write Python `source` as a program at `path`; return the path that runs it."""
    path = Path(path)
    if not WINDOWS:
        path.write_text(f"#!{python}\n{source}")
        path.chmod(0o755)
        return path
    script = path.with_name(path.name + ".py")
    script.write_text(source)
    launcher = program_path(path)
    # %~dp0 is the batch file's own directory; %* passes the arguments on as given. "@" keeps
    # cmd.exe from echoing the line into the program's output. The exit status is python's.
    launcher.write_bytes(f'@"{python}" "%~dp0{script.name}" %*\r\n'.encode())
    return launcher


def write_shell_program(path, posix: str, windows: str) -> Path:
    """Write a tiny program from shell text: `posix` for /bin/sh, `windows` for cmd.exe."""
    path = Path(path)
    if not WINDOWS:
        path.write_text(f"#!/bin/sh\n{posix}")
        path.chmod(0o755)
        return path
    launcher = program_path(path)
    launcher.write_bytes(("@echo off\r\n" + windows.replace("\n", "\r\n")).encode())
    return launcher
