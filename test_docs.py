"""The repository stands on its own: every document a file refers to is in it.

A clone (or the sdist) is all a contributor has, so no file may cite a document outside
the repository, every relative Markdown link must reach a file and a heading, and every section of
``docs/`` that a comment cites (``docs/FILE.md`` with ``#`` and the heading's anchor)
must exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# Documents that lived outside the repository, spelled in pieces so that this file does
# not name them itself.
OUTSIDE_DOCUMENTS = ("PROTOCOLS" + ".md", "DESIGN" + ".md", "../" + "shared", "/work/" + "shared")
SKIPPED_DIRS = {"build", "dist", "__pycache__", "node_modules"}
GIT = shutil.which("git")  # found now: the tests' isolated PATH has no git
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
DOCS_CITATION = re.compile(r"\b(docs/[\w.-]+\.md)#([a-z0-9_-]+)")  # anchors are lower case


def repository_files() -> list:
    """The files of this checkout: git's list in a clone, else every file (an sdist)."""
    if GIT and (ROOT / ".git").exists():
        done = subprocess.run(
            [GIT, "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0:
            return [ROOT / name for name in done.stdout.split("\0") if name]
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        found.extend(Path(folder) / name for name in files)
    return found


def _skipped(folder: str) -> bool:
    return folder.startswith(".") or folder in SKIPPED_DIRS or folder.endswith(".egg-info")


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary or missing file."""
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None


def markdown_files() -> list:
    return [path for path in repository_files() if path.suffix == ".md"]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    """Every heading anchor of a Markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict = {}
    result = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", path.read_text()), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_target(source: Path, target: str) -> str | None:
    """Why a relative link from source does not resolve, or None when it does."""
    name, _, anchor = target.partition("#")
    destination = (source.parent / name).resolve() if name else source
    if not destination.exists():
        return "no such file"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
        return f"no heading #{anchor} in {destination.relative_to(ROOT)}"
    return None


def test_slug_is_githubs_anchor_for_a_heading():
    assert slug("TLS: which certificates are trusted") == "tls-which-certificates-are-trusted"
    assert slug("netrc (Docker builds, pixi, requests, Bazel)") == (
        "netrc-docker-builds-pixi-requests-bazel"
    )
    assert slug("A `keyring` for pip and uv") == "a-keyring-for-pip-and-uv"
    assert slug("Moving from keyrings.google-artifactregistry-auth") == (
        "moving-from-keyringsgoogle-artifactregistry-auth"
    )


def test_no_file_mentions_a_document_the_repository_does_not_have():
    mentions = [
        (str(path.relative_to(ROOT)), number, name)
        for path in repository_files()
        for number, line in enumerate((text_of(path) or "").splitlines(), 1)
        for name in OUTSIDE_DOCUMENTS
        if name in line
    ]
    assert mentions == []


@pytest.mark.parametrize("document", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_a_document_reaches_a_file_and_a_heading(document):
    links = MARKDOWN_LINK.findall(FENCE.sub("", document.read_text()))
    relative = [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]
    broken = [(link, broken_target(document, link)) for link in relative]
    assert [entry for entry in broken if entry[1]] == []


def test_every_docs_section_a_file_cites_exists():
    cited = {
        (str(path.relative_to(ROOT)), f"{name}#{anchor}")
        for path in repository_files()
        for name, anchor in DOCS_CITATION.findall(text_of(path) or "")
    }
    assert cited, "the code cites docs/protocols.md"
    broken = sorted(
        (source, target) for source, target in cited if broken_target(ROOT / "README.md", target)
    )
    assert broken == []
