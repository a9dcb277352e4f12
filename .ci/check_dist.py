"""Check the release files: the wheel holds the module and its metadata and nothing else;
the sdist holds every file of the repository, so that ./run-tests runs from it.

Usage: python .ci/check_dist.py DIST_DIR (with one .whl and one .tar.gz in it)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "artifactregistry_gauth.py"
# What a wheel's .dist-info holds for a module with console scripts and entry points.
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt", "licenses/LICENSE"}
NOT_IN_SDIST = {".gitignore"}  # git's own, in any folder
EXECUTABLE = {"run-tests"}


def wheel_problems(wheel: Path) -> list:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    version = wheel.name.split("-")[1]
    dist_info = f"artifactregistry_gauth-{version}.dist-info/"
    expected = {MODULE} | {dist_info + name for name in DIST_INFO}
    return [f"{wheel.name}: unexpected {name}" for name in sorted(names - expected)] + [
        f"{wheel.name}: missing {name}" for name in sorted(expected - names)
    ]


def tracked_files() -> set | None:
    """The files git tracks here, or None outside a git checkout (an unpacked sdist)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return None
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return {name for name in listed.stdout.split("\0") if name}


def sdist_problems(sdist: Path) -> list:
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
    problems = [
        f"{sdist.name}: {name} is not executable"
        for name in sorted(EXECUTABLE)
        if name in members and not members[name].mode & 0o100
    ]
    tracked = tracked_files()
    if tracked is None:
        print("check_dist: not a git checkout, the sdist's file list is not compared")
        tracked = set()
    missing = sorted(name for name in tracked - set(members) if Path(name).name not in NOT_IN_SDIST)
    return problems + [f"{sdist.name}: missing {name} (add it to MANIFEST.in)" for name in missing]


def main(dist: Path) -> int:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    problems = wheel_problems(wheel) + sdist_problems(sdist)
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
