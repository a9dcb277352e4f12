"""What TLS trusts: every store the user's tools trust, and pip's configuration read as pip does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth

REAL_PREFIX = sys.prefix


def real_pip_26_3():
    """pip 26.3 itself, run from the wheel virtualenv embeds (a test dependency, via nox)."""
    try:
        import virtualenv.seed.wheels.embed as embed
    except ImportError:
        return None
    wheels = sorted(Path(embed.__file__).parent.glob("pip-26.3-*.whl"))
    return [sys.executable, str(wheels[0] / "pip")] if wheels else None


@pytest.fixture(autouse=True)
def no_pip_settings(monkeypatch, tmp_path):
    """No PIP_* variable and no system-wide pip file of this machine reaches a test."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    system = tmp_path / "system"
    monkeypatch.setattr(gauth, "PIP_UNIX_SYSTEM_DIR", str(system / "etc"))
    monkeypatch.setattr(gauth, "PIP_UNIX_XDG_DIR", str(system / "etc" / "xdg"))
    monkeypatch.setattr(gauth, "PIP_MACOS_SYSTEM_DIR", str(system / "Library"))
    monkeypatch.delenv("XDG_CONFIG_DIRS", raising=False)
    monkeypatch.delenv("XDG_DATA_DIRS", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))


# --- pip's configuration files, in pip 26.3's order on each OS -------------------------------


def _places(platform: str, home: Path, tmp_path: Path) -> list:
    """(label, file) for each of pip's places on ``platform``, in the order pip loads them."""
    system = tmp_path / "system"
    venv = tmp_path / "venv"
    if platform == "win32":
        return [
            ("ProgramData", tmp_path / "ProgramData" / "pip" / "pip.ini"),
            ("legacy-user", home / "pip" / "pip.ini"),
            ("APPDATA", home / "AppData" / "Roaming" / "pip" / "pip.ini"),
            ("venv", venv / "pip.ini"),
            ("PIP_CONFIG_FILE", tmp_path / "named.ini"),
        ]
    if platform == "darwin":
        return [
            ("Library", system / "Library" / "pip" / "pip.conf"),
            ("legacy-user", home / ".pip" / "pip.conf"),
            ("Application-Support", home / "Library" / "Application Support" / "pip" / "pip.conf"),
            ("venv", venv / "pip.conf"),
            ("PIP_CONFIG_FILE", tmp_path / "named.conf"),
        ]
    return [
        ("etc-xdg", system / "etc" / "xdg" / "pip" / "pip.conf"),
        ("etc", system / "etc" / "pip.conf"),
        ("legacy-user", home / ".pip" / "pip.conf"),
        ("xdg-config-home", home / ".config" / "pip" / "pip.conf"),
        ("venv", venv / "pip.conf"),
        ("PIP_CONFIG_FILE", tmp_path / "named.conf"),
    ]


@pytest.fixture
def pip_places(monkeypatch, tmp_path, home_dir, request):
    """pip's places on the simulated platform (request.param), with its variables set."""
    platform = request.param
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("USERPROFILE", str(home_dir))  # what ~ is on Windows
    monkeypatch.setenv("ALLUSERSPROFILE", str(tmp_path / "ProgramData"))
    if platform == "darwin":
        monkeypatch.delenv("XDG_DATA_HOME")  # else pip looks there, not in ~/Library
    places = _places(platform, home_dir, tmp_path)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(places[-1][1]))
    return places


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PLATFORMS = ["linux", "darwin", "win32"]
USER_PLACES = ("legacy-user", "APPDATA", "Application-Support", "xdg-config-home")
PLACE_ROWS = [
    pytest.param(platform, index, id=f"{platform}-{label}")
    for platform in PLATFORMS
    for index, (label, _) in enumerate(_places(platform, Path("~"), Path("/")))
]


@pytest.mark.parametrize(("pip_places", "index"), PLACE_ROWS, indirect=["pip_places"])
def test_pip_config_files_are_read_in_pips_order_the_later_winning(pip_places, index):
    if pip_places[index][0] != "PIP_CONFIG_FILE":
        os.environ.pop("PIP_CONFIG_FILE")  # a named file that exists hides the user's files
    for label, path in pip_places[: index + 1]:
        _write(path, f"[global]\ncert = {label}\n")
    label, path = pip_places[index]
    assert gauth.pip_option("cert") == (label, f"global.cert in {path}")
    existing = [f for f in gauth.pip_config_files() if os.path.exists(f)]
    hidden = USER_PLACES if label == "PIP_CONFIG_FILE" else ()  # a named file hides them
    assert existing == [str(p) for name, p in pip_places[: index + 1] if name not in hidden]


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_an_install_section_anywhere_beats_a_global_one_anywhere(pip_places):
    first, last = pip_places[0][1], pip_places[-1][1]
    _write(first, "[install]\ncert = system-install\n")
    _write(last, "[global]\ncert = named-global\n")
    assert gauth.pip_option("cert") == ("system-install", f"install.cert in {first}")


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_pip_cert_beats_every_file(monkeypatch, pip_places):
    _write(pip_places[-1][1], "[install]\ncert = named\n")
    monkeypatch.setenv("PIP_CERT", "/from/the/variable.pem")
    assert gauth.pip_option("cert") == ("/from/the/variable.pem", "$PIP_CERT")


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_an_existing_pip_config_file_hides_the_users_files(pip_places):
    for _, path in pip_places[:-1]:
        _write(path, "[global]\ncert = user\n")
    _write(pip_places[-1][1], "[global]\ntimeout = 5\n")
    users = [str(p) for label, p in pip_places if label in ("legacy-user", "APPDATA")]
    assert not set(users) & set(gauth.pip_config_files())
    assert gauth.pip_option("cert")[0] == "user"  # from the venv's file, still read


@pytest.mark.parametrize("pip_places", PLATFORMS, indirect=True)
def test_pip_config_file_set_to_devnull_reads_no_file(monkeypatch, pip_places):
    for _, path in pip_places:
        _write(path, "[global]\ncert = somewhere\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    assert gauth.pip_config_files() == []
    assert gauth.pip_option("cert") == ("", "")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[global]\nCERT = upper\n", "upper"),
        ("[global]\n--cert = dashes\n", "dashes"),
        ("[global]\nkeyring_provider = x\ncert = a\n", "a"),
        ("[global]\ncert =\n", ""),
        ("[global]\ncert = %(home)s/ca.pem\n", "%(home)s/ca.pem"),
        ("[install\ncert = broken\n", ""),
        ("[global]\ncert = a\n[global]\ncert = b\n", ""),
        ("cert = no section\n", ""),
    ],
    ids=[
        "upper",
        "dashes",
        "underscores",
        "empty",
        "no-interpolation",
        "bad-header",
        "dup",
        "bare",
    ],
)
def test_pip_files_are_parsed_as_pip_parses_them(home_dir, text, value):
    _write(home_dir / ".config" / "pip" / "pip.conf", text)
    assert gauth.pip_option("cert")[0] == value


@pytest.mark.parametrize(
    "place", ["ProgramData", "legacy-user", "APPDATA", "venv", "PIP_CONFIG_FILE"]
)
@pytest.mark.parametrize("pip_places", ["win32"], indirect=True)
def test_doctor_reads_pips_windows_files(pip_places, place):
    path = dict(pip_places)[place]
    if place != "PIP_CONFIG_FILE":
        os.environ.pop("PIP_CONFIG_FILE")
    _write(path, "[global]\nno-input = yes\nkeyring-provider = subprocess\n")
    assert gauth._pip_setting("no-input", "") == "yes"
    assert gauth._pip_setting("keyring-provider", "auto") == "subprocess"


def test_doctor_takes_pips_last_file_not_its_first(home_dir, tmp_path):
    _write(home_dir / ".config" / "pip" / "pip.conf", "[global]\nkeyring-provider = import\n")
    _write(tmp_path / "venv" / "pip.conf", "[global]\nkeyring-provider = subprocess\n")
    assert gauth._pip_setting("keyring-provider", "auto") == "subprocess"  # the venv's wins


def _files_pip_loads(output: str) -> list:
    """The files `pip config debug` lists, in the order pip loads them (global, user, site, env)."""
    variants: dict = {}
    current = None
    for line in output.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            current = variants.setdefault(line[:-1], [])
        elif line.startswith("  ") and not line.startswith("   ") and ", exists:" in line:
            current.append(line.strip().rsplit(", exists:", 1)[0])
    return [f for name in ("global", "user", "site", "env") for f in variants.get(name, [])]


@pytest.mark.skipif(sys.platform != "linux", reason="real pip reads the files of its own OS")
@pytest.mark.skipif(real_pip_26_3() is None, reason="no pip 26.3 wheel (virtualenv) installed")
@pytest.mark.parametrize("named", ["unset", "missing", "existing"])
def test_pip_config_files_match_real_pip_26_3(monkeypatch, tmp_path, named):
    monkeypatch.setattr(gauth, "PIP_UNIX_SYSTEM_DIR", "/etc")  # what real pip reads
    monkeypatch.setattr(gauth, "PIP_UNIX_XDG_DIR", "/etc/xdg")
    monkeypatch.setattr(sys, "prefix", REAL_PREFIX)
    monkeypatch.setenv("XDG_CONFIG_DIRS", f"{tmp_path / 'one'}:relative/ignored:{tmp_path / 'two'}")
    if named != "unset":
        monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "named.conf"))
    if named == "existing":
        _write(tmp_path / "named.conf", "[global]\ntimeout = 5\n")
    done = subprocess.run(
        [*real_pip_26_3(), "config", "debug"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert gauth.pip_config_files() == _files_pip_loads(done.stdout)
