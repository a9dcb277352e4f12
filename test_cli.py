"""The command line beyond `token` and `get`: doctor's checks, `netrc`, `credential-helper`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth

ROOT = Path(__file__).resolve().parent
HOST = "us-python.pkg.dev"
INDEX = f"https://{HOST}/proj/repo/simple/"


def run_cli(*args, stdin="", env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "artifactregistry_gauth", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def write_pip_conf(text):
    pip_conf = Path(os.environ["XDG_CONFIG_HOME"]) / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(text)
    return pip_conf


def shown_urls(report):
    return [entry["url"] for entry in report]


# --- doctor: URLs in configuration, their passwords masked --------------------------------------

SECRET = "s3cr3t-Pa55word"  # every password in the table below contains it

MASKING_CASES = [
    (
        "an @ in the password",
        f"https://user:{SECRET}@x@{HOST}/p/r/simple/",
        [f"https://user:***@{HOST}/p/r/simple/"],
    ),
    (
        "a colon and an @ in the password",
        f"https://user:a:{SECRET}@b@{HOST}/p/r/simple/",
        [f"https://user:***@{HOST}/p/r/simple/"],
    ),
    (
        "two URLs on one line",
        f"https://oauth2accesstoken@{HOST}/p/r/simple/ "
        f"https://_json_key_base64:{SECRET}@europe-python.pkg.dev/p/r/simple/",
        [
            f"https://oauth2accesstoken@{HOST}/p/r/simple/",
            "https://_json_key_base64:***@europe-python.pkg.dev/p/r/simple/",
        ],
    ),
    (
        "two URLs with only a comma between them",
        f"https://a:{SECRET}1@{HOST}/p/r/simple/,https://b:{SECRET}2@{HOST}/q/r/simple/",
        [f"https://a:***@{HOST}/p/r/simple/", f"https://b:***@{HOST}/q/r/simple/"],
    ),
    (
        "//oauth2accesstoken@ elsewhere in the string",
        f"https://u:{SECRET}@{HOST}/p/r/simple/?next=//oauth2accesstoken@{HOST}/",
        [f"https://u:***@{HOST}/p/r/simple/"],
    ),
    (
        "//oauth2accesstoken@ in another URL on the line",
        f"https://oauth2accesstoken@{HOST}/a/ https://u:{SECRET}@{HOST}/p/r/simple/",
        [f"https://oauth2accesstoken@{HOST}/a/", f"https://u:***@{HOST}/p/r/simple/"],
    ),
    (
        "a password for another host, then ours",
        f"https://u:{SECRET}@mirror.example/?x=https://{HOST}/p/r/simple/",
        [f"https://{HOST}/p/r/simple/"],
    ),
    (
        "upper-case scheme and host",
        f"HTTPS://U:{SECRET}@US-PYTHON.PKG.DEV/p/r/simple/",
        ["https://U:***@US-PYTHON.PKG.DEV/p/r/simple/"],
    ),
    (
        "a password-looking query is not shown",
        f"https://{HOST}/p/r/simple/?token={SECRET}",
        [f"https://{HOST}/p/r/simple/"],
    ),
    (
        "an empty password",
        f"https://u:@{HOST}/p/r/simple/",
        [f"https://u:***@{HOST}/p/r/simple/"],
    ),
]


@pytest.mark.parametrize(
    ("line", "shown"), [c[1:] for c in MASKING_CASES], ids=[c[0] for c in MASKING_CASES]
)
def test_doctor_masks_every_password_in_configured_urls(line, shown):
    write_pip_conf(f"[global]\nextra-index-url = {line}\n")
    report = gauth._index_url_report()
    assert shown_urls(report) == shown
    assert SECRET not in json.dumps(report)
    assert "x@" not in json.dumps(report)


def test_doctor_masks_passwords_in_environment_urls(monkeypatch):
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"{INDEX} https://u:{SECRET}@x@{HOST}/p/r/simple/")
    report = gauth._index_url_report()
    assert shown_urls(report) == [INDEX, f"https://u:***@{HOST}/p/r/simple/"]
    assert SECRET not in json.dumps(report)


def crafted_pyproject(repeats=8000):
    """56 KB that took the old pattern 4-6 s: many URL starts and no pkg.dev after them."""
    return f'x = "https://u:{SECRET}@{HOST}/p/r/simple/ ' + "http://" * repeats + '"\n'


def test_doctor_scans_a_crafted_pyproject_in_linear_work(monkeypatch, tmp_path):
    text = crafted_pyproject()
    assert len(text) > 56_000
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert shown_urls(gauth._index_url_report()) == [f"https://u:***@{HOST}/p/r/simple/"]
    # The work: every character of the text belongs to at most one URL candidate, and each
    # candidate is split once (the pattern has no nested repetition: linear by construction).
    candidates = gauth._urls_in(text)
    assert sum(len(url) for url in candidates) <= len(text)
    assert len(candidates) == 8001


def test_doctor_reads_a_config_file_up_to_its_size_bound(monkeypatch, tmp_path):
    padding = "#" * gauth.MAX_CONFIG_BYTES + "\n"
    (tmp_path / "uv.toml").write_text(f'{padding}[[index]]\nurl = "{INDEX}"\n')
    monkeypatch.chdir(tmp_path)
    assert gauth._index_url_report() == []


def test_doctor_skips_a_fifo_named_like_a_config_file(monkeypatch, tmp_path):
    os.mkfifo(tmp_path / "pyproject.toml")
    monkeypatch.chdir(tmp_path)
    assert gauth._index_url_report() == []


def test_doctor_reports_a_bounded_number_of_urls(monkeypatch):
    many = " ".join(f"https://{HOST}/p/r{i}/simple/" for i in range(500))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", many)
    assert len(gauth._index_url_report()) == gauth.MAX_REPORTED_URLS
