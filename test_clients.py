"""Real clients end to end against a fake Artifact Registry: pip, uv, twine, poetry, tox,
pdm, hatch, pipenv, pip-tools, pipx, keyring, and the CI and container recipes of
docs/ci-and-containers.md.

Every tool runs as a subprocess from its own virtualenv (built once per session with uv)
and reaches `https://us-python.pkg.dev/...` through a loopback CONNECT proxy that knows
only the fake hosts. Credentials are a service-account key whose token_uri is the
loopback fake Google token endpoint; the metadata server is a refused loopback port.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fakes import register_secret
from fakes.google import IAM_HOST, STS_HOST
from fakes.network import RoutingProxy
from fakes.registry import FakeRegistry, build_wheel

pytestmark = pytest.mark.clients

ROOT = Path(__file__).resolve().parent
AR_HOST = "us-python.pkg.dev"
INDEX = f"https://{AR_HOST}/proj/repo/simple/"
INDEX_WITH_USER = f"https://oauth2accesstoken@{AR_HOST}/proj/repo/simple/"
UPLOAD_URL = f"https://{AR_HOST}/proj/uploads/"
MIRROR_HOST = "mirror.example.test"  # not Artifact Registry: must never see a Google token
MIRROR_INDEX = f"https://{MIRROR_HOST}/simple/"
PROXY_HOST = "pypi.corp.test"  # a proxy in front of Artifact Registry: ARTIFACTREGISTRY_GAUTH_HOSTS
PROXY_INDEX = f"https://{PROXY_HOST}/ar/simple/"
TLS_NAMES = (AR_HOST, MIRROR_HOST, PROXY_HOST)
GOOGLE_TOKEN_HOST = "oauth2.googleapis.com"  # where user credentials are refreshed
PRIVATE_WHEELS = {"gauth_demo_app-1.0.0-py3-none-any.whl", "gauth_demo_lib-1.0.0-py3-none-any.whl"}

# The versions under test, installed once per session. Bump them here.
PIP = "pip==26.3"
PIP_BEFORE_26_2 = "pip==26.1.2"  # its subprocess provider needs the username in the URL
KEYRING_25 = "keyring==25.7.0"
KEYRING_24 = "keyring==24.3.1"  # no --mode creds: pip 26.2+ and uv without a username can't use it
UV = "uv==0.13.9"
TWINE = "twine==7.0.0"
POETRY = "poetry==2.5.1"
TOX = "tox==4.67.15"
PDM = "pdm==2.29.4"
HISHEL_1 = "hishel==1.4.0"  # pdm 2.29.4 needs it: hishel 2 has no SyncSqliteStorage
HATCH = "hatch==1.18.2"
PIPENV = "pipenv==2026.10.3"
PIP_TOOLS = "pip-tools==7.6.2"
PIPX = "pipx==1.18.4"
OURS = "artifactregistry-gauth"  # replaced by the wheel built from this checkout
VENVS = {
    "keyring25": [PIP, KEYRING_25, OURS],  # pip's import provider; the `keyring` put on PATH
    "keyring24": [KEYRING_24, OURS],
    "pip": [PIP],  # pip alone: subprocess provider
    "pip_old": [PIP_BEFORE_26_2],
    "uv": [UV],
    "twine": [TWINE, OURS],
    "poetry": [POETRY, OURS],
    "tox": [TOX, OURS],
    "tox_bare": [TOX],  # `requires = artifactregistry-gauth` makes it provision .tox/.tox
    "pdm": [PDM, HISHEL_1, KEYRING_25, OURS],  # `pdm self add keyring artifactregistry-gauth`
    "pdm_bare": [PDM, HISHEL_1],  # no keyring module: unearth runs the `keyring` on PATH
    "hatch": [HATCH, OURS],  # hatch depends on keyring
    "pipenv": [PIPENV],
    "pip_tools": [PIP_TOOLS, PIP, KEYRING_25, OURS],
    "pipx": [PIPX],
    "vendored": [PIP, KEYRING_25],  # keyring only; our single file comes through keyringrc.cfg
    "no_keyring": ["--no-deps", OURS],  # our command alone, linked as `keyring`
}
# Clients get no system directory that holds a real gcloud: our fallback must not find one.
SYSTEM_PATH = [
    d
    for d in ("/usr/local/bin", "/usr/bin", "/bin")
    if os.path.isdir(d)
    and not any(os.path.exists(os.path.join(d, g)) for g in ("gcloud", "gcloud.cmd"))
]
BIN = "bin"  # these tests run on POSIX


# --- tools, built once per session ----------------------------------------------------------


@dataclass(frozen=True)
class Toolbox:
    """The session's virtualenvs, our wheel and the demo wheels the fake registry serves."""

    venvs: dict
    project_wheel: Path
    wheels: dict  # "lib", "app", "public", "cli" -> Path
    wheelhouse: Path  # tox, us and what we both need (and pip): what "PyPI" serves

    def bin(self, venv: str) -> Path:
        return self.venvs[venv] / BIN

    def python(self, venv: str) -> Path:
        return self.bin(venv) / "python"

    def exe(self, venv: str, name: str) -> Path:
        return self.bin(venv) / name


def _installer() -> str:
    """The uv that builds the session's virtualenvs (from the test extra)."""
    from uv import find_uv_bin

    return find_uv_bin()


def _build_our_wheel(uv: str, workdir: Path) -> Path:
    """Build artifactregistry-gauth from a copy of this checkout (no build/ in the tree)."""
    source = workdir / "src"
    source.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copy2(ROOT / "artifactregistry_gauth.py", source / "artifactregistry_gauth.py")
    dist = workdir / "dist"
    check(
        subprocess.run(
            [uv, "build", "--wheel", "--quiet", "--out-dir", str(dist), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    (wheel,) = dist.glob("artifactregistry_gauth-*.whl")
    return wheel


def _download_wheelhouse(directory: Path, requirements: list) -> None:
    """The wheels of requirements and everything they need, for the fake mirror to serve."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    check(
        subprocess.run(
            [*command, "--dest", str(directory), *requirements],
            capture_output=True,
            text=True,
            timeout=600,
        )
    )


def _make_venv(uv: str, path: Path, requirements: list) -> None:
    """A fresh virtualenv holding exactly `requirements` (and what they need)."""
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(path)],
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--compile-bytecode",
            "--python",
            str(path / BIN / "python"),
            *requirements,
        ],
    ):
        check(subprocess.run(command, capture_output=True, text=True, timeout=600))


@pytest.fixture(scope="session")
def toolbox(tmp_path_factory):
    """Every tool in its own virtualenv, installed in parallel once per session."""
    needs = {PIP: (3, 10), TOX: (3, 11)}  # their requires-python
    unmet = [f"{pin} needs {v[0]}.{v[1]}+" for pin, v in needs.items() if sys.version_info < v]
    if unmet:
        pytest.skip("the pinned clients need a newer Python: " + ", ".join(unmet))
    workdir = tmp_path_factory.mktemp("clients")
    uv = _installer()
    project_wheel = _build_our_wheel(uv, workdir)
    venvs = {name: workdir / "venvs" / name for name in VENVS}
    wheelhouse = workdir / "wheelhouse"
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(VENVS) + 1) as pool:
        jobs = [
            pool.submit(
                _make_venv,
                uv,
                venvs[name],
                [str(project_wheel) if r == OURS else r for r in requirements],
            )
            for name, requirements in VENVS.items()
        ]
        jobs.append(pool.submit(_download_wheelhouse, wheelhouse, [TOX, PIP, str(project_wheel)]))
        for job in jobs:
            job.result()
    wheels = workdir / "wheels"
    wheels.mkdir()
    return Toolbox(
        venvs=venvs,
        project_wheel=project_wheel,
        wheels={
            "lib": build_wheel(wheels, "gauth-demo-lib", "1.0.0"),
            "app": build_wheel(wheels, "gauth-demo-app", "1.0.0", ("gauth-demo-lib>=1.0",)),
            "public": build_wheel(wheels, "gauth-demo-public", "2.0.0"),
            "cli": build_wheel(
                wheels,
                "gauth-demo-cli",
                "1.0.0",
                ("gauth-demo-lib>=1.0",),
                source="import gauth_demo_lib\n\ndef main():\n    print(gauth_demo_lib.hello())\n",
                console_scripts=("gauth-demo = gauth_demo_cli:main",),
            ),
        },
        wheelhouse=wheelhouse,
    )


# --- the fake registry, per test ------------------------------------------------------------


@pytest.fixture(scope="session")
def registry_tls_context(test_ca):
    """A server TLS context whose test-CA certificate covers the registry and mirror names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    test_ca.issue_cert(*TLS_NAMES).configure_cert(context)
    return context


@pytest.fixture
def registry(toolbox, fake_google, registry_tls_context):
    """us-python.pkg.dev/proj/repo (lib, app), .../proj/uploads (empty), an open mirror,
    and pypi.corp.test/ar (lib, app) standing for a proxy in front of Artifact Registry."""
    fake = FakeRegistry(registry_tls_context, fake_google)
    for host, path in ((AR_HOST, "proj/repo"), (PROXY_HOST, "ar")):
        repo = fake.repository(host, path)
        repo.add_file(toolbox.wheels["lib"])
        repo.add_file(toolbox.wheels["app"])
    fake.repository(AR_HOST, "proj/uploads")
    fake.mirror(MIRROR_HOST).add_file(toolbox.wheels["public"])
    fake.start()
    yield fake
    fake.stop()
    # Whatever the test checked, a Google token must never reach a host that is not ours.
    leaked = [r for r in fake.requests if r.carried_google_token and r.host not in fake.registries]
    assert leaked == [], "a Google token was sent to a host that is not Artifact Registry"


@pytest.fixture
def proxy(registry, fake_google, google_tls_context):
    """HTTPS_PROXY for the clients: the fake hosts go to the fake registry, Google's token
    endpoint to the fake Google, and nothing else goes anywhere."""
    routes = {host: registry.port for host in TLS_NAMES}
    routes[GOOGLE_TOKEN_HOST] = fake_google.serve(google_tls_context).port
    server = RoutingProxy(routes).start()
    yield server
    server.stop()
    assert server.rejected == [], f"a client tried to leave loopback: {server.rejected}"


@pytest.fixture
def client_env(isolated_env, sa_file, proxy, test_ca_file, tmp_path):
    """The whole environment of a client process: loopback only, a service-account key."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    passed = (
        "HOME",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "CLOUDSDK_CONFIG",
        "ARTIFACTREGISTRY_GAUTH_CACHE_DIR",
        "GCE_METADATA_HOST",  # a refused loopback port (isolated_env)
        "GCE_METADATA_IP",
    )
    env = {name: os.environ[name] for name in passed}
    env.update(
        PATH=os.pathsep.join([str(isolated_env.bin_dir), *SYSTEM_PATH]),
        LANG="C.UTF-8",
        TMPDIR=str(temp),
        PYTHONDONTWRITEBYTECODE="1",
        GOOGLE_APPLICATION_CREDENTIALS=str(sa_file()),
        HTTPS_PROXY=proxy.url,
        https_proxy=proxy.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        SSL_CERT_FILE=str(test_ca_file),
        REQUESTS_CA_BUNDLE=str(test_ca_file),
        PIP_CERT=str(test_ca_file),
        PIP_CONFIG_FILE=os.devnull,  # nothing from this machine's pip.conf
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_NO_PROGRESS="1",
        UV_PYTHON_DOWNLOADS="never",
        VIRTUALENV_NO_PERIODIC_UPDATE="1",
    )
    return env


def on_path(env: dict, *directories: Path) -> dict:
    """A copy of env with directories in front of PATH."""
    return {**env, "PATH": os.pathsep.join([*map(str, directories), env["PATH"]])}


def run(command, env, cwd=None, timeout=180):
    """Run a client with no stdin, by default in the test's empty TMPDIR (not this checkout,
    which `python -m` would put on sys.path); return the completed process."""
    return subprocess.run(
        [str(part) for part in command],
        env=env,
        cwd=cwd or env["TMPDIR"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check(result):
    """Fail with the command's output unless it exited 0."""
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result


def modules_in(target: Path) -> set:
    """The importable top-level packages in an install --target directory."""
    return {
        entry.name
        for entry in target.iterdir()
        if entry.is_dir() and not entry.name.endswith(".dist-info") and entry.name != "bin"
    }


def token_fetches(fake_google) -> int:
    return len(fake_google.token_requests)


def assert_private_install(registry, target, host=AR_HOST):
    """Both private wheels were downloaded with a live token and installed."""
    assert modules_in(target) == {"gauth_demo_app", "gauth_demo_lib"}
    assert set(registry.served_files(host)) == PRIVATE_WHEELS
    served = [r for r in registry.requests_to(host) if r.status == 200]
    assert served and all(r.authenticated for r in served)


@pytest.fixture
def dist(tmp_path):
    """A dist/ folder with one wheel to upload."""
    folder = tmp_path / "dist"
    folder.mkdir()
    return build_wheel(folder, "gauth-demo-upload", "0.1.0")


def upload_project(tmp_path):
    """A project folder named gauth-demo-upload with its wheel already in dist/."""
    project = tmp_path / "gauth-demo-upload"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "gauth-demo-upload"\nversion = "0.1.0"\n'
    )
    (project / "dist").mkdir()
    return project, build_wheel(project / "dist", "gauth-demo-upload", "0.1.0")


def assert_uploaded(registry, wheel):
    """The wheel reached .../proj/uploads/ in a POST that carried a live token."""
    assert [(u.repository, u.filename) for u in registry.uploads] == [("proj/uploads", wheel.name)]
    posts = [r for r in registry.requests_to(AR_HOST) if r.method == "POST"]
    assert posts and posts[-1].authenticated and posts[-1].status == 200


# --- pip ----------------------------------------------------------------------------------------


def pip_install(toolbox, venv, env, target, provider, index, *args):
    """`pip install --target` with no prompts, a keyring provider and an index URL."""
    pip = [toolbox.python(venv), "-m", "pip", "install", "--no-input", "--target", target]
    return run([*pip, "--keyring-provider", provider, "--index-url", index, *args], env)


@pytest.mark.parametrize(
    ("venv", "provider", "index"),
    [
        ("keyring25", "import", INDEX),
        ("keyring25", "import", INDEX_WITH_USER),
        ("pip", "subprocess", INDEX),
        ("pip", "subprocess", INDEX_WITH_USER),
        ("pip_old", "subprocess", INDEX_WITH_USER),
    ],
    ids=[
        "import",
        "import-username-in-url",
        "subprocess",
        "subprocess-username-in-url",
        "subprocess-pip-26.1-username-in-url",
    ],
)
def test_pip_installs_a_private_package_and_its_dependency(
    toolbox, registry, fake_google, client_env, tmp_path, venv, provider, index
):
    env = on_path(client_env, toolbox.bin("keyring25"))  # the `keyring` a pipx user has
    result = pip_install(toolbox, venv, env, tmp_path / "t", provider, index, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_pip_before_26_2_needs_the_username_in_the_url(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = on_path(client_env, toolbox.bin("keyring25"))
    result = pip_install(
        toolbox, "pip_old", env, tmp_path / "t", "subprocess", INDEX, "gauth-demo-app"
    )
    assert result.returncode != 0
    assert "No matching distribution found for gauth-demo-app" in result.stderr
    seen = registry.requests_to(AR_HOST)
    assert seen and {(r.username, r.status) for r in seen} == {(None, 401)}
    assert token_fetches(fake_google) == 0


def test_pip_extra_index_url_sends_the_token_only_to_artifact_registry(
    toolbox, registry, fake_google, client_env, tmp_path
):
    result = pip_install(
        toolbox,
        "keyring25",
        client_env,
        tmp_path / "t",
        "import",
        MIRROR_INDEX,
        "--extra-index-url",
        INDEX,
        "gauth-demo-app",
        "gauth-demo-public",
    )
    check(result)
    assert modules_in(tmp_path / "t") == {"gauth_demo_app", "gauth_demo_lib", "gauth_demo_public"}
    mirror = registry.requests_to(MIRROR_HOST)
    assert registry.served_files(MIRROR_HOST) == ["gauth_demo_public-2.0.0-py3-none-any.whl"]
    assert [r for r in mirror if r.username is not None or r.carried_google_token] == []
    assert token_fetches(fake_google) == 1


def test_pip_authenticates_to_a_host_named_in_artifactregistry_gauth_hosts(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = {**client_env, "ARTIFACTREGISTRY_GAUTH_HOSTS": "*.corp.test"}
    result = pip_install(
        toolbox, "keyring25", env, tmp_path / "t", "import", PROXY_INDEX, "gauth-demo-app"
    )
    check(result)
    assert_private_install(registry, tmp_path / "t", host=PROXY_HOST)
    assert token_fetches(fake_google) == 1


def test_pip_with_gcloud_application_default_login(
    toolbox, registry, fake_google, client_env, proxy, user_file, tmp_path
):
    # The usual developer setup: `gcloud auth application-default login` wrote a user
    # credential, refreshed at https://oauth2.googleapis.com/token through HTTPS_PROXY.
    adc = Path(client_env["CLOUDSDK_CONFIG"], "application_default_credentials.json")
    adc.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(user_file(), adc)
    env = {k: v for k, v in client_env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    result = pip_install(
        toolbox, "keyring25", env, tmp_path / "t", "import", INDEX, "gauth-demo-app"
    )
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1
    assert f"{GOOGLE_TOKEN_HOST}:443" in proxy.connects


def test_pip_without_credentials_says_why_in_one_line(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = {k: v for k, v in client_env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    result = pip_install(
        toolbox, "keyring25", env, tmp_path / "t", "import", INDEX, "gauth-demo-app"
    )
    assert result.returncode != 0
    # uv runs `keyring` once for the index URL and once for the host: each run says the
    # same one line (a failure is not remembered across processes, so that a login
    # right after is seen at once).
    ours = [line for line in result.stderr.splitlines() if "artifactregistry-gauth" in line]
    assert 1 <= len(ours) <= 2
    assert len(set(ours)) == 1
    assert "no Google credentials found" in ours[0]
    assert "Traceback" not in result.stderr, result.stderr
    assert ours[0].startswith("WARNING: artifactregistry-gauth: no Google credentials found (")
    assert "Traceback" not in result.stderr


# --- uv -----------------------------------------------------------------------------------------


def uv_pip_install(toolbox, env, target, *args):
    """`uv pip install --target` for the uv venv's interpreter."""
    uv = [toolbox.exe("uv", "uv"), "pip", "install", "--python", toolbox.python("uv")]
    return run([*uv, "--target", target, *args], env)


def test_uv_keyring_subprocess_with_the_username_in_the_url(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = on_path(client_env, toolbox.bin("keyring25"))
    args = ["--keyring-provider", "subprocess", "--index-url", INDEX_WITH_USER]
    result = uv_pip_install(toolbox, env, tmp_path / "t", *args, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_uv_index_with_authenticate_always_needs_no_username(
    toolbox, registry, fake_google, client_env, tmp_path
):
    config = tmp_path / "uv.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            keyring-provider = "subprocess"

            [[index]]
            name = "private"
            url = "{INDEX}"
            default = true
            authenticate = "always"
            """
        )
    )
    env = on_path(client_env, toolbox.bin("keyring25"))
    result = uv_pip_install(toolbox, env, tmp_path / "t", "--config-file", config, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_uv_without_username_or_authenticate_always_never_asks_keyring(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = on_path(client_env, toolbox.bin("keyring25"))
    args = ["--keyring-provider", "subprocess", "--index-url", INDEX]
    result = uv_pip_install(toolbox, env, tmp_path / "t", *args, "gauth-demo-app")
    assert result.returncode != 0
    assert "401 Unauthorized" in result.stderr
    assert token_fetches(fake_google) == 0


def test_uv_without_credentials_says_why_in_one_line(toolbox, registry, client_env, tmp_path):
    env = {k: v for k, v in client_env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env = on_path(env, toolbox.bin("keyring25"))
    args = ["--keyring-provider", "subprocess", "--index-url", INDEX_WITH_USER]
    result = uv_pip_install(toolbox, env, tmp_path / "t", *args, "gauth-demo-app")
    assert result.returncode != 0
    # uv runs `keyring` once for the index URL and once for the host: each run says the
    # same one line (a failure is not remembered across processes, so that a login
    # right after is seen at once).
    ours = [line for line in result.stderr.splitlines() if "artifactregistry-gauth" in line]
    assert 1 <= len(ours) <= 2
    assert len(set(ours)) == 1
    assert "no Google credentials found" in ours[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("password", ["keyring", "token-command"])
def test_uv_named_index_with_the_username_in_the_environment(
    toolbox, registry, fake_google, client_env, tmp_path, password
):
    config = tmp_path / "uv.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [[index]]
            name = "private"
            url = "{INDEX}"
            default = true
            """
        )
    )
    env = {**client_env, "UV_INDEX_PRIVATE_USERNAME": "oauth2accesstoken"}
    if password == "keyring":
        env = on_path({**env, "UV_KEYRING_PROVIDER": "subprocess"}, toolbox.bin("keyring25"))
    else:
        token = check(run([toolbox.exe("keyring25", "artifactregistry-gauth"), "token"], env))
        env["UV_INDEX_PRIVATE_PASSWORD"] = token.stdout.strip()
    result = uv_pip_install(toolbox, env, tmp_path / "t", "--config-file", config, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_uv_publish_takes_the_password_from_keyring(
    toolbox, registry, fake_google, client_env, dist
):
    env = on_path(client_env, toolbox.bin("keyring25"))
    publish = [toolbox.exe("uv", "uv"), "publish", "--publish-url", UPLOAD_URL]
    auth = ["--username", "oauth2accesstoken", "--keyring-provider", "subprocess"]
    check(run([*publish, *auth, dist], env))
    assert_uploaded(registry, dist)
    assert token_fetches(fake_google) == 1


# --- twine --------------------------------------------------------------------------------------


def twine_upload(toolbox, env, *args):
    twine = [toolbox.exe("twine", "twine"), "upload", "--non-interactive", "--disable-progress-bar"]
    return run([*twine, *args], env)


@pytest.mark.parametrize("username", [["-u", "oauth2accesstoken"], []], ids=["u", "no-u"])
def test_twine_uploads_with_the_token_from_keyring(
    toolbox, registry, fake_google, client_env, dist, username
):
    result = twine_upload(toolbox, client_env, "--repository-url", UPLOAD_URL, *username, dist)
    check(result)
    assert_uploaded(registry, dist)
    assert token_fetches(fake_google) == 1


def test_twine_uploads_to_a_pypirc_repository(toolbox, registry, fake_google, client_env, dist):
    Path(client_env["HOME"], ".pypirc").write_text(
        textwrap.dedent(
            f"""\
            [distutils]
            index-servers =
                gar

            [gar]
            repository = {UPLOAD_URL}
            """
        )
    )
    result = twine_upload(toolbox, client_env, "--repository", "gar", dist)
    check(result)
    assert_uploaded(registry, dist)
    assert token_fetches(fake_google) == 1


@pytest.mark.parametrize(
    "repository",
    [
        f"https://{MIRROR_HOST}\\@{AR_HOST}/proj/uploads/",
        f"https://{MIRROR_HOST}\\.pkg.dev/proj/uploads/",
    ],
    ids=["backslash-at", "backslash-dot"],
)
def test_twine_never_sends_a_token_to_the_host_behind_a_backslash(
    toolbox, registry, fake_google, client_env, dist, repository
):
    """requests connects to the name before the backslash: that host must get no token."""
    Path(client_env["HOME"], ".pypirc").write_text(
        f"[distutils]\nindex-servers =\n    gar\n\n[gar]\nrepository = {repository}\n"
    )
    result = twine_upload(toolbox, client_env, "--repository", "gar", dist)
    assert result.returncode != 0
    assert token_fetches(fake_google) == 0  # refused before any I/O
    assert not any(r.carried_google_token for r in registry.requests_to(MIRROR_HOST))
    assert registry.uploads == []


CONSUMER_PROJECT = """\
[project]
name = "consumer"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = ["gauth-demo-app"]
"""


# --- poetry -------------------------------------------------------------------------------------


def poetry_env(client_env):
    return {
        **client_env,
        "POETRY_NO_INTERACTION": "1",
        "POETRY_VIRTUALENVS_IN_PROJECT": "true",
        "POETRY_VIRTUALENVS_USE_POETRY_PYTHON": "true",
    }


def poetry_project(tmp_path, source, url):
    """A project that needs gauth-demo-app from its one poetry source, `source` at `url`."""
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        CONSUMER_PROJECT
        + textwrap.dedent(
            f"""\

            [tool.poetry]
            package-mode = false

            [[tool.poetry.source]]
            name = "{source}"
            url = "{url}"
            priority = "primary"
            """
        )
    )
    return project


def test_poetry_installs_from_an_artifact_registry_source(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = poetry_project(tmp_path, "gar", INDEX)
    result = run(
        [toolbox.exe("poetry", "poetry"), "install", "-vvv"], poetry_env(client_env), cwd=project
    )
    check(result)
    # poetry asked keyring "python-poetry-check" first and found our backend usable.
    assert "Using keyring backend 'artifactregistry gauth GooglePyPIAuth'" in result.stdout
    assert "\nAvailable\n" in result.stdout
    (site_packages,) = project.glob(".venv/lib/python*/site-packages")
    assert {"gauth_demo_app", "gauth_demo_lib"} <= {p.name for p in site_packages.iterdir()}
    served = [r for r in registry.requests_to(AR_HOST) if r.status == 200]
    assert served and all(r.authenticated for r in served)
    assert token_fetches(fake_google) == 1


def test_poetrys_keyring_check_gets_none_at_once(toolbox, fake_google, client_env):
    code = textwrap.dedent(
        """\
        import json, time, keyring
        keyring.get_keyring()
        start = time.perf_counter()
        value = keyring.get_password("python-poetry-check", "python-poetry")
        print(json.dumps({"value": value, "seconds": time.perf_counter() - start}))
        """
    )
    result = check(run([toolbox.python("poetry"), "-c", code], client_env))
    answer = json.loads(result.stdout)
    assert answer["value"] is None
    assert answer["seconds"] < 0.05
    assert token_fetches(fake_google) == 0


def test_poetry_publishes_to_artifact_registry(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project, wheel = upload_project(tmp_path)
    env = {**poetry_env(client_env), "POETRY_REPOSITORIES_GAR_URL": UPLOAD_URL}
    result = run(
        [toolbox.exe("poetry", "poetry"), "publish", "--repository", "gar"], env, cwd=project
    )
    check(result)
    assert_uploaded(registry, wheel)
    assert token_fetches(fake_google) == 1


def test_poetry_sends_no_token_for_a_source_named_like_a_registry_host(
    toolbox, registry, fake_google, client_env, tmp_path
):
    # poetry asks keyring for poetry-repository-NAME with the http-basic username, then sends
    # the answer to NAME's URL: here a foreign host that asks for credentials.
    project = poetry_project(tmp_path, AR_HOST, PROXY_INDEX)
    config = tmp_path / "poetry-config"
    config.mkdir()
    (config / "auth.toml").write_text(f'[http-basic."{AR_HOST}"]\nusername = "oauth2accesstoken"\n')
    env = {**poetry_env(client_env), "POETRY_CONFIG_DIR": str(config)}
    result = run([toolbox.exe("poetry", "poetry"), "lock", "-vvv"], env, cwd=project)
    assert result.returncode != 0  # the source wants credentials, and none are ours to give
    asked = registry.requests_to(PROXY_HOST)
    assert asked, "poetry never reached the source"
    assert [r for r in asked if r.carried_google_token] == []
    assert token_fetches(fake_google) == 0


# --- tox ----------------------------------------------------------------------------------------


TOX_INI = """\
[tox]
requires = artifactregistry-gauth
env_list = py

[testenv]
skip_install = true
deps = gauth-demo-app
pass_env =
    GOOGLE_APPLICATION_CREDENTIALS
    # test only: the dead loopback metadata address and our cache directory
    GCE_METADATA_HOST
    GCE_METADATA_IP
    ARTIFACTREGISTRY_GAUTH_*
commands = python -c "import gauth_demo_app, gauth_demo_lib; print(gauth_demo_app.hello())"
"""


def tox_run(tox, env, tmp_path):
    """Run tox in a project whose test env needs gauth-demo-app from Artifact Registry."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tox.ini").write_text(TOX_INI)
    env = {
        **env,
        # PyPI's stand-in first, Artifact Registry as the extra index (as gcloud prints it).
        "PIP_INDEX_URL": MIRROR_INDEX,
        "PIP_EXTRA_INDEX_URL": INDEX,
        "PIP_KEYRING_PROVIDER": "subprocess",
        "PIP_NO_INPUT": "1",
    }
    result = check(run([tox, "run"], env, cwd=project))
    assert "gauth-demo-app\n" in result.stdout
    return project


def test_tox_with_the_backend_beside_it_installs_a_private_dependency(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = on_path(client_env, toolbox.bin("tox"))  # an activated venv holding tox and us
    project = tox_run(toolbox.exe("tox", "tox"), env, tmp_path)
    assert not (project / ".tox" / ".tox").exists()  # `requires` was already satisfied
    assert set(registry.served_files(AR_HOST)) == PRIVATE_WHEELS
    assert token_fetches(fake_google) == 1


def test_tox_requires_provisions_the_backend_and_installs_a_private_dependency(
    toolbox, registry, fake_google, client_env, tmp_path
):
    for wheel in toolbox.wheelhouse.iterdir():  # tox and us, from "PyPI"
        registry.mirror(MIRROR_HOST).add_file(wheel)
    project = tox_run(toolbox.exe("tox_bare", "tox"), client_env, tmp_path)
    assert (project / ".tox" / ".tox").is_dir()
    assert toolbox.project_wheel.name in registry.served_files(MIRROR_HOST)
    assert set(registry.served_files(AR_HOST)) == PRIVATE_WHEELS
    assert token_fetches(fake_google) == 1


# --- pdm ----------------------------------------------------------------------------------------


PDM_PROJECT = f"""{CONSUMER_PROJECT}
[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "gar"
url = "{INDEX}"
"""


def pdm_env(client_env):
    """No update check, no prompts, and PyPI's stand-in as pdm's default source."""
    return {
        **client_env,
        "PDM_CHECK_UPDATE": "false",
        "PDM_NON_INTERACTIVE": "1",
        "PDM_PYPI_URL": MIRROR_INDEX,
    }


def assert_project_venv_has_private_packages(registry, project):
    """The project's .venv holds both private packages, each fetched with a live token."""
    (site_packages,) = project.glob(".venv/lib/python*/site-packages")
    assert {"gauth_demo_app", "gauth_demo_lib"} <= {p.name for p in site_packages.iterdir()}
    served = [r for r in registry.requests_to(AR_HOST) if r.status == 200]
    assert served and all(r.authenticated for r in served)
    assert set(registry.served_files(AR_HOST)) == PRIVATE_WHEELS


def pdm_install(pdm, env, tmp_path):
    """`pdm install` in a project whose one dependency comes from Artifact Registry."""
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "pyproject.toml").write_text(PDM_PROJECT)
    check(run([pdm, "install"], env, cwd=project))
    return project


def test_pdm_installs_from_an_artifact_registry_source(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = pdm_install(toolbox.exe("pdm", "pdm"), pdm_env(client_env), tmp_path)
    assert_project_venv_has_private_packages(registry, project)
    mirror = registry.requests_to(MIRROR_HOST)  # pdm's default source, PyPI's stand-in
    assert mirror and [r for r in mirror if r.username is not None] == []
    assert token_fetches(fake_google) == 1


def recording_keyring(keyring, folder):
    """A folder for PATH whose `keyring` records its arguments, then runs `keyring`."""
    folder.mkdir()
    log = folder / "calls.jsonl"
    (folder / "keyring").write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""\
            import json, os, sys
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps(sys.argv[1:]) + "\\n")
            os.execv({str(keyring)!r}, [{str(keyring)!r}, *sys.argv[1:]])
            """
        )
    )
    (folder / "keyring").chmod(0o755)
    return folder, log


@pytest.mark.parametrize("keyring", ["link", "keyring-25"])
def test_pdm_without_the_keyring_module_runs_the_keyring_command_in_creds_mode(
    toolbox, registry, fake_google, client_env, keyring_link, tmp_path, keyring
):
    if keyring == "link":
        command = keyring_link / "keyring"
    else:
        command = toolbox.exe("keyring25", "keyring")  # pipx install keyring; inject us
    shim, log = recording_keyring(command, tmp_path / "shim")
    project = pdm_install(
        toolbox.exe("pdm_bare", "pdm"), on_path(pdm_env(client_env), shim), tmp_path
    )
    assert_project_venv_has_private_packages(registry, project)
    calls = {tuple(json.loads(line)) for line in log.read_text().splitlines()}
    # unearth asks `get URL __token__` only when the creds-mode question gets no answer.
    assert {call[:2] for call in calls} == {("--mode=creds", "get")}
    assert all(call[3] == "" and urlsplit(call[2]).hostname == AR_HOST for call in calls)
    assert token_fetches(fake_google) == 1


@pytest.mark.parametrize("username", [["-u", "oauth2accesstoken"], []], ids=["u", "no-u"])
def test_pdm_publishes_to_artifact_registry(
    toolbox, registry, fake_google, client_env, tmp_path, username
):
    project, wheel = upload_project(tmp_path)
    publish = [toolbox.exe("pdm", "pdm"), "publish", "--no-build", "-r", UPLOAD_URL, *username]
    check(run(publish, pdm_env(client_env), cwd=project))
    assert_uploaded(registry, wheel)
    assert token_fetches(fake_google) == 1


# A cloned project names its source like a registry host; pdm asks keyring for
# pdm-pypi-mirror.pkg.dev after the URL and the host, and sends the answer to the source's URL.
HOSTILE_PDM_PROJECT = f"""{CONSUMER_PROJECT}
[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "mirror.pkg.dev"
url = "{PROXY_INDEX}"
"""


@pytest.mark.parametrize("keyring", ["module", "command"])
def test_pdm_sends_no_token_for_a_source_named_like_a_registry_host(
    toolbox, registry, fake_google, client_env, keyring_link, tmp_path, keyring
):
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "pyproject.toml").write_text(HOSTILE_PDM_PROJECT)
    if keyring == "module":  # keyring and we in pdm's own environment
        pdm, env, log = toolbox.exe("pdm", "pdm"), pdm_env(client_env), None
    else:  # no keyring module: unearth runs the `keyring` on PATH, a link to our command
        shim, log = recording_keyring(keyring_link / "keyring", tmp_path / "shim")
        pdm, env = toolbox.exe("pdm_bare", "pdm"), on_path(pdm_env(client_env), shim)
    result = run([pdm, "lock"], env, cwd=project)
    assert result.returncode != 0  # the source wants credentials, and none are ours to give
    if log is not None:
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert ["--mode=creds", "get", "pdm-pypi-mirror.pkg.dev", ""] in calls
    asked = registry.requests_to(PROXY_HOST)
    assert asked, "pdm never reached the source"
    assert [r for r in asked if r.carried_google_token] == []
    assert token_fetches(fake_google) == 0


# --- hatch --------------------------------------------------------------------------------------


@pytest.fixture
def loopback_resolver(registry, tmp_path):
    """PYTHONPATH for a client that ignores HTTPS_PROXY: resolves the fake hosts' port 443
    to the fake registry (hatch's publisher gives httpx its own transport, so no proxy)."""
    folder = tmp_path / "resolver"
    folder.mkdir()
    routes = {host: registry.port for host in TLS_NAMES}
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""\
            import socket

            ROUTES = {routes!r}
            real_getaddrinfo = socket.getaddrinfo


            def getaddrinfo(host, port, *args, **kwargs):
                if str(host).lower() in ROUTES and str(port) == "443":
                    return real_getaddrinfo("127.0.0.1", ROUTES[host.lower()], *args, **kwargs)
                if host in ("127.0.0.1", "localhost"):
                    return real_getaddrinfo(host, port, *args, **kwargs)
                raise socket.gaierror(socket.EAI_NONAME, f"test resolver: no route to {{host}}")


            socket.getaddrinfo = getaddrinfo
            """
        )
    )
    return folder


def test_hatch_publishes_with_the_password_from_keyring(
    toolbox, registry, fake_google, client_env, loopback_resolver, tmp_path
):
    project, wheel = upload_project(tmp_path)
    env = {**client_env, "PYTHONPATH": str(loopback_resolver)}
    env["HATCH_INDEX_CA_CERT"] = client_env["SSL_CERT_FILE"]  # the test CA
    publish = [toolbox.exe("hatch", "hatch"), "publish", "-n", "-r", UPLOAD_URL]
    check(run([*publish, "-u", "oauth2accesstoken"], env, cwd=project))  # dist/*
    assert_uploaded(registry, wheel)
    assert token_fetches(fake_google) == 1


def test_hatch_with_the_username_token_gets_no_password(
    toolbox, registry, fake_google, client_env, loopback_resolver, tmp_path
):
    project, _ = upload_project(tmp_path)
    env = {**client_env, "PYTHONPATH": str(loopback_resolver)}
    publish = [toolbox.exe("hatch", "hatch"), "publish", "-n", "-r", UPLOAD_URL]
    result = run([*publish, "-u", "__token__"], env, cwd=project)  # hatch's prompt default
    assert result.returncode != 0
    assert "Missing required option: auth" in result.stderr
    assert (registry.uploads, token_fetches(fake_google)) == ([], 0)


# --- pipenv -------------------------------------------------------------------------------------


PIPFILE = f"""\
[[source]]
name = "gar"
url = "{INDEX}"
verify_ssl = true

[packages]
gauth-demo-app = "*"
"""


def pipenv_install(toolbox, client_env, tmp_path, pipfile):
    """`pipenv install` of a Pipfile, with PIP_KEYRING_PROVIDER=subprocess and a keyring on
    PATH; the project folder."""
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "Pipfile").write_text(pipfile)
    env = on_path(client_env, toolbox.bin("keyring25"))  # pipx install keyring; inject us
    env.update(
        PIP_KEYRING_PROVIDER="subprocess",
        PIPENV_VENV_IN_PROJECT="1",
        PIPENV_YES="1",
        PIPENV_NOSPIN="1",
        PIPENV_IGNORE_VIRTUALENVS="1",
    )
    check(run([toolbox.exe("pipenv", "pipenv"), "install"], env, cwd=project, timeout=300))
    return project


def test_pipenv_installs_from_an_artifact_registry_source(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = pipenv_install(toolbox, client_env, tmp_path, PIPFILE)
    assert_project_venv_has_private_packages(registry, project)
    assert token_fetches(fake_google) == 1


# --- pip-tools ----------------------------------------------------------------------------------


def test_pip_compile_resolves_against_an_artifact_registry_index(
    toolbox, registry, fake_google, client_env, tmp_path
):
    (tmp_path / "requirements.in").write_text("gauth-demo-app\n")
    compile_ = [
        toolbox.exe("pip_tools", "pip-compile"),
        "--index-url",
        INDEX,
        "--pip-args",
        "--keyring-provider import",
        "requirements.in",
    ]
    check(run(compile_, client_env, cwd=tmp_path))
    pinned = (tmp_path / "requirements.txt").read_text()
    assert "gauth-demo-app==1.0.0" in pinned and "gauth-demo-lib==1.0.0" in pinned
    served = [r for r in registry.requests_to(AR_HOST) if r.status == 200]
    assert served and all(r.authenticated for r in served)
    assert token_fetches(fake_google) == 1


# --- pipx ---------------------------------------------------------------------------------------


def test_pipx_installs_an_app_from_artifact_registry(
    toolbox, registry, fake_google, client_env, tmp_path
):
    repository = registry.repository(AR_HOST, "proj/repo")
    repository.add_file(toolbox.wheels["cli"])
    # pipx reinstalls pip into its shared libraries from the same index.
    (pip_wheel,) = toolbox.wheelhouse.glob("pip-*.whl")
    repository.add_file(pip_wheel)
    env = on_path(client_env, toolbox.bin("keyring25"))  # pipx install keyring; inject us
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "pipx-bin"))
    env["PIPX_MAN_DIR"] = str(tmp_path / "pipx-man")
    # The first pip pipx runs is Python's bundled one (older than 26.2): the username goes
    # in the URL.
    pipx = [toolbox.exe("pipx", "pipx"), "install", "--index-url", INDEX_WITH_USER]
    pipx.append("gauth-demo-cli")
    check(run(pipx, env, timeout=300))
    app = check(run([tmp_path / "pipx-bin" / "gauth-demo"], env))
    assert app.stdout == "gauth-demo-lib\n"
    assert pip_wheel.name in registry.served_files(AR_HOST)
    served = [r for r in registry.requests_to(AR_HOST) if r.status == 200]
    assert served and all(r.authenticated for r in served)
    assert token_fetches(fake_google) == 1


# --- docs/ci-and-containers.md: its recipes, run by the same commands -------------------------

# Each recipe below stands in docs/ci-and-containers.md as it is here, with its placeholders;
# the tests put the fakes' values in and run the lines a Dockerfile RUN or a CI step runs.
PIP_FROM_AR = """\
pip install --keyring-provider import \\
    --index-url https://us-python.pkg.dev/PROJECT/REPO/simple/ mypackage
"""
DOCKER_KEY_FILE = f"""\
RUN --mount=type=secret,id=gcp,target=/run/secrets/gcp.json \\
    GOOGLE_APPLICATION_CREDENTIALS=/run/secrets/gcp.json ARTIFACTREGISTRY_GAUTH_NO_CACHE=1 \\
    {PIP_FROM_AR}"""
DOCKER_TOKEN_ENV = f"""\
RUN --mount=type=secret,id=token,env=GOOGLE_OAUTH_ACCESS_TOKEN \\
    {PIP_FROM_AR}"""
DOCKER_TOKEN_FILE = f"""\
RUN --mount=type=secret,id=token \\
    GOOGLE_OAUTH_ACCESS_TOKEN=$(cat /run/secrets/token) \\
    {PIP_FROM_AR}"""
DOCKER_METADATA = f"""\
RUN ARTIFACTREGISTRY_GAUTH_NO_CACHE=1 \\
    {PIP_FROM_AR}"""
WORKLOAD_PROVIDER = (
    "projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER"
)
IMPERSONATED = "SA_NAME@PROJECT.iam.gserviceaccount.com"
GITLAB_SCRIPT = f"""\
printf '%s' "$GCP_ID_TOKEN" > "$CI_BUILDS_DIR/gcp-oidc.jwt"
cat > "$CI_BUILDS_DIR/gcp-wif.json" <<EOF
{{
  "type": "external_account",
  "audience": "//iam.googleapis.com/{WORKLOAD_PROVIDER}",
  "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
  "token_url": "https://sts.googleapis.com/v1/token",
  "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{IMPERSONATED}:generateAccessToken",
  "credential_source": {{"file": "$CI_BUILDS_DIR/gcp-oidc.jwt"}}
}}
EOF
export GOOGLE_APPLICATION_CREDENTIALS="$CI_BUILDS_DIR/gcp-wif.json"
{PIP_FROM_AR}"""
RECIPES = {
    "docker-key-file": DOCKER_KEY_FILE,
    "docker-token-env": DOCKER_TOKEN_ENV,
    "docker-token-file": DOCKER_TOKEN_FILE,
    "docker-metadata": DOCKER_METADATA,
    "gitlab": GITLAB_SCRIPT,
}
FAKE_VALUES = {  # the docs' placeholder -> what the fakes know
    "https://us-python.pkg.dev/PROJECT/REPO/simple/": INDEX,
    WORKLOAD_PROVIDER: WORKLOAD_PROVIDER.replace("PROJECT_NUMBER", "123456")
    .replace("POOL", "pool")
    .replace("PROVIDER", "provider"),
    IMPERSONATED: "target@proj.iam.gserviceaccount.com",
    " mypackage\n": " gauth-demo-app\n",
}
WORKLOAD = "//iam.googleapis.com/" + FAKE_VALUES[WORKLOAD_PROVIDER]
TARGET = FAKE_VALUES[IMPERSONATED]
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
GITHUB_OIDC_HOST = "pipelines.actions.githubusercontent.com"
GITHUB_REQUEST_URL = f"https://{GITHUB_OIDC_HOST}/token?api-version=2.0"  # the runner's
GITHUB_REQUEST_TOKEN = "gha-request-token-0123456789"  # ACTIONS_ID_TOKEN_REQUEST_TOKEN


def shell_of(recipe, files=None):
    """The shell command of a recipe (a RUN line without RUN and its --mount options), with
    the fakes' values for the docs' placeholders and `files` for the mounted paths."""
    lines = recipe.splitlines(keepends=True)
    if lines[0].startswith("RUN "):
        lines[0] = lines[0][len("RUN ") :]
        if lines[0].startswith("--mount="):
            del lines[0]
    text = "".join(lines)
    for placeholder, value in {**FAKE_VALUES, **(files or {})}.items():
        text = text.replace(placeholder, str(value))
    return text


def run_recipe(toolbox, env, recipe, target, files=None):
    """Run a recipe's shell lines where pip, keyring and the backend are installed; pip
    installs into target (PIP_TARGET, so that the command stays the docs')."""
    env = {**on_path(env, toolbox.bin("keyring25"), shell_tools(env)), "PIP_TARGET": str(target)}
    return run(["/bin/sh", "-e", "-c", shell_of(recipe, files)], env)


def shell_tools(env):
    """A folder for PATH with the one command the recipes use besides pip: `cat` (the
    system's own folders may hold a gcloud, so they are not on the clients' PATH)."""
    folder = Path(env["TMPDIR"]).parent / "shell-tools"
    folder.mkdir(exist_ok=True)
    if not (folder / "cat").exists():
        (folder / "cat").symlink_to(shutil.which("cat", path="/usr/bin:/bin"))
    return folder


def without_google_credentials(env):
    """A copy of env without the service-account key: a build container or CI job has none."""
    return {k: v for k, v in env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}


class TokenIssuers:
    """Several token-issuing fakes, as one for the fake registry to check passwords with."""

    def __init__(self, *fakes):
        self.fakes = fakes

    def is_live(self, token):
        """Whether any of the fakes issued the token and it has not expired."""
        return any(fake.is_live(token) for fake in self.fakes)

    @property
    def issued(self):
        """Every token any of the fakes issued."""
        return [token for fake in self.fakes for token in list(fake.issued)]


def files_holding(folder, secrets_):
    """The files under folder that contain any of the secrets."""
    found = []
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(secret.encode() in data for secret in secrets_):
                found.append(path)
    return found


def test_recipes_stand_in_the_docs_line_by_line():
    docs = (ROOT / "docs" / "ci-and-containers.md").read_text()
    missing = [
        (name, line.strip())
        for name, recipe in RECIPES.items()
        for line in recipe.splitlines()
        if line.strip() not in docs
    ]
    assert missing == []


def test_docker_build_with_a_key_file_secret_leaves_no_token_behind(
    toolbox, registry, fake_google, client_env, sa_file, tmp_path
):
    secret = sa_file()  # docker build --secret id=gcp,src=key.json .
    env = without_google_credentials(client_env)
    target = tmp_path / "t"
    check(run_recipe(toolbox, env, DOCKER_KEY_FILE, target, {"/run/secrets/gcp.json": secret}))
    assert_private_install(registry, target)
    assert token_fetches(fake_google) == 1
    # Nothing the build wrote (the image's layers) holds the token.
    assert files_holding(tmp_path, fake_google.issued) == []


@pytest.mark.parametrize("recipe", ["docker-token-env", "docker-token-file"])
def test_docker_build_with_an_access_token_secret(
    toolbox, registry, fake_google, client_env, tmp_path, recipe
):
    # On the host: GOOGLE_OAUTH_ACCESS_TOKEN=$(artifactregistry-gauth token) docker build ...
    host = check(run([toolbox.exe("keyring25", "artifactregistry-gauth"), "token"], client_env))
    token = host.stdout.strip()
    env = without_google_credentials(client_env)
    files = {}
    if recipe == "docker-token-env":  # BuildKit 0.14+ sets the variable itself
        env["GOOGLE_OAUTH_ACCESS_TOKEN"] = token
    else:
        (tmp_path / "token").write_text(token)
        files["/run/secrets/token"] = tmp_path / "token"
    target = tmp_path / "t"
    check(run_recipe(toolbox, env, RECIPES[recipe], target, files))
    assert_private_install(registry, target)
    assert token_fetches(fake_google) == 1  # the host's, and none in the build


@pytest.fixture
def metadata_registry(registry, fake_google, fake_metadata):
    """The fake registry taking tokens of the fake metadata server (Cloud Build, GKE)."""
    registry.google = TokenIssuers(fake_google, fake_metadata)
    return registry


@pytest.mark.parametrize("where", ["step", "docker-build"])
def test_cloud_build_and_gke_use_the_metadata_server(
    toolbox, metadata_registry, fake_google, fake_metadata, client_env, tmp_path, where
):
    env = {**without_google_credentials(client_env), "GCE_METADATA_HOST": fake_metadata.host}
    env["GCE_METADATA_IP"] = fake_metadata.host
    target = tmp_path / "t"
    recipe = PIP_FROM_AR if where == "step" else DOCKER_METADATA
    check(run_recipe(toolbox, env, recipe, target))
    assert_private_install(metadata_registry, target)
    token_requests = [r for r in fake_metadata.requests if r.route.endswith("/token")]
    assert (len(token_requests), token_fetches(fake_google)) == (1, 0)


@pytest.fixture
def federation(registry, proxy, google_federation, fake_idp, test_ca):
    """STS, IAM credentials and GitHub's OIDC token URL reachable through the clients' proxy,
    and the fake registry taking the tokens they issue."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    test_ca.issue_cert(GITHUB_OIDC_HOST).configure_cert(context)
    proxy.routes[GITHUB_OIDC_HOST] = fake_idp.serve(context).port
    for host in (STS_HOST, IAM_HOST):
        proxy.routes[host] = google_federation.hosts.port
    fed = google_federation
    registry.google = TokenIssuers(fed.google, fed.sts, fed.iam)
    fed.sts.add_provider(WORKLOAD, JWT_TYPE, fake_idp.token)
    fed.iam.add_service_account(TARGET)
    return fed


def github_actions_credentials(path, fake_idp, impersonate):
    """The file google-github-actions/auth writes (its `credentials_file_path`)."""
    register_secret(GITHUB_REQUEST_TOKEN)
    fake_idp.json_field = "value"
    fake_idp.required_headers = {"Authorization": f"Bearer {GITHUB_REQUEST_TOKEN}"}
    audience = "https://iam.googleapis.com/" + FAKE_VALUES[WORKLOAD_PROVIDER]
    info = {
        "type": "external_account",
        "audience": WORKLOAD,
        "subject_token_type": JWT_TYPE,
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {
            "url": f"{GITHUB_REQUEST_URL}&audience={audience}",
            "headers": {"Authorization": f"Bearer {GITHUB_REQUEST_TOKEN}"},
            "format": {"type": "json", "subject_token_field_name": "value"},
        },
    }
    if impersonate:
        info["service_account_impersonation_url"] = (
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
            f"{TARGET}:generateAccessToken"
        )
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o640)
    return path


@pytest.mark.parametrize("impersonate", [False, True], ids=["direct", "service-account"])
def test_github_actions_auth_credentials_file(
    toolbox, registry, federation, fake_idp, client_env, tmp_path, impersonate
):
    creds = github_actions_credentials(tmp_path / "gha-creds-1.json", fake_idp, impersonate)
    env = {
        **client_env,
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": GITHUB_REQUEST_URL,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": GITHUB_REQUEST_TOKEN,
        "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
        "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE": str(creds),
        "GOOGLE_GHA_CREDS_PATH": str(creds),
    }
    target = tmp_path / "t"
    result = check(run_recipe(toolbox, env, PIP_FROM_AR, target))
    assert fake_idp.token not in result.stdout + result.stderr
    assert_private_install(registry, target)
    iam_calls = [r for r in federation.iam.requests if r.method == "POST"]
    fetches = (len(fake_idp.requests), len(federation.sts.exchanges), len(iam_calls))
    assert fetches == (1, 1, 1 if impersonate else 0)
    assert token_fetches(federation.google) == 0


def test_gitlab_ci_id_token_through_a_file_source(
    toolbox, registry, federation, client_env, tmp_path
):
    subject = "eyJhbGciOiJSUzI1NiJ9.gitlab-id-token.sig"
    register_secret(subject)
    federation.sts.add_provider(WORKLOAD, JWT_TYPE, subject)
    builds = tmp_path / "builds"
    builds.mkdir()
    env = {
        **without_google_credentials(client_env),
        "GITLAB_CI": "true",
        "GCP_ID_TOKEN": subject,  # id_tokens: GCP_ID_TOKEN: aud: ...
        "CI_BUILDS_DIR": str(builds),
    }
    target = tmp_path / "t"
    result = check(run_recipe(toolbox, env, GITLAB_SCRIPT, target))
    assert subject not in result.stdout + result.stderr
    assert_private_install(registry, target)
    iam_calls = [r for r in federation.iam.requests if r.method == "POST"]
    assert (len(federation.sts.exchanges), len(iam_calls)) == (1, 1)
    assert token_fetches(federation.google) == 0


# --- the keyring command line -------------------------------------------------------------------


@pytest.mark.parametrize("venv", ["keyring24", "keyring25"])
def test_keyring_cli_lists_the_backend_at_priority_nine(toolbox, client_env, venv):
    result = check(run([toolbox.exe(venv, "keyring"), "--list-backends"], client_env))
    assert "artifactregistry_gauth.GooglePyPIAuth (priority: 9)" in result.stdout.splitlines()


@pytest.mark.parametrize("venv", ["keyring24", "keyring25"])
@pytest.mark.parametrize("service", [INDEX, UPLOAD_URL, AR_HOST])
def test_keyring_cli_get_prints_a_live_token(toolbox, fake_google, client_env, venv, service):
    result = run([toolbox.exe(venv, "keyring"), "get", service, "oauth2accesstoken"], client_env)
    assert result.returncode == 0, result.stderr
    assert fake_google.is_live(result.stdout.strip())
    assert result.stdout.count("\n") == 1


def test_keyring_25_creds_mode_answers_the_username_too(toolbox, fake_google, client_env):
    keyring = toolbox.exe("keyring25", "keyring")
    for args in (["get", INDEX], ["get", INDEX, "oauth2accesstoken"]):
        result = run([keyring, "--mode", "creds", "--output", "json", *args], client_env)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["username"] == "oauth2accesstoken"
        assert fake_google.is_live(answer["password"])


@pytest.mark.parametrize("venv", ["keyring24", "keyring25"])
@pytest.mark.parametrize(
    ("service", "username"),
    [
        (MIRROR_INDEX, "oauth2accesstoken"),
        (MIRROR_HOST, "oauth2accesstoken"),
        (INDEX, "someone-else"),
        ("python-poetry-check", "python-poetry"),
    ],
)
def test_keyring_cli_answers_nothing_for_other_hosts_and_users(
    toolbox, fake_google, client_env, venv, service, username
):
    result = run([toolbox.exe(venv, "keyring"), "get", service, username], client_env)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")
    assert token_fetches(fake_google) == 0


def test_pip_26_2_subprocess_provider_needs_keyring_25(
    toolbox, registry, fake_google, client_env, tmp_path
):
    env = on_path(client_env, toolbox.bin("keyring24"))
    result = pip_install(
        toolbox, "pip", env, tmp_path / "t", "subprocess", INDEX_WITH_USER, "gauth-demo-app"
    )
    assert result.returncode != 0
    assert "Keyring util is outdated" in result.stdout + result.stderr
    assert token_fetches(fake_google) == 0


def test_separate_keyring_processes_share_one_token(toolbox, fake_google, client_env):
    keyring_get = [toolbox.exe("keyring25", "keyring"), "get", INDEX, "oauth2accesstoken"]
    for _ in range(2):
        check(run(keyring_get, client_env))
    assert token_fetches(fake_google) == 1


# --- a `keyring` that is a link to our command, with no keyring package anywhere ------------


@pytest.fixture
def keyring_link(toolbox, tmp_path):
    """A folder for PATH whose `keyring` links to our command in a venv without keyring."""
    venv = toolbox.venvs["no_keyring"]
    assert not list(venv.glob("lib/python*/site-packages/keyring"))
    links = tmp_path / "links"
    links.mkdir()
    (links / "keyring").symlink_to(toolbox.exe("no_keyring", "artifactregistry-gauth"))
    return links


@pytest.mark.parametrize(
    ("venv", "index"),
    [("pip", INDEX), ("pip_old", INDEX_WITH_USER)],
    ids=["pip-26.3-creds-json", "pip-26.1-username-in-url"],
)
def test_pip_subprocess_provider_runs_a_keyring_link_to_our_command(
    toolbox, registry, fake_google, client_env, keyring_link, tmp_path, venv, index
):
    env = on_path(client_env, keyring_link)
    result = pip_install(toolbox, venv, env, tmp_path / "t", "subprocess", index, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


@pytest.mark.parametrize("index", [INDEX_WITH_USER, "authenticate-always"])
def test_uv_runs_a_keyring_link_to_our_command(
    toolbox, registry, fake_google, client_env, keyring_link, tmp_path, index
):
    env = on_path(client_env, keyring_link)
    args = ["--keyring-provider", "subprocess"]
    if index == "authenticate-always":
        config = tmp_path / "uv.toml"
        config.write_text(
            f'[[index]]\nname = "private"\nurl = "{INDEX}"\n'
            'default = true\nauthenticate = "always"\n'
        )
        args += ["--config-file", str(config)]
    else:
        args += ["--index-url", index]
    result = uv_pip_install(toolbox, env, tmp_path / "t", *args, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


# --- the vendored single file -------------------------------------------------------------------


@pytest.fixture
def vendored(toolbox, client_env, tmp_path):
    """Our single file in a folder, chosen by keyringrc.cfg in a venv that has only keyring."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    shutil.copy2(ROOT / "artifactregistry_gauth.py", folder / "artifactregistry_gauth.py")
    config = Path(client_env["XDG_CONFIG_HOME"], "python_keyring")
    config.mkdir(parents=True)
    (config / "keyringrc.cfg").write_text(
        textwrap.dedent(
            f"""\
            [backend]
            default-keyring = artifactregistry_gauth.GooglePyPIAuth
            keyring-path = {folder}
            """
        )
    )
    return folder


@pytest.mark.parametrize(
    ("pip", "provider"),
    [("vendored", "import"), ("pip", "subprocess")],
    ids=["import", "subprocess"],
)
def test_vendored_file_serves_pip(
    toolbox, registry, fake_google, client_env, vendored, tmp_path, pip, provider
):
    env = on_path(client_env, toolbox.bin("vendored"))
    result = pip_install(toolbox, pip, env, tmp_path / "t", provider, INDEX, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1
    find = "import importlib.util as u; print(u.find_spec('artifactregistry_gauth'))"
    found = check(run([toolbox.python("vendored"), "-c", find], env))
    assert found.stdout == "None\n"  # not installed: only keyringrc.cfg knows the file


# --- a netrc written by `artifactregistry-gauth netrc`, read with no keyring anywhere ----------


def write_netrc(toolbox, env, path):
    """Our command writes the netrc; the clients then run without keyring or credentials."""
    ours = toolbox.exe("no_keyring", "artifactregistry-gauth")
    check(run([ours, "netrc", AR_HOST, "--output", path], env))
    assert path.stat().st_mode & 0o777 == 0o600
    return {k: v for k, v in env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}


@pytest.mark.parametrize("where", ["home", "NETRC"])
def test_pip_installs_with_the_netrc_we_write(
    toolbox, registry, fake_google, client_env, tmp_path, where
):
    path = Path(client_env["HOME"], ".netrc") if where == "home" else tmp_path / "netrc"
    env = write_netrc(toolbox, client_env, path)
    if where == "NETRC":
        env["NETRC"] = str(path)
    result = pip_install(toolbox, "pip", env, tmp_path / "t", "disabled", INDEX, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_uv_installs_with_the_netrc_we_write(toolbox, registry, fake_google, client_env, tmp_path):
    env = write_netrc(toolbox, client_env, tmp_path / "netrc")
    env = {**env, "NETRC": str(tmp_path / "netrc"), "UV_KEYRING_PROVIDER": "disabled"}
    result = uv_pip_install(toolbox, env, tmp_path / "t", "--index-url", INDEX, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


# --- print-settings: each file or command list, as printed, run by its tool -------------------


def printed(tool, repository="repo"):
    """What `artifactregistry-gauth print-settings --tool TOOL` prints for the fake registry."""
    command = [sys.executable, "-m", "artifactregistry_gauth", "print-settings"]
    where = ["--location", "us", "--project", "proj", "--repository", repository]
    result = check(
        subprocess.run(
            [*command, *where, "--tool", tool], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
    )
    return result.stdout


def printed_file(tool, path, repository="repo"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(printed(tool, repository))
    return path


def printed_command(text, label):
    """The command a printed `# Publish: ...` or `# Then: ...` comment names."""
    import shlex

    (line,) = [line for line in text.splitlines() if line.startswith(f"# {label}: ")]
    return shlex.split(line.split(": ", 1)[1])


@pytest.mark.parametrize(
    ("tool", "venv", "keyring_on_path"),
    [
        ("pip", "keyring25", False),
        ("pip-subprocess", "pip", True),
        ("pip-subprocess", "pip_old", True),
    ],
    ids=["import", "subprocess", "subprocess-pip-26.1"],
)
def test_printed_pip_conf_installs_a_private_package(
    toolbox, registry, fake_google, client_env, tmp_path, tool, venv, keyring_on_path
):
    env = {**client_env, "PIP_CONFIG_FILE": str(printed_file(tool, tmp_path / "pip.conf"))}
    if keyring_on_path:
        env = on_path(env, toolbox.bin("keyring25"))  # pipx install keyring; inject us
    pip = [toolbox.python(venv), "-m", "pip", "install", "--no-input", "--target", tmp_path / "t"]
    check(run([*pip, "gauth-demo-app"], env))
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_printed_uv_toml_installs_a_private_package(
    toolbox, registry, fake_google, client_env, tmp_path
):
    config = printed_file("uv", tmp_path / "uv.toml")
    env = on_path(client_env, toolbox.bin("keyring25"))
    result = uv_pip_install(toolbox, env, tmp_path / "t", "--config-file", config, "gauth-demo-app")
    check(result)
    assert_private_install(registry, tmp_path / "t")
    assert token_fetches(fake_google) == 1


def test_printed_uv_toml_publishes_with_the_printed_command(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project, wheel = upload_project(tmp_path)
    text = printed_file("uv", project / "uv.toml", repository="uploads").read_text()
    command = printed_command(text, "Publish")
    assert command[:2] == ["uv", "publish"]
    env = on_path(client_env, toolbox.bin("keyring25"))
    check(run([toolbox.exe("uv", "uv"), *command[1:], wheel], env, cwd=project))
    assert_uploaded(registry, wheel)


def test_printed_uv_pyproject_locks_and_syncs_a_pinned_private_package(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = tmp_path / "consumer"
    project.mkdir()
    pyproject = CONSUMER_PROJECT.replace('"gauth-demo-app"', '"gauth-demo-lib"')
    pyproject += "\n" + printed("uv-pyproject") + 'gauth-demo-lib = { index = "repo" }\n'
    (project / "pyproject.toml").write_text(pyproject)
    env = on_path({**client_env, "UV_DEFAULT_INDEX": MIRROR_INDEX}, toolbox.bin("keyring25"))
    uv = toolbox.exe("uv", "uv")
    check(run([uv, "sync", "--python", toolbox.python("uv")], env, cwd=project))
    (site_packages,) = project.glob(".venv/lib/python*/site-packages")
    assert "gauth_demo_lib" in {p.name for p in site_packages.iterdir()}
    served = [r for r in registry.requests_to(AR_HOST) if r.status == 200]
    assert served and all(r.authenticated for r in served)
    assert registry.requests_to(MIRROR_HOST) == []  # the pinned package is never asked of PyPI


def test_printed_pypirc_uploads_with_twine(toolbox, registry, fake_google, client_env, dist):
    printed_file("twine", Path(client_env["HOME"], ".pypirc"), repository="uploads")
    check(twine_upload(toolbox, client_env, "-r", "uploads", dist))
    assert_uploaded(registry, dist)
    assert token_fetches(fake_google) == 1


SHELL = shutil.which("sh") or "/bin/sh"  # an absolute path: the clients' PATH may lack it


def run_printed_commands(text, env, cwd, skip=()):
    """The printed command lines, run by the shell with stdin closed: a prompt would hang."""
    lines = [line for line in text.splitlines() if not line.startswith(skip)]
    return run([SHELL, "-ec", "\n".join(lines)], env, cwd=cwd, timeout=120)


def test_printed_poetry_commands_never_prompt_and_install(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        CONSUMER_PROJECT + "\n[tool.poetry]\npackage-mode = false\n"
    )
    env = on_path(poetry_env(client_env), toolbox.bin("poetry"))
    del env["POETRY_NO_INTERACTION"]  # the commands themselves must not prompt
    text = printed("poetry")
    check(run_printed_commands(text, env, project))
    then = printed_command(text, "Then")
    assert then[:2] == ["poetry", "install;"]
    check(run([toolbox.exe("poetry", "poetry"), "install"], env, cwd=project))
    assert_project_venv_has_private_packages(registry, project)
    assert token_fetches(fake_google) == 1


def test_printed_poetry_commands_publish(toolbox, registry, fake_google, client_env, tmp_path):
    project, wheel = upload_project(tmp_path)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.poetry]\npackages = []\n")
    env = on_path(poetry_env(client_env), toolbox.bin("poetry"))
    del env["POETRY_NO_INTERACTION"]
    text = printed("poetry", repository="uploads")
    check(run_printed_commands(text, env, project))
    publish = printed_command(text, "Then")[2:]
    assert publish == ["poetry", "publish", "--repository", "uploads"]
    check(run([toolbox.exe("poetry", "poetry"), *publish[1:]], env, cwd=project))
    assert_uploaded(registry, wheel)


def test_printed_pdm_source_installs(toolbox, registry, fake_google, client_env, tmp_path):
    project = tmp_path / "consumer"
    project.mkdir()
    pyproject = CONSUMER_PROJECT + "\n[tool.pdm]\ndistribution = false\n\n" + printed("pdm")
    (project / "pyproject.toml").write_text(pyproject)
    check(run([toolbox.exe("pdm", "pdm"), "install"], pdm_env(client_env), cwd=project))
    assert_project_venv_has_private_packages(registry, project)
    assert token_fetches(fake_google) == 1


def test_printed_pdm_publish_command_uploads(toolbox, registry, fake_google, client_env, tmp_path):
    project, wheel = upload_project(tmp_path)
    command = printed_command(printed("pdm", repository="uploads"), "Publish")
    assert command[:2] == ["pdm", "publish"]
    publish = [toolbox.exe("pdm", "pdm"), *command[1:], "--no-build"]
    check(run(publish, pdm_env(client_env), cwd=project))
    assert_uploaded(registry, wheel)


def test_printed_hatch_config_publishes(
    toolbox, registry, fake_google, client_env, loopback_resolver, tmp_path
):
    project, wheel = upload_project(tmp_path)
    config = Path(client_env["XDG_CONFIG_HOME"], "hatch", "config.toml")
    text = printed_file("hatch", config, repository="uploads").read_text()
    env = {**client_env, "PYTHONPATH": str(loopback_resolver)}
    env["HATCH_INDEX_CA_CERT"] = client_env["SSL_CERT_FILE"]  # the test CA
    (line,) = [line for line in text.splitlines() if "hatch publish -r" in line]
    assert "hatch publish -r uploads." in line
    check(run([toolbox.exe("hatch", "hatch"), "publish", "-r", "uploads"], env, cwd=project))
    assert_uploaded(registry, wheel)
    assert token_fetches(fake_google) == 1


def test_printed_tox_ini_installs_a_private_dependency(
    toolbox, registry, fake_google, client_env, tmp_path
):
    project = tmp_path / "project"
    printed_file("tox", project / "tox.ini")
    env = on_path(client_env, toolbox.bin("keyring25"))  # the keyring the comment names
    overrides = [
        "testenv.skip_install=true",
        "testenv.deps=gauth-demo-app",
        # test only: the dead loopback metadata address and our cache directory
        "testenv.pass_env+=GCE_METADATA_HOST,GCE_METADATA_IP,ARTIFACTREGISTRY_GAUTH_*",
        'testenv.commands=python -c "import gauth_demo_app; print(gauth_demo_app.hello())"',
    ]
    tox = [toolbox.exe("tox", "tox"), "run", "-e", "py"]
    for override in overrides:
        tox += ["-x", override]
    result = check(run(tox, env, cwd=project))
    assert "gauth-demo-app\n" in result.stdout
    assert set(registry.served_files(AR_HOST)) == PRIVATE_WHEELS
    assert token_fetches(fake_google) == 1


def test_printed_pipfile_installs_with_pipenv(toolbox, registry, fake_google, client_env, tmp_path):
    text = printed("pipenv")
    assert "export PIP_KEYRING_PROVIDER=subprocess" in text  # which pipenv_install sets
    project = pipenv_install(toolbox, client_env, tmp_path, text + 'gauth-demo-app = "*"\n')
    assert_project_venv_has_private_packages(registry, project)
    assert token_fetches(fake_google) == 1


def test_printed_pipx_commands_install_an_app(toolbox, registry, fake_google, client_env, tmp_path):
    repository = registry.repository(AR_HOST, "proj/repo")
    repository.add_file(toolbox.wheels["cli"])
    (pip_wheel,) = toolbox.wheelhouse.glob("pip-*.whl")
    repository.add_file(pip_wheel)  # the comment says: the repository serves pip too
    env = on_path(client_env, toolbox.bin("keyring25"), toolbox.bin("pipx"))
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "pipx-bin"))
    env["PIPX_MAN_DIR"] = str(tmp_path / "pipx-man")
    text = printed("pipx")
    then = printed_command(text, "Then")
    assert then == ["pipx", "install", "mypackage"]
    script = text + "pipx install gauth-demo-cli\n"
    check(run([SHELL, "-ec", script], env, timeout=300))
    app = check(run([tmp_path / "pipx-bin" / "gauth-demo"], env))
    assert app.stdout == "gauth-demo-lib\n"
    assert token_fetches(fake_google) == 1
