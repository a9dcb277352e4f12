"""gcloud: a fake executable laid out as an installed Cloud SDK, and the real one isolated.

`FakeGcloud` writes a ``gcloud`` script into the SDK layout and links it from a PATH
directory; the test configures it (`configure`) and reads what each run saw (`calls`) and
printed (`issued`, `principals`). `RealGcloud` runs the installed Cloud SDK against
loopback fakes only (`real_gcloud_env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from fakes import WINDOWS
from fakes.network import refused_port
from fakes.programs import write_program

_GCLOUD_SCRIPT = r'''"""Fake gcloud of fakes/gcloud.py, obeying gcloud.config.json beside it."""

import configparser
import json
import os
import re
import secrets
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENV_KEYS = (
    "CLOUDSDK_CORE_DISABLE_PROMPTS",
    "CLOUDSDK_CONFIG",
    "CLOUDSDK_ACTIVE_CONFIG_NAME",
    "CLOUDSDK_CORE_ACCOUNT",
    "CLOUDSDK_AUTH_IMPERSONATE_SERVICE_ACCOUNT",
)
NO_ACCOUNT = (
    "ERROR: (gcloud.config.config-helper) You do not currently have an active account selected.\n"
)
CONFIG_NAME = "^[a-z][-a-z0-9]*$"


def beside(name):
    return os.path.join(HERE, "gcloud." + name)


def append(name, record):
    with open(beside(name), "a") as f:
        f.write(json.dumps(record) + "\n")


def stdin_isatty():
    """A terminal on stdin (Windows: a console; isatty is also true there for NUL)."""
    try:
        if os.name != "nt":
            return os.isatty(0)
        import ctypes
        import msvcrt

        handle, mode = msvcrt.get_osfhandle(0), ctypes.c_uint32()
        return bool(ctypes.windll.kernel32.GetConsoleMode(handle, ctypes.byref(mode)))
    except OSError:
        return False


def read_stdin():
    """What the caller wrote to our stdin within 0.2 s (a thread: Windows cannot select a pipe)."""
    chunks = []

    def read():
        try:
            while True:
                chunk = os.read(0, 65536)
                if not chunk:
                    return
                chunks.append(chunk)
        except OSError:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(0.2)
    return b"".join(chunks).decode("utf-8", "replace")


def lock_exclusively(f):
    """Block until this process alone holds the lock on open file `f`."""
    if os.name == "nt":
        import msvcrt

        f.seek(0)
        while True:
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                time.sleep(0.01)
    import fcntl

    fcntl.flock(f, fcntl.LOCK_EX)


def wait(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not os.path.exists(beside("stop")):
        time.sleep(0.05)


def new_token():
    with open(beside("counter"), "a+") as f:
        lock_exclusively(f)
        f.seek(0)
        n = int(f.read() or 0) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return "ya29.gcloud-%d-%s" % (n, secrets.token_hex(8))


def properties():
    """Every property as gcloud reads it: variables, the active configuration, the installation."""
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or (
        os.path.join(os.environ["APPDATA"], "gcloud")
        if os.name == "nt"
        else os.path.expanduser("~/.config/gcloud")
    )
    name = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME") or ""
    rejected = False
    if not name:
        try:
            with open(os.path.join(config_dir, "active_config"), encoding="utf-8") as f:
                name = f.read()
        except FileNotFoundError:
            name = ""
        rejected = name and not re.match(CONFIG_NAME, name)
        name = "default" if rejected or not name else name
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    files = [os.path.join(root, "properties")]
    if name != "NONE" and not rejected:  # gcloud empties default's file after a rejected name
        files.append(os.path.join(config_dir, "configurations", "config_" + name))
    values = {}
    for path in files:
        parser = configparser.ConfigParser()
        parser.read(path, encoding="utf-8")
        for section in parser.sections():
            values.setdefault(section, {}).update(parser.items(section))
    for variable, value in os.environ.items():
        parts = variable.split("_", 2)
        if len(parts) == 3 and parts[0] == "CLOUDSDK" and parts[1] in ("CORE", "AUTH"):
            values.setdefault(parts[1].lower(), {})[parts[2].lower()] = value
    return name, config_dir, values


def principal(cfg, props):
    """Whose token gcloud would print: (principal, base account, fixed token or None)."""
    auth, core = props.get("auth", {}), props.get("core", {})
    account = core["account"] if "account" in core else cfg.get("account", "user@example.com")
    target = auth.get("impersonate_service_account", "").split(",")[-1].strip()
    if os.environ.get("CLOUDSDK_AUTH_ACCESS_TOKEN"):
        base, fixed = "token:$CLOUDSDK_AUTH_ACCESS_TOKEN", os.environ["CLOUDSDK_AUTH_ACCESS_TOKEN"]
    elif auth.get("access_token_file"):
        with open(auth["access_token_file"], encoding="utf-8") as f:
            base, fixed = "token:" + auth["access_token_file"], f.read().strip()
    elif auth.get("credential_file_override"):
        with open(auth["credential_file_override"], encoding="utf-8") as f:
            info = json.load(f)
        base, fixed = info.get("client_email") or "file:" + auth["credential_file_override"], None
    elif account:
        base, fixed = account, None
    else:
        return None, account, None
    if target:
        fixed = None  # impersonation trades the token in for the target's
    return (target or base), account, fixed


def config_helper(cfg, argv):
    if argv[:2] != ["config", "config-helper"] or not any(
        arg.startswith("--format=json") for arg in argv
    ):
        sys.stderr.write("ERROR: (gcloud) unsupported in fake\n")
        return 2
    name, config_dir, props = properties()
    who, account, fixed = principal(cfg, props)
    if who is None:
        sys.stderr.write(NO_ACCOUNT)
        return 1
    token = cfg["token"] if "token" in cfg else fixed if fixed is not None else new_token()
    expiry = None if cfg.get("expiry_null") or fixed is not None else (
        time.time() + cfg.get("expires_in", 3599)
    )
    if token:
        append("issued.jsonl", {"token": token, "expiry": expiry, "principal": who})
    core = dict(props.get("core", {}), account=account, project="example-project")
    output = {
        "configuration": {
            "active_configuration": cfg.get("configuration", name),
            "properties": dict(props, core=core),
        },
        "credential": {
            "access_token": token,
            "id_token": None,
            "token_expiry": None
            if expiry is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry)),
        },
        "sentinels": {"config_sentinel": os.path.join(config_dir, "config_sentinel")},
    }
    print(json.dumps(output, indent=2), flush=True)
    leave_a_child(cfg)
    return 0


def leave_a_child(cfg):
    """With ``linger``, a child left running that still holds gcloud's stdout and stderr."""
    if cfg.get("linger"):
        import subprocess

        sleep = "import time; time.sleep(%d)" % cfg["linger"]
        child = subprocess.Popen([sys.executable, "-c", sleep])
        append("lingering.jsonl", {"pid": child.pid})


def main():
    with open(beside("config.json")) as f:
        cfg = json.load(f)
    argv = sys.argv[1:]
    append(
        "calls.jsonl",
        {
            "argv": argv,
            "env": {key: os.environ.get(key) for key in ENV_KEYS},
            "stdin_isatty": stdin_isatty(),
            "stdin_data": read_stdin(),
            "pid": os.getpid(),
        },
    )
    mode = cfg.get("mode", "ok")
    if mode == "fail":
        message = cfg.get("stderr", NO_ACCOUNT)
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
        sys.stderr.flush()
        leave_a_child(cfg)
        return cfg.get("exit", 1)
    if mode == "junk":
        print(cfg.get("stdout", "this is not json"))
        return 0
    if mode == "stderr_only":
        sys.stderr.write("WARNING: fake gcloud has nothing to print on stdout\n")
        return 0
    if mode == "hang":
        wait(3600)
        return 1
    if mode == "sleep":
        wait(cfg["seconds"])
    return config_helper(cfg, argv)


sys.exit(main())
'''


class FakeGcloud:
    """A `gcloud` executable in bin_dir whose behaviour the test configures."""

    MODES = frozenset({"ok", "fail", "junk", "stderr_only", "hang", "sleep"})
    SETTINGS = frozenset(
        {
            "mode",
            "token",
            "expires_in",
            "expiry_null",
            "account",
            "configuration",
            "stderr",
            "exit",
            "stdout",
            "seconds",
            "linger",
        }
    )

    def __init__(self, bin_dir):
        """Lay out the SDK beside `bin_dir`; `on_path` is the directory to put on PATH.

        POSIX: the SDK's bin/gcloud is linked from `bin_dir`, as /usr/bin/gcloud is.
        Windows: the installer puts the SDK's bin directory itself on PATH, with gcloud.cmd.
        """
        self.sdk_root = bin_dir.parent / "google-cloud-sdk"
        (self.sdk_root / ".install").mkdir(parents=True)
        (self.sdk_root / "bin").mkdir()
        script = write_program(self.sdk_root / "bin" / "gcloud", _GCLOUD_SCRIPT)
        if WINDOWS:
            self.path = script
            self.on_path = script.parent
        else:
            self.path = bin_dir / "gcloud"
            self.path.symlink_to(script)
            self.on_path = bin_dir
        self.configure()

    @property
    def installation_properties(self):
        """The SDK's own properties file, read after the active configuration."""
        return self.sdk_root / "properties"

    def configure(self, **settings):
        """Replace the configuration; token="" or None is printed as given, not generated."""
        unknown = sorted(set(settings) - self.SETTINGS)
        if unknown:
            raise TypeError(f"unknown fake gcloud settings {unknown}")
        if settings.get("mode", "ok") not in self.MODES:
            raise ValueError(f"unknown fake gcloud mode {settings['mode']!r}")
        if settings.get("mode") == "sleep" and "seconds" not in settings:
            raise TypeError("mode='sleep' needs seconds=")
        staged = self._beside("config.json.new")
        staged.write_text(json.dumps(settings))
        staged.replace(self._beside("config.json"))

    @property
    def calls(self):
        """Every run so far: argv, env, stdin_isatty, stdin_data, pid."""
        return _read_json_lines(self._beside("calls.jsonl"))

    @property
    def lingering(self):
        """The pids of children that answered runs left behind (``linger``)."""
        return [entry["pid"] for entry in _read_json_lines(self._beside("lingering.jsonl"))]

    @property
    def issued(self):
        """Tokens printed so far, mapped to their expiry (epoch seconds, or None)."""
        return {
            entry["token"]: entry["expiry"]
            for entry in _read_json_lines(self._beside("issued.jsonl"))
        }

    @property
    def principals(self):
        """Tokens printed so far, mapped to whose they are (the impersonated account, if any)."""
        return {
            entry["token"]: entry["principal"]
            for entry in _read_json_lines(self._beside("issued.jsonl"))
        }

    def stop(self):
        """Make hung runs exit, and kill any that are still running."""
        self._beside("stop").touch()
        for call in self.calls:
            if _runs_script(call["pid"], self.path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(call["pid"], signal.SIGKILL)
            elif WINDOWS:
                # No /proc to check the PID against: a hung run sees "stop" within 50 ms and
                # exits; one still alive then is ended (taskkill's 128: it is already gone).
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(call["pid"])],
                    capture_output=True,
                    timeout=30,
                )

    def _beside(self, name):
        return self.path.with_name(f"gcloud.{name}")


def _read_json_lines(path):
    """Read a JSON-lines file, empty if it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs_script(pid, script):
    """Tell whether process `pid` is alive and running `script`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return os.fsencode(script) in cmdline.split(b"\0")


# Found before any test narrows PATH; None where no Cloud SDK is installed.
REAL_GCLOUD = shutil.which("gcloud")
ORIGINAL_PATH = os.environ.get("PATH", os.defpath)


class RealGcloud:
    """The installed Cloud SDK on PATH, isolated: its own config dir, loopback fakes only."""

    def __init__(self, path, env, token_endpoint, iam, key, tmp_path):
        self.path = path
        self.env = env
        self.token_endpoint = token_endpoint
        self.iam = iam
        self.key = key
        self.tmp_path = tmp_path

    def run(self, *args, check=True):
        """Run gcloud with args: the environment of the test, then the safety net on top."""
        done = subprocess.run(
            [str(self.path), *args],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"gcloud {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done

    def key_file(self, email, name=None):
        """Write a service-account key file for `email` that the fake token endpoint accepts."""
        self.token_endpoint.add_service_account(email, self.key.public_key)
        path = self.tmp_path / (name or f"{email.split('@')[0]}-key.json")
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "proj",
                    "private_key_id": "key-1",
                    "private_key": self.key.pkcs8_pem,
                    "client_email": email,
                    "client_id": "1234",
                    "token_uri": self.token_endpoint.token_url,
                }
            )
        )
        return path

    def activate(self, email):
        """`gcloud auth activate-service-account` with a new key file for `email`."""
        self.run("auth", "activate-service-account", f"--key-file={self.key_file(email)}")

    def principal(self, token):
        """Whose token it is: the service account, or the one impersonated with it."""
        entry = self.iam.issued.get(token) or self.token_endpoint.issued.get(token)
        return None if entry is None else entry["identity"]


def real_gcloud_env(token_endpoint, iam):
    """Everything that keeps a real gcloud on this machine and on our fakes, in one place.

    gcloud is a subprocess, beyond the in-process socket guard: a dead proxy catches any
    request to a real host, and the metadata server is a refused loopback port.
    """
    dead = f"127.0.0.1:{refused_port()}"
    env = {
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "GCE_METADATA_HOST": dead,
        "GCE_METADATA_IP": dead,
        "GCE_METADATA_ROOT": dead,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        # gcloud's own token endpoint and IAM, on loopback.
        "CLOUDSDK_AUTH_TOKEN_HOST": token_endpoint.token_url,
        "CLOUDSDK_AUTH_TOKEN_INTROSPECTION_ENDPOINT": f"http://127.0.0.1:{token_endpoint.port}/introspect",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_IAMCREDENTIALS": f"http://127.0.0.1:{iam.port}/",
        # Without this each refresh also asks for an ID token (gcloud's property
        # auth/service_account_disable_id_token_refresh).
        "CLOUDSDK_AUTH_SERVICE_ACCOUNT_DISABLE_ID_TOKEN_REFRESH": "true",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = f"http://{dead}"
    return env


def make_sdk_root(real_gcloud, directory):
    """An SDK root of our own around the installed gcloud's code, for its `properties` file.

    gcloud finds its root from where `googlecloudsdk/core` really is: that package is
    copied (5 MB), the rest linked.
    """
    real = Path(os.path.realpath(real_gcloud)).parent.parent
    root = Path(directory) / "google-cloud-sdk"
    (root / "bin").mkdir(parents=True)
    (root / ".install").mkdir()
    shutil.copy2(real / "bin" / "gcloud", root / "bin" / "gcloud")
    (root / "lib" / "googlecloudsdk").mkdir(parents=True)
    shutil.copy2(real / "lib" / "gcloud.py", root / "lib" / "gcloud.py")
    for entry in (real / "lib").iterdir():
        if entry.name not in ("gcloud.py", "googlecloudsdk", "__pycache__"):
            (root / "lib" / entry.name).symlink_to(entry)
    for entry in (real / "lib" / "googlecloudsdk").iterdir():
        if entry.name != "core":
            (root / "lib" / "googlecloudsdk" / entry.name).symlink_to(entry)
    shutil.copytree(real / "lib" / "googlecloudsdk" / "core", root / "lib/googlecloudsdk/core")
    if (real / "platform").exists():
        (root / "platform").symlink_to(real / "platform")
    return root
