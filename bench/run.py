#!/usr/bin/env python3
"""artifactregistry-gauth side by side with keyrings.google-artifactregistry-auth.

    python3 bench/run.py [--project PATH] [--quick]

Builds throwaway venvs under bench/.venvs (reused between runs): this project installed
from PATH (default: the repo that holds bench/), the official plugin from PyPI, and a
do-nothing keyring backend as keyring's own floor. Runs them interleaved against fake
Google endpoints on loopback, prints medians and ratios, and writes bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from venvs import BenchSetupError, Venv

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the project's fakes: the test suite's own kit
from fakes.gcloud import FakeGcloud  # noqa: E402
from fakes.google import FakeGoogle, public_key_from_numbers  # noqa: E402
from fakes.metadata import FakeMetadata  # noqa: E402
from fakes.network import Listener, RoutingProxy, refused_port  # noqa: E402
from fakes.registry import FakeRegistry, wheel  # noqa: E402

REGISTRY_HOST = "us-python.pkg.dev"
REPO_PREFIX = "/bench-project/bench-repo"
REPO_URL = f"https://{REGISTRY_HOST}{REPO_PREFIX}/simple/"
USERNAME = "oauth2accesstoken"
SA_EMAIL = "bench@bench-project.iam.gserviceaccount.com"
SA_KEY_ID = "0123456789abcdef0123456789abcdef01234567"
GCLOUD_ACCOUNT = "dev@example.com"
POD_ACCOUNT = "pod-sa@bench-project.iam.gserviceaccount.com"
OFFICIAL_DIST = "keyrings.google-artifactregistry-auth"
HARD_TIMEOUT = 120.0
CONCURRENT = 8
INDEX_PACKAGES = 6
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
POD_START_REFUSAL = 2.0  # seconds a new GKE pod's metadata server refuses connections
# The DMI product name is read from a fixed path: point it at a file that says Google.
OURS_ON_GOOGLE_HARDWARE = (
    "import sys, artifactregistry_gauth as m\n"
    "m.DMI_PRODUCT_NAME = sys.argv[1]\n"
    "sys.exit(m.main(['token']))\n"
)
OFFICIAL_ON_GOOGLE_HARDWARE = (
    "import sys, google.auth.compute_engine._metadata as md, keyring.cli\n"
    "md._GCE_PRODUCT_NAME_FILE = sys.argv[1]\n"
    "sys.exit(keyring.cli.main(['get', sys.argv[2], sys.argv[3]]))\n"
)


@dataclass(frozen=True)
class Plan:
    """How many runs each scenario makes (per side)."""

    imports: int = 15
    sa_reps: int = 8  # each: one cold call, then warm ones
    sa_calls: int = 3
    gcloud_calls: int = 10
    nocreds_ours: int = 5
    nocreds_official: int = 3
    silent_reps: int = 2  # 0 skips the hanging-metadata variant
    pip_reps: int = 3
    concurrent_reps: int = 3
    token_reps: int = 20
    metadata_reps: int = 10
    pod_reps: int = 3


QUICK = Plan(
    imports=5,
    sa_reps=3,
    gcloud_calls=3,
    nocreds_ours=2,
    nocreds_official=1,
    silent_reps=0,
    pip_reps=1,
    concurrent_reps=1,
    token_reps=8,
    metadata_reps=5,
    pod_reps=2,
)


@dataclass(frozen=True)
class Side:
    """One installation under test: its venv and its keyring entry point."""

    name: str
    venv: Venv
    module: str

    @property
    def keyring(self) -> str:
        return self.venv.script("keyring")


# --- running processes ------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float | None  # None: killed at the hard timeout
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def first_error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return (lines[-1] if lines else f"exit {self.returncode}, nothing on stderr")[:200]


def run(command: list, env: dict, cwd: Path, timeout: float = HARD_TIMEOUT) -> Run:
    """Run a command to its end (or kill it at ``timeout``) and time it, wall clock."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Run(None, None, _text(out), _text(err))
    elapsed = time.perf_counter() - start
    return Run(elapsed, proc.returncode, _text(out), _text(err))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _median(samples: list) -> float:
    return statistics.median([math.inf if s is None else s for s in samples])


def _minimum(samples: list) -> float:
    finite = [s for s in samples if s is not None]
    return min(finite) if finite else math.inf


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f">{HARD_TIMEOUT:.0f} s"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


# --- results ------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure: samples per side, an optional reference (floor) and target."""

    key: str
    label: str
    ours: list
    official: list | None = None
    floor: list | None = None
    floor_label: str = ""
    unit: str = "s"  # "s" or "count"
    target: str = ""
    met: bool | None = None

    def cell(self, samples: list | None) -> str:
        if not samples:
            return "-"
        if self.unit == "count":
            med, lo, hi = statistics.median(samples), min(samples), max(samples)
            spread = f" ({lo:g}-{hi:g})" if lo != hi else ""
            return f"{med:g}{spread}"
        med = _median(samples)
        if len(samples) == 1:
            return fmt_time(med)
        return f"{fmt_time(med)} (min {fmt_time(_minimum(samples))})"

    def ratio(self) -> str:
        if not self.ours or not self.official:
            return "-"
        if self.unit == "count":
            ours, theirs = statistics.median(self.ours), statistics.median(self.official)
        else:
            ours, theirs = _median(self.ours), _median(self.official)
        if theirs == 0 or math.isinf(ours):
            return "-"
        if math.isinf(theirs):
            return f"<{ours / HARD_TIMEOUT:.3f}x"
        return _ratio(ours / theirs)

    def verdict(self) -> str:
        return {True: "✔", False: "✘", None: ""}[self.met]


@dataclass
class Findings:
    rows: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # answers that were wrong, per scenario
    notes: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def problem(self, scenario: str, side: str, what: str) -> None:
        self.problems.append(f"{scenario} / {side}: {what}")


# --- the fake world ---------------------------------------------------------------------------


class World:
    """Fake Google endpoints, key files, homes and caches for one bench run."""

    def __init__(self, work: Path, tools: Venv, token_latency: float, gcloud_delay: float):
        self.work = work
        material = work / "material"
        material.mkdir()
        done = subprocess.run(
            [tools.python, str(BENCH_DIR / "material.py"), str(material), REGISTRY_HOST],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise BenchSetupError(f"making keys and certificates failed:\n{done.stderr}")
        key = json.loads((material / "key.json").read_text())
        self.ca_file = material / "ca.pem"

        self.token = FakeGoogle()
        self.token.delay = token_latency
        self.token.add_service_account(
            SA_EMAIL, public_key_from_numbers(key["n"], key["e"]), SA_KEY_ID
        )
        self.token.start()
        self.sa_file = work / "service-account.json"
        self.sa_file.write_text(json.dumps(_service_account_info(key["pem"], self.token.token_url)))

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(material / "server.pem"))
        self.index = FakeRegistry(context, self.token)
        repository = self.index.repository(REGISTRY_HOST, REPO_PREFIX)
        for filename, data in index_wheels(INDEX_PACKAGES):
            repository.add(filename, data)
        self.index.start()
        self.proxy = RoutingProxy({REGISTRY_HOST: self.index.port}).start()
        self.silent = Listener(hold=True)
        self.refused = refused_port()

        self.home = work / "home"
        (self.home / ".config" / "gcloud").mkdir(parents=True)
        self.gcloud_bin = work / "gcloud-bin"
        self.gcloud_bin.mkdir()
        self.gcloud = FakeGcloud(self.gcloud_bin)  # its SDK layout goes beside gcloud-bin
        if gcloud_delay:
            self.gcloud.configure(mode="sleep", seconds=gcloud_delay, account=GCLOUD_ACCOUNT)
        else:
            self.gcloud.configure(account=GCLOUD_ACCOUNT)
        self.system_path = [
            d for d in SYSTEM_PATH if os.path.isdir(d) and not os.path.exists(f"{d}/gcloud")
        ]
        self._caches = 0

    def stop(self) -> None:
        self.gcloud.stop()
        for server in (self.token, self.index, self.proxy, self.silent):
            server.stop()

    def fresh_cache(self) -> Path:
        """A cache directory nobody used yet: the next call through it is cold."""
        self._caches += 1
        path = self.work / "caches" / str(self._caches)
        path.mkdir(parents=True)
        return path

    def gcloud_tokens(self) -> list:
        return list(self.gcloud.issued)

    @property
    def fetches(self) -> int:
        """Tokens the token endpoint issued so far."""
        return len(self.token.issued)

    def unauthorized_since(self, mark: int) -> int:
        """401 answers of the index to the requests after the first `mark`."""
        return sum(r.status == 401 for r in self.index.requests[mark:])

    def env(self, cache: Path, creds: str, path_dirs: tuple = (), metadata_ip: str = "") -> dict:
        """A clean environment with credentials ``sa``, ``gcloud`` or ``none``, all on loopback."""
        refused = f"127.0.0.1:{self.refused}"
        if creds == "gcloud":
            path_dirs = (*path_dirs, str(self.gcloud_bin))
        env = {
            "PATH": os.pathsep.join([*path_dirs, *self.system_path]),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(cache / "xdg"),
            "ARTIFACTREGISTRY_GAUTH_CACHE_DIR": str(cache / "gauth"),
            "CLOUDSDK_CONFIG": str(self.home / ".config" / "gcloud"),
            "GCE_METADATA_HOST": refused,
            "GCE_METADATA_IP": metadata_ip or refused,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PIP_CONFIG_FILE": os.devnull,
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.work),
        }
        if creds == "sa":
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(self.sa_file)
        return env


def index_wheels(count: int) -> list:
    """``bench-app`` depending on ``count - 1`` small libraries: (file name, bytes) each."""
    libs = [f"bench-lib-{i}" for i in range(1, count)]
    return [
        *(wheel(name, "1.0") for name in libs),
        wheel("bench-app", "1.0", requires=tuple(libs), source="import bench_lib_1\n"),
    ]


def _starting_pod_metadata() -> FakeMetadata:
    """A GKE pod's metadata server; `refuse_for` makes it one that is still starting."""
    mds = FakeMetadata()
    mds.email, mds.project_id, mds.instance_id = POD_ACCOUNT, "bench-project", "4242424242"
    return mds.start()


FLOOR_TOKEN = "ya29.bench-constant"
FLOOR_MODULE = f'''\
"""A keyring backend that answers a constant: what keyring costs on its own."""

from keyring.backend import KeyringBackend


class ConstantBackend(KeyringBackend):
    priority = 9

    def get_password(self, service, username):
        return {FLOOR_TOKEN!r}

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError
'''


def floor_backend_wheel() -> tuple[str, bytes]:
    return wheel(
        "bench-floor-backend",
        "1.0",
        files={"bench_floor_backend.py": FLOOR_MODULE},
        entry_points="[keyring.backends]\nbench-floor = bench_floor_backend\n",
    )


def _service_account_info(pem: str, token_uri: str) -> dict:
    return {
        "type": "service_account",
        "project_id": "bench-project",
        "private_key_id": SA_KEY_ID,
        "private_key": pem,
        "client_email": SA_EMAIL,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/bench",
        "universe_domain": "googleapis.com",
    }


# --- scenarios --------------------------------------------------------------------------------


class Bench:
    def __init__(self, world: World, sides: dict, plan: Plan, findings: Findings, tools: Venv):
        self.world, self.plan, self.findings, self.tools = world, plan, findings, tools
        self.ours, self.official, self.floor = sides["ours"], sides["official"], sides["floor"]
        self.baseline = sides.get("baseline")  # --baseline: an earlier checkout, for 7

    def _keyring_get(self, side: Side, env: dict) -> Run:
        return run([side.keyring, "get", REPO_URL, USERNAME], env, self.world.work)

    def _answer_ok(self, scenario: str, side: Side, result: Run, live) -> bool:
        token = result.stdout.strip()
        if result.returncode == 0 and live(token):
            return True
        self.findings.problem(scenario, side.name, result.first_error_line)
        return False

    # 1 --------------------------------------------------------------------------------------
    def imports(self) -> None:
        fresh = (
            "import json, sys, time\n"
            "n = len(sys.modules); t = time.perf_counter()\n"
            "import {module}\n"
            "print(json.dumps([time.perf_counter() - t, len(sys.modules) - n]))\n"
        )
        in_keyring = (
            "import json, sys, time, importlib.metadata as md\n"
            "import keyring, keyring.backend, keyring.credentials\n"
            "eps = md.entry_points()\n"
            "eps = eps.select(group='keyring.backends') if hasattr(eps, 'select') "
            "else eps.get('keyring.backends', [])\n"
            "ep = [e for e in eps if e.value.split(':')[0] == {module!r}][0]\n"
            "n = len(sys.modules); t = time.perf_counter()\n"
            "ep.load()\n"
            "print(json.dumps([time.perf_counter() - t, len(sys.modules) - n]))\n"
        )
        env = self.world.env(self.world.fresh_cache(), "none")
        samples = {(kind, side): [] for kind in ("fresh", "keyring") for side in ("ours", "off")}
        modules = {}
        for rep in range(self.plan.imports + 1):
            for kind, code in (("fresh", fresh), ("keyring", in_keyring)):
                for name, side in (("ours", self.ours), ("off", self.official)):
                    result = run(
                        [side.venv.python, "-c", code.format(module=side.module)],
                        env,
                        self.world.work,
                    )
                    if result.returncode != 0:
                        self.findings.problem("1 import", side.name, result.first_error_line)
                        continue
                    seconds, count = json.loads(result.stdout)
                    modules[(kind, name)] = count
                    if rep:  # the first round only warms the disk caches
                        samples[(kind, name)].append(seconds)
        ours, off = samples[("fresh", "ours")], samples[("fresh", "off")]
        self.findings.rows.append(
            Row(
                "1a",
                f"`import` of the backend module, fresh interpreter "
                f"(modules loaded: ours {modules.get(('fresh', 'ours'))}, "
                f"official {modules.get(('fresh', 'off'))})",
                ours,
                off,
                target="< 5 ms",
                met=bool(ours) and _median(ours) < 0.005,
            )
        )
        self.findings.rows.append(
            Row(
                "1b",
                "keyring loading the plugin's entry point, keyring already imported "
                f"(modules loaded: ours {modules.get(('keyring', 'ours'))}, "
                f"official {modules.get(('keyring', 'off'))})",
                samples[("keyring", "ours")],
                samples[("keyring", "off")],
            )
        )

    # 2 --------------------------------------------------------------------------------------
    def service_account(self) -> None:
        world, sides = self.world, (self.ours, self.official, self.floor)
        live = {
            "ours": world.token.is_live,
            "official": world.token.is_live,
            "floor": lambda t: t == FLOOR_TOKEN,
        }
        for side in sides:  # warm-up, not counted
            self._keyring_get(side, world.env(world.fresh_cache(), "sa"))
        first = {s.name: [] for s in sides}
        warm = {s.name: [] for s in sides}
        fetches = {s.name: 0 for s in sides}
        warm_fetches = {s.name: 0 for s in sides}
        for _ in range(self.plan.sa_reps):
            caches = {s.name: world.fresh_cache() for s in sides}
            for call in range(self.plan.sa_calls):
                for side in sides:
                    before = world.fetches
                    result = self._keyring_get(side, world.env(caches[side.name], "sa"))
                    fetched = world.fetches - before
                    self._answer_ok("2 service account", side, result, live[side.name])
                    fetches[side.name] += fetched
                    if call == 0 and side is not self.floor:
                        first[side.name].append(result.seconds)
                    else:
                        warm[side.name].append(result.seconds)
                        warm_fetches[side.name] += fetched
        floor = warm["floor"] + first["floor"]
        calls = self.plan.sa_reps * self.plan.sa_calls
        warm_calls = self.plan.sa_reps * (self.plan.sa_calls - 1)
        self.findings.facts["cross_process_cache"] = warm_fetches["ours"] < warm_calls
        rows = self.findings.rows
        rows.append(
            Row(
                "2a",
                "`keyring get URL oauth2accesstoken`, service-account key, first call (cold)",
                first["ours"],
                first["official"],
                floor,
                "do-nothing backend",
            )
        )
        rows.append(
            Row(
                "2b",
                "the same, warm calls (cache primed by the first call)",
                warm["ours"],
                warm["official"],
                floor,
                "do-nothing backend",
                target="<= 1.10 x floor",
                met=_median(warm["ours"]) <= 1.10 * _median(floor),
            )
        )
        rows.append(
            Row(
                "2c",
                f"token fetches per {self.plan.sa_calls} calls (1 cold + warm)",
                [fetches["ours"] / self.plan.sa_reps],
                [fetches["official"] / self.plan.sa_reps],
                unit="count",
                target="1",
                met=fetches["ours"] == self.plan.sa_reps,
            )
        )
        latency = self.world.token.delay
        local = {
            name: [_median(first[name]) - _median(floor) - latency] for name in ("ours", "official")
        }
        rows.append(
            Row(
                "2d",
                "local work of a cold call, estimated: 2a minus the floor minus the fake token "
                f"endpoint's {latency * 1000:g} ms",
                local["ours"],
                local["official"],
                target="< 20 ms",
                met=local["ours"][0] < 0.020,
            )
        )
        self.findings.notes.append(
            f"2: {calls} calls per side; token fetches in total: ours {fetches['ours']}, "
            f"official {fetches['official']}."
        )

    # 3 --------------------------------------------------------------------------------------
    def gcloud_only(self) -> None:
        world, sides = self.world, (self.ours, self.official, self.floor)
        caches = {s.name: world.fresh_cache() for s in sides}
        times = {s.name: [] for s in sides}
        starts = {s.name: 0 for s in sides}
        for _ in range(self.plan.gcloud_calls):
            for side in sides:
                before = set(world.gcloud_tokens())
                result = self._keyring_get(side, world.env(caches[side.name], "gcloud"))
                issued = set(world.gcloud_tokens())
                starts[side.name] += len(issued - before)
                live = (lambda t: t == FLOOR_TOKEN) if side is self.floor else issued.__contains__
                self._answer_ok("3 gcloud only", side, result, live)
                times[side.name].append(result.seconds)
        n = self.plan.gcloud_calls
        rows = self.findings.rows
        rows.append(
            Row(
                "3a",
                "`keyring get`, gcloud-only credentials (gcloud takes ~1 s), first call",
                times["ours"][:1],
                times["official"][:1],
                times["floor"],
                "do-nothing backend",
            )
        )
        rows.append(
            Row(
                "3b",
                f"the same, warm calls 2-{n}",
                times["ours"][1:],
                times["official"][1:],
                times["floor"],
                "do-nothing backend",
                target="<= 1.10 x floor",
                met=bool(times["ours"][1:])
                and _median(times["ours"][1:]) <= 1.10 * _median(times["floor"]),
            )
        )
        rows.append(
            Row(
                "3c",
                f"all {n} calls, total",
                [sum(t if t is not None else math.inf for t in times["ours"])],
                [sum(t if t is not None else math.inf for t in times["official"])],
                [sum(t if t is not None else math.inf for t in times["floor"])],
                "do-nothing backend",
            )
        )
        rows.append(
            Row(
                "3d",
                f"gcloud starts per {n} calls",
                [starts["ours"]],
                [starts["official"]],
                unit="count",
                target="1",
                met=starts["ours"] == 1,
            )
        )

    # 4 --------------------------------------------------------------------------------------
    def no_credentials(self) -> None:
        world = self.world
        variants = [("refused", "", self.plan.nocreds_ours, self.plan.nocreds_official)]
        if self.plan.silent_reps:
            silent = f"127.0.0.1:{world.silent.port}"
            variants.append(("silent", silent, self.plan.silent_reps, self.plan.silent_reps))
        for variant, metadata_ip, n_ours, n_official in variants:
            times = {"ours": [], "official": []}
            stderr_lines = {"ours": 0, "official": 0}
            for i in range(max(n_ours, n_official)):
                for side, count in ((self.ours, n_ours), (self.official, n_official)):
                    if i >= count:
                        continue
                    env = world.env(world.fresh_cache(), "none", metadata_ip=metadata_ip)
                    result = self._keyring_get(side, env)
                    if result.returncode == 0:
                        self.findings.problem("4 no credentials", side.name, "answered a token")
                    times[side.name].append(result.seconds)
                    stderr_lines[side.name] = len(result.stderr.splitlines())
            if variant == "refused":
                self.findings.rows.append(
                    Row(
                        "4a",
                        "no credentials, off Google Cloud (metadata port refuses): time to "
                        f"give up (stderr lines: ours {stderr_lines['ours']}, "
                        f"official {stderr_lines['official']})",
                        times["ours"],
                        times["official"],
                        target="< 1 s",
                        met=_median(times["ours"]) < 1.0,
                    )
                )
            else:
                self.findings.rows.append(
                    Row(
                        "4b",
                        "the same, metadata address accepts and never answers "
                        "(a black-holed 169.254.169.254)",
                        times["ours"],
                        times["official"],
                    )
                )

    # 5 --------------------------------------------------------------------------------------
    def pip_install(self) -> None:
        world = self.world
        links = {}
        for side in (self.ours, self.official):
            link_dir = world.work / f"keyring-{side.name}"
            link_dir.mkdir()
            (link_dir / "keyring").symlink_to(side.keyring)
            links[side.name] = str(link_dir)
        index_url = REPO_URL.replace("https://", f"https://{USERNAME}@")
        for provider in ("import", "subprocess"):
            times = {"ours": [], "official": []}
            fetches = {"ours": [], "official": []}
            unauthorized = {"ours": 0, "official": 0}
            for rep in range(self.plan.pip_reps + 1):
                for side in (self.ours, self.official):
                    target = Path(tempfile.mkdtemp(prefix="pip-target-", dir=world.work))
                    if provider == "import":
                        pip, path_dirs = side.venv.python, ()
                    else:
                        # pip skips a keyring in its own venv, so it runs from another one.
                        pip, path_dirs = self.tools.python, (links[side.name],)
                    command = [
                        pip,
                        "-m",
                        "pip",
                        "install",
                        "--no-input",
                        "--no-cache-dir",
                        "--disable-pip-version-check",
                        "--no-compile",
                        "--target",
                        str(target),
                        "--index-url",
                        index_url,
                        "--cert",
                        str(world.ca_file),
                        "--proxy",
                        world.proxy.url,
                        "--keyring-provider",
                        provider,
                        "bench-app",
                    ]
                    env = world.env(world.fresh_cache(), "sa", path_dirs)
                    before = world.fetches
                    mark = len(world.index.requests)
                    result = run(command, env, world.work)
                    installed = (target / "bench_app" / "__init__.py").is_file()
                    if result.returncode != 0 or not installed:
                        self.findings.problem(
                            f"5 pip ({provider})", side.name, result.first_error_line
                        )
                    if rep == 0:
                        continue  # warm-up
                    times[side.name].append(result.seconds)
                    fetches[side.name].append(world.fetches - before)
                    unauthorized[side.name] += world.unauthorized_since(mark)
                    shutil.rmtree(target, ignore_errors=True)
            key = "5a" if provider == "import" else "5c"
            per_run = {name: count / self.plan.pip_reps for name, count in unauthorized.items()}
            rows = self.findings.rows
            rows.append(
                Row(
                    key,
                    f"pip install of {INDEX_PACKAGES} packages, `--keyring-provider {provider}`:"
                    " token fetches per run",
                    fetches["ours"],
                    fetches["official"],
                    unit="count",
                    target="1",
                    met=bool(fetches["ours"]) and all(f == 1 for f in fetches["ours"]),
                )
            )
            rows.append(
                Row(
                    "5b" if provider == "import" else "5d",
                    "the same, wall time of the pip run (index 401 responses per run: "
                    f"ours {per_run['ours']:g}, official {per_run['official']:g})",
                    times["ours"],
                    times["official"],
                )
            )

    # 6 --------------------------------------------------------------------------------------
    def concurrent(self) -> None:
        world = self.world
        fetches = {"ours": [], "official": []}
        walls = {"ours": [], "official": []}
        for _ in range(self.plan.concurrent_reps):
            for side in (self.ours, self.official):
                env = world.env(world.fresh_cache(), "sa")
                before = world.fetches
                start = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        [side.keyring, "get", REPO_URL, USERNAME],
                        env=env,
                        cwd=world.work,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        start_new_session=True,
                    )
                    for _ in range(CONCURRENT)
                ]
                results = []
                for proc in procs:
                    left = max(0.1, HARD_TIMEOUT - (time.perf_counter() - start))
                    try:
                        out, err = proc.communicate(timeout=left)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        out, err = proc.communicate()
                    results.append(Run(0.0, proc.returncode, out.decode(), err.decode()))
                walls[side.name].append(time.perf_counter() - start)
                fetches[side.name].append(world.fetches - before)
                for result in results:
                    self._answer_ok("6 concurrent", side, result, world.token.is_live)
        rows = self.findings.rows
        rows.append(
            Row(
                "6a",
                f"{CONCURRENT} concurrent cold `keyring get` processes: token fetches in total",
                fetches["ours"],
                fetches["official"],
                unit="count",
                target="1",
                met=all(f == 1 for f in fetches["ours"]),
            )
        )
        rows.append(
            Row(
                "6b",
                f"the same, wall time until all {CONCURRENT} have answered",
                walls["ours"],
                walls["official"],
            )
        )

    # 7 --------------------------------------------------------------------------------------
    def own_token(self) -> None:
        world = self.world
        env = world.env(world.fresh_cache(), "sa")
        script = self.ours.venv.script("artifactregistry-gauth")
        commands = {
            "7": ("`artifactregistry-gauth token`", [script, "token"]),
            "7b": (
                "`artifactregistry-gauth get URL oauth2accesstoken`",
                [script, "get", REPO_URL, USERNAME],
            ),
        }
        if self.baseline is not None:  # measured interleaved, against the same floor
            before = self.baseline.venv.script("artifactregistry-gauth")
            commands["7-before"] = (f"{commands['7'][0]} (baseline)", [before, "token"])
            commands["7b-before"] = (
                f"{commands['7b'][0]} (baseline)",
                [before, "get", REPO_URL, USERNAME],
            )
        floor_command = [self.ours.venv.python, "-c", "pass"]
        for key in commands:  # primes each side's cache
            run(commands[key][1], env, world.work)
        run(floor_command, env, world.work)
        times = {key: [] for key in commands}
        floor = []
        before = world.fetches
        for _ in range(self.plan.token_reps):
            for key, (_, command) in commands.items():
                result = run(command, env, world.work)
                self._answer_ok(f"{key} token", self.ours, result, world.token.is_live)
                times[key].append(result.seconds)
            floor.append(run(floor_command, env, world.work).seconds)
        fetched = world.fetches - before
        calls = self.plan.token_reps * len(commands)
        for key, (label, _) in commands.items():
            self.findings.rows.append(
                Row(
                    key,
                    f"{label}, warm cache, service-account key "
                    f"(token fetches in {calls} warm calls: {fetched})",
                    times[key],
                    None,
                    floor,
                    "`python -c pass`",
                    target="<= 1.6 x floor",
                    met=_median(times[key]) <= 1.6 * _median(floor),
                )
            )

    # 8 --------------------------------------------------------------------------------------
    def metadata(self) -> None:
        world = self.world
        black_hole = f"127.0.0.1:{world.silent.port}"
        commands = {
            "8a": (
                "`artifactregistry-gauth token`",
                [self.ours.venv.script("artifactregistry-gauth"), "token"],
            ),
            "8b": ("`keyring get`", [self.ours.keyring, "get", REPO_URL, USERNAME]),
        }
        for key, (label, command) in commands.items():
            caches = {"black hole": world.fresh_cache(), "refused": world.fresh_cache()}
            addresses = {"black hole": black_hole, "refused": ""}
            times = {"black hole": [], "refused": []}
            for variant in caches:  # cold: gcloud starts once, the black hole is waited out once
                env = world.env(caches[variant], "gcloud", metadata_ip=addresses[variant])
                run(command, env, world.work)
            for _ in range(self.plan.metadata_reps):
                for variant in caches:
                    env = world.env(caches[variant], "gcloud", metadata_ip=addresses[variant])
                    result = run(command, env, world.work)
                    issued = set(world.gcloud_tokens())
                    self._answer_ok(f"8 metadata {variant}", self.ours, result, issued.__contains__)
                    times[variant].append(result.seconds)
            self.findings.rows.append(
                Row(
                    key,
                    f"{label}, gcloud-only credentials, warm: the metadata address is a black hole "
                    "(accepts, never answers) vs. refuses",
                    times["black hole"],
                    None,
                    times["refused"],
                    "metadata address refuses",
                    target="<= 1.10 x refused",
                    met=_median(times["black hole"]) <= 1.10 * _median(times["refused"]),
                )
            )
        self.pod_start()

    def pod_start(self) -> None:
        world = self.world
        mds = _starting_pod_metadata()
        dmi = world.work / "dmi-product-name"
        dmi.write_text("Google Compute Engine\n")
        commands = {
            "ours": [self.ours.venv.python, "-c", OURS_ON_GOOGLE_HARDWARE, str(dmi)],
            "official": [
                self.official.venv.python,
                "-c",
                OFFICIAL_ON_GOOGLE_HARDWARE,
                str(dmi),
                REPO_URL,
                USERNAME,
            ],
        }
        times = {"ours": [], "official": []}
        try:
            for _ in range(self.plan.pod_reps):
                for side in (self.ours, self.official):
                    env = world.env(world.fresh_cache(), "none")
                    env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = mds.host
                    mds.refuse_for(POD_START_REFUSAL)
                    result = run(commands[side.name], env, world.work)
                    self._answer_ok("8c pod start", side, result, mds.is_live)
                    times[side.name].append(result.seconds)
        finally:
            mds.stop()
        self.findings.rows.append(
            Row(
                "8c",
                f"new GKE pod: the metadata server refuses connections for "
                f"{POD_START_REFUSAL:g} s, Google hardware (DMI product name simulated): "
                "time to a token",
                times["ours"],
                times["official"],
                target="token, < 10 s",
                met=bool(times["ours"]) and _median(times["ours"]) < 10.0,
            )
        )


SCENARIOS = (
    ("1", "import time", Bench.imports),
    ("2", "keyring get, service-account key", Bench.service_account),
    ("3", "keyring get, gcloud only", Bench.gcloud_only),
    ("4", "no credentials", Bench.no_credentials),
    ("5", "pip install", Bench.pip_install),
    ("6", "concurrent cold processes", Bench.concurrent),
    ("7", "artifactregistry-gauth token", Bench.own_token),
    ("8", "metadata address: black hole, pod start", Bench.metadata),
)


# --- setting up ---------------------------------------------------------------------------------


def tools_venv(root: Path, base_python: str) -> Venv:
    """The venv with the bench's test-only tools: cryptography (the fakes) and trustme."""
    tools = Venv(root, "tools")
    tools.ensure(base_python, ["--upgrade", "pip", "cryptography", "trustme"])
    return tools


def _has_cryptography() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _rerun_with_tools(args, argv: list) -> None:
    """Run the bench again in the tools venv: the fake token endpoint checks RS256 with
    cryptography, which this interpreter lacks. The venvs stay built for args.python."""
    tools = tools_venv(args.venvs / _python_tag(), args.python)
    again = [a for a in argv if a != "--refresh"]
    command = [tools.python, str(Path(__file__).resolve()), *again, "--python", args.python]
    os.execv(tools.python, command)  # noqa: S606 (no shell: the same bench, another Python)


def _python_tag() -> str:
    return "py" + "".join(platform.python_version_tuple()[:2])


def build_venvs(root: Path, base_python: str, refresh: bool, work: Path) -> dict:
    if refresh:
        shutil.rmtree(root, ignore_errors=True)
    tools = tools_venv(root, base_python)
    pip_version = tools.versions("pip")["pip"]
    pin = f"pip=={pip_version}"

    floor_wheel_name, floor_wheel = floor_backend_wheel()
    wheel_path = work / floor_wheel_name
    wheel_path.write_bytes(floor_wheel)
    floor = Venv(root, "floor")
    floor.ensure(base_python, [pin, "keyring", str(wheel_path)], FLOOR_MODULE)
    keyring_pin = f"keyring=={floor.versions('keyring')['keyring']}"

    official = Venv(root, "official")
    official.ensure(base_python, [pin, keyring_pin, OFFICIAL_DIST])
    ours = Venv(root, "ours")
    ours.ensure(base_python, [pin, keyring_pin])
    baseline = Venv(root, "baseline")
    baseline.ensure(base_python, [pin, keyring_pin])
    return {
        "tools": tools,
        "floor": floor,
        "official": official,
        "ours": ours,
        "baseline": baseline,
    }


def install_project(ours: Venv, project: Path, work: Path) -> dict:
    """Install the project from a clean copy of ``project`` (so nothing is written there)."""
    copy = work / f"project-copy-{ours.name}"
    shutil.copytree(
        project,
        copy,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "venv",
            ".venvs",
            ".ci",
            "bench",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".ruff_cache",
            ".pytest_cache",
        ),
    )
    ours.pip("install", "--no-deps", "--force-reinstall", "--no-cache-dir", str(copy))
    probe = (
        "import json, artifactregistry_gauth as m; print(json.dumps([m.__file__, m.__version__]))"
    )
    done = subprocess.run(
        [ours.python, "-c", probe], capture_output=True, text=True, cwd=work, check=True
    )
    path, version = json.loads(done.stdout)
    if not path.startswith(str(ours.path)):
        raise BenchSetupError(f"artifactregistry_gauth imported from {path}, not the venv")
    return {"version": version, **_git_facts(project)}


def _git_facts(project: Path) -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(project), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def _command_line(argv: list) -> str:
    """How the bench was started, without the --note text (the report shows it anyway)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            shown.append(arg)
    return shlex.join(["python3", "bench/run.py", *shown])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_facts(python: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.replace(chr(10), ' '))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    return {
        "uname": uname or " ".join(platform.uname()),
        "python": version,
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "load": _load(),
    }


# --- report ------------------------------------------------------------------------------------


def table(rows: list) -> str:
    lines = [
        "| # | figure | ours | official | us/official | floor | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        floor = f"{row.cell(row.floor)} ({row.floor_label})" if row.floor else "-"
        if row.official is None and row.floor:
            ratio = _ratio(_median(row.ours) / _median(row.floor)) + " floor"
        else:
            ratio = row.ratio()
        lines.append(
            f"| {row.key} | {row.label} | {row.cell(row.ours)} | {row.cell(row.official)} "
            f"| {ratio} | {floor} | {row.target or '-'} | {row.verdict()} |"
        )
    return "\n".join(lines)


def report(findings: Findings, facts: dict, args, plan: Plan, elapsed: float) -> str:
    project = facts["project"]
    versions = facts["versions"]
    dirty = " (uncommitted changes)" if project["dirty"] else ""
    cache = findings.facts.get("cross_process_cache")
    cache_line = {
        True: "yes (warm `keyring get` processes reused a token another process fetched)",
        False: "no (every `keyring get` process fetched its own token: in-process cache only)",
        None: "not measured",
    }[cache]
    out = [
        "# artifactregistry-gauth vs keyrings.google-artifactregistry-auth",
        "",
    ]
    if args.note:
        out += [f"**{args.note}**", ""]
    out += [
        f"- Date: {facts['date']}",
        f"- Command: `{facts['command']}` ({'quick' if args.quick else 'full'} run, "
        f"{elapsed:.0f} s in all)",
        f"- Machine: `{facts['machine']['uname']}`",
        f"- CPU: {facts['machine']['cpu']}, {facts['machine']['cpus']} CPUs "
        f"(load average at start {facts['machine']['load']}, at the end {_load()})",
        f"- Python: {facts['machine']['python']}",
        f"- Project measured: `{args.project}`, branch `{project['branch']}`, "
        f"commit `{project['commit']}`{dirty}, artifactregistry-gauth {project['version']}",
        *(
            [
                f"- Baseline (rows marked so): `{args.baseline}`, commit "
                f"`{facts['baseline']['commit'] or 'unknown: not a git checkout'}`"
            ]
            if facts.get("baseline")
            else []
        ),
        f"- Cross-process token cache observed: {cache_line}",
        "- Versions: "
        + ", ".join(f"{name} {version}" for name, version in versions.items() if version),
        f"- Fake token endpoint answers after {args.token_latency_ms:g} ms; fake gcloud "
        f"starts in {args.gcloud_delay:g} s; hard timeout per process {HARD_TIMEOUT:.0f} s.",
        "",
        "Figures are medians (and minimum) of wall-clock times over the runs; each side ran "
        "interleaved with the other (A B A B ...), from its own venv, against the same fake "
        "endpoints on loopback. *us/official* is ours divided by the official plugin's; *floor* "
        "is the same command answered by a backend that does nothing (or `python -c pass`).",
        "",
        table(findings.rows),
        "",
    ]
    met = [r for r in findings.rows if r.met is not None]
    out.append(f"Targets met: {sum(1 for r in met if r.met)} of {len(met)}.")
    out.append("")
    if findings.problems:
        out += ["## Problems seen during the run", ""]
        seen = {}
        for problem in findings.problems:
            seen[problem] = seen.get(problem, 0) + 1
        out += [f"- {text} (x{count})" for text, count in seen.items()]
        out.append("")
    out += ["## Notes", ""]
    busy = [os.getloadavg()[0], float(facts["machine"]["load"].split()[0])]
    if max(busy) > 0.5 * (os.cpu_count() or 1):
        out.append(
            "- The machine was busy with other work during the run (see the load averages): "
            "absolute times carry that noise, the interleaved ratios and the minimums less so."
        )
    out += [f"- {note}" for note in findings.notes]
    out += [
        "- 1a times `import MODULE` inside a fresh interpreter; 1b times keyring's own "
        "`entry_point.load()` of the plugin with keyring already imported (what the plugin "
        "adds to every keyring start).",
        "- 4a points GCE_METADATA_HOST and GCE_METADATA_IP at a loopback port that refuses "
        "connections (nothing may leave loopback). In 4b the ping address accepts and never "
        "answers, as a black-holed 169.254.169.254 does; artifactregistry-gauth waits its "
        "0.5 s ping timeout there (3 s only when the DMI product name says Google).",
        "- 8a/8b prime each cache with one cold call (gcloud starts once, the black hole is "
        "waited out once), then time warm calls. In 8c each process points the DMI product name "
        "path its library reads (ours: `artifactregistry_gauth.DMI_PRODUCT_NAME`, official: "
        "`google.auth.compute_engine._metadata._GCE_PRODUCT_NAME_FILE`) at a file saying Google, "
        "and the fake metadata server resets every connection until its refusal time is over.",
        "- 5 runs pip from the side's own venv for `import`, and from a separate venv with the "
        "side's `keyring` on PATH for `subprocess` (pip skips a keyring in its own venv). The "
        "index is reached as https://us-python.pkg.dev through a loopback CONNECT proxy with a "
        "throwaway CA, and accepts only `oauth2accesstoken:<live token>`.",
    ]
    return "\n".join(out) + "\n"


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark artifactregistry-gauth against the official plugin."
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=BENCH_DIR.parent,
        help="the artifactregistry-gauth checkout to install and measure (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs, skip slow variants")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier checkout whose warm token calls (7) are timed beside this one's",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenario numbers to run, e.g. 2,6"
    )
    parser.add_argument(
        "--output", type=Path, default=BENCH_DIR / "RESULTS.md", help="where to write the report"
    )
    parser.add_argument("--note", default="", help="a line to put at the top of the report")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the venvs (default: this one)"
    )
    parser.add_argument(
        "--venvs", type=Path, default=BENCH_DIR / ".venvs", help="where the venvs are kept"
    )
    parser.add_argument("--refresh", action="store_true", help="rebuild the venvs")
    parser.add_argument(
        "--token-latency-ms",
        type=float,
        default=100.0,
        help="how long the fake token endpoint takes to answer (default: %(default)g)",
    )
    parser.add_argument(
        "--gcloud-delay",
        type=float,
        default=1.0,
        help="seconds the fake gcloud takes to start (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    args.project = args.project.resolve()
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    return args


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    if not _has_cryptography():
        _rerun_with_tools(args, argv if argv is not None else sys.argv[1:])
    plan = QUICK if args.quick else Plan()
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.monotonic()
    python_tag = _python_tag()
    with tempfile.TemporaryDirectory(prefix="arg-bench-") as tmp:
        work = Path(tmp)
        try:
            sys.stderr.write("setting up venvs (reused when already built)\n")
            venvs = build_venvs(args.venvs / python_tag, args.python, args.refresh, work)
            sys.stderr.write(f"installing {args.project}\n")
            project = install_project(venvs["ours"], args.project, work)
            baseline = None
            if args.baseline is not None:
                sys.stderr.write(f"installing the baseline {args.baseline}\n")
                baseline = install_project(venvs["baseline"], args.baseline, work)
            world = World(work, venvs["tools"], args.token_latency_ms / 1000.0, args.gcloud_delay)
        except BenchSetupError as exc:
            sys.stderr.write(f"bench: {exc}\n")
            return 1
        sides = {
            "ours": Side("ours", venvs["ours"], "artifactregistry_gauth"),
            "official": Side("official", venvs["official"], "keyrings.gauth"),
            "floor": Side("floor", venvs["floor"], "bench_floor_backend"),
        }
        if args.baseline is not None:
            sides["baseline"] = Side("baseline", venvs["baseline"], "artifactregistry_gauth")
        versions = {
            **venvs["official"].versions(
                "keyring", "pip", OFFICIAL_DIST, "google-auth", "requests", "pluggy"
            ),
            "artifactregistry-gauth": project["version"],
        }
        facts = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": _command_line(argv if argv is not None else sys.argv[1:]),
            "machine": machine_facts(venvs["ours"].python),
            "project": project,
            "baseline": baseline,
            "versions": versions,
        }
        findings = Findings()
        bench = Bench(world, sides, plan, findings, venvs["tools"])
        try:
            for number, title, scenario in SCENARIOS:
                if wanted and number not in wanted:
                    continue
                t0 = time.monotonic()
                sys.stderr.write(f"scenario {number}: {title} ...")
                sys.stderr.flush()
                scenario(bench)
                sys.stderr.write(f" {time.monotonic() - t0:.0f} s\n")
        finally:
            world.stop()
        if world.token.rejected:
            findings.notes.append(
                "The fake token endpoint rejected assertions: "
                + "; ".join(sorted(set(world.token.rejected)))
            )
        if world.proxy.rejected:
            findings.notes.append(
                "The CONNECT proxy refused: " + "; ".join(sorted(set(world.proxy.rejected)))
            )
    text = report(findings, facts, args, plan, time.monotonic() - started)
    args.output.write_text(text)
    sys.stdout.write(text)
    sys.stderr.write(f"wrote {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
