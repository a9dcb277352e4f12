"""The token cache: one fetch serves the process, and the next processes, until it expires.

In-process reuse, the on-disk cache shared by processes (its file names, permissions,
locking and what it does with a damaged or foreign file), and many processes at once.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import MODE_BITS, OWNER, SYMLINK, posix_case, posix_only

INDEX = "https://us-python.pkg.dev/proj/repo/simple/"
ROOT = Path(__file__).resolve().parent


def keyring_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keyring", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def backend():
    return gauth.GooglePyPIAuth()


# --- the in-process cache ------------------------------------------------------------------


def test_ten_calls_make_one_token_request(monkeypatch, sa_file, fake_google, backend):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    tokens = {backend.get_password(INDEX, "oauth2accesstoken") for _ in range(10)}
    assert len(tokens) == 1
    assert len(fake_google.token_requests) == 1


def test_a_token_with_less_than_fifteen_minutes_left_is_not_handed_out_again(
    monkeypatch, sa_file, fake_google
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_file()))
    fake_google.expires_in = 10 * 60
    first = gauth.get_token()
    second = gauth.get_token()
    assert first != second
    assert len(fake_google.token_requests) == 2


def test_switching_the_adc_file_never_returns_the_old_identitys_token(
    monkeypatch, sa_file, fake_google
):
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(email="a@p.iam.gserviceaccount.com"))
    )
    first = gauth.get_token()
    monkeypatch.setenv(
        "GOOGLE_APPLICATION_CREDENTIALS", str(sa_file(email="b@p.iam.gserviceaccount.com"))
    )
    second = gauth.get_token()
    assert fake_google.issued[first]["identity"] == "a@p.iam.gserviceaccount.com"
    assert fake_google.issued[second]["identity"] == "b@p.iam.gserviceaccount.com"


def test_switching_gcloud_account_never_returns_the_old_accounts_token(monkeypatch, fake_gcloud):
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "a@example.com")
    first = gauth.get_token()
    monkeypatch.setenv("CLOUDSDK_CORE_ACCOUNT", "b@example.com")
    second = gauth.get_token()
    assert first != second
    assert len(fake_gcloud.calls) == 2


# --- the on-disk cache shared by processes ---------------------------------------------------


def as_new_process():
    """Forget what this process remembers, as a new pip or uv process would start."""
    gauth._forget_tokens()


def cache_files():
    directory = Path(os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"])
    return sorted(directory.glob("*.token")) if directory.is_dir() else []


def test_a_new_process_reuses_the_cached_token(sa_env, fake_google):
    first = gauth.get_token()
    as_new_process()
    assert gauth.get_token() == first
    assert len(fake_google.token_requests) == 1


@posix_only(MODE_BITS)
def test_cache_files_are_private(sa_env, fake_google):
    gauth.get_token()
    (path,) = cache_files()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_cache_file_names_reveal_nothing(sa_env, fake_google):
    token = gauth.get_token()
    (path,) = cache_files()
    for secretish in (token, "sa@proj", "sa-", "proj", str(sa_env)):
        assert secretish not in path.name
    assert all(p.name.endswith((".token", ".lock")) for p in path.parent.iterdir())


def test_the_cache_goes_to_the_users_cache_dir_by_default(
    monkeypatch, sa_env, fake_google, isolated_env
):
    # $XDG_CACHE_HOME, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows.
    monkeypatch.delenv("ARTIFACTREGISTRY_GAUTH_CACHE_DIR")
    gauth.get_token()
    assert list(isolated_env.default_cache_dir.glob("*.token"))


def test_no_cache_writes_nothing_and_fetches_each_process(monkeypatch, sa_env, fake_google):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_NO_CACHE", "1")
    gauth.get_token()
    as_new_process()
    gauth.get_token()
    assert cache_files() == []
    assert len(fake_google.token_requests) == 2


def test_a_cached_token_with_ten_minutes_left_is_refreshed(sa_env, fake_google):
    fake_google.expires_in = 10 * 60
    first = gauth.get_token()
    as_new_process()
    assert gauth.get_token() != first
    assert len(fake_google.token_requests) == 2


def test_an_edited_adc_file_is_a_new_identity(sa_env, fake_google, rsa_key):
    first = gauth.get_token()
    info = json.loads(sa_env.read_text())
    fake_google.add_service_account("other@proj.iam.gserviceaccount.com", rsa_key.public_key, "k9")
    info.update(client_email="other@proj.iam.gserviceaccount.com", private_key_id="k9")
    sa_env.write_text(json.dumps(info))
    as_new_process()
    second = gauth.get_token()
    assert fake_google.issued[first]["identity"] == "sa@proj.iam.gserviceaccount.com"
    assert fake_google.issued[second]["identity"] == "other@proj.iam.gserviceaccount.com"


def test_another_gcloud_configuration_is_a_new_identity(monkeypatch, fake_gcloud):
    config = Path(os.environ["CLOUDSDK_CONFIG"])
    (config / "configurations").mkdir(parents=True)
    for name, account in (("work", "me@work.example"), ("home", "me@home.example")):
        (config / "configurations" / f"config_{name}").write_text(f"[core]\naccount = {account}\n")
    (config / "active_config").write_text("work")
    first = gauth.get_token()
    as_new_process()
    (config / "active_config").write_text("home")
    second = gauth.get_token()
    as_new_process()
    (config / "active_config").write_text("work")
    assert gauth.get_token() == first != second
    assert len(fake_gcloud.calls) == 2


def test_the_metadata_server_is_not_pinged_again_while_its_token_is_cached(fake_metadata):
    gauth.get_token()
    count = len(fake_metadata.requests)
    as_new_process()
    gauth.get_token()
    assert len(fake_metadata.requests) == count


def test_handed_over_tokens_are_never_written_to_disk(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.handed-over")
    gauth.get_token()
    assert cache_files() == []


def edit_record(path, line, value):
    """Change one line of a token record (1: key, 2: expiry, 3: token, 4: source)."""
    lines = path.read_text().split("\n")
    lines[line] = value
    path.write_text("\n".join(lines))


def record_token(path):
    return path.read_text().split("\n")[3]


def corrupt(path, how):
    if how == "garbage":
        path.write_bytes(b"\x00\xffnot json")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    elif how == "wrong shape":
        path.write_text('["token", 1]')
    elif how == "another identity":
        edit_record(path, 1, "0" * 64)
    elif how == "expired":
        edit_record(path, 2, "1.0")
    elif how in BAD_FIELDS:
        edit_record(path, *BAD_FIELDS[how])
    elif how == "an old JSON record":
        token = record_token(path)
        path.write_text(json.dumps({"key": "0" * 64, "token": token, "expiry": 1e10}))
    elif how == "readable by others":
        path.chmod(0o644)
    elif how == "foreign owner":
        os.chown(path, 12345, 12345)
    elif how == "a directory":
        path.unlink()
        path.mkdir()
    elif how == "a symlink":
        target = path.with_name("elsewhere")
        path.rename(target)
        path.symlink_to(target)


BAD_FIELDS = {
    "expiry nan": (2, "nan"),
    "expiry infinite": (2, "inf"),
    "expiry absurd": (2, "1e300"),
    "expiry not a number": (2, "soon"),
    "token with a space": (3, "ya29.a b"),
    "token empty": (3, ""),
    "an extra line": (4, "source\nextra"),
}

CORRUPTIONS = [
    "garbage",
    "truncated",
    "wrong shape",
    "another identity",
    "expired",
    *BAD_FIELDS,
    "an old JSON record",
    posix_case("readable by others", reason=MODE_BITS),
    posix_case("foreign owner", reason=OWNER),
    "a directory",
    posix_case("a symlink", reason=SYMLINK),
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_bad_cache_file_is_ignored_and_still_yields_a_token(sa_env, fake_google, how):
    if how == "foreign owner" and os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    gauth.get_token()
    (path,) = cache_files()
    corrupt(path, how)
    as_new_process()
    token = gauth.get_token()
    assert fake_google.is_live(token)
    assert len(fake_google.token_requests) == 2
    if how != "a directory":  # the file was replaced by a good one
        as_new_process()
        assert gauth.get_token() == token


@pytest.mark.parametrize("how", ["a file", posix_case("foreign owner", reason=OWNER)])
def test_an_unusable_cache_directory_is_ignored(monkeypatch, tmp_path, sa_env, fake_google, how):
    directory = tmp_path / "cache-here"
    if how == "a file":
        directory.write_text("not a directory")
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory away")
        directory.mkdir()
        os.chown(directory, 12345, 12345)
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_CACHE_DIR", str(directory))
    assert fake_google.is_live(gauth.get_token())
    if directory.is_dir():
        assert list(directory.iterdir()) == []


@pytest.mark.clients
def test_ten_keyring_processes_make_one_token_request(sa_env, fake_google):
    tokens = set()
    for _ in range(10):
        result = keyring_cli("get", INDEX, "oauth2accesstoken")
        assert result.returncode == 0, result.stderr
        tokens.add(result.stdout.strip())
    assert len(tokens) == 1
    assert len(fake_google.token_requests) == 1


@pytest.mark.clients
def test_eight_concurrent_cold_processes_make_one_token_request(sa_env, fake_google):
    fake_google.delay = 0.5  # all eight are waiting while the first fetch is under way
    command = [sys.executable, "-m", "artifactregistry_gauth", "token"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert len({out.strip() for out, _ in outputs}) == 1
    assert len(fake_google.token_requests) == 1


@pytest.mark.clients
def test_sixteen_processes_through_a_cold_and_then_an_expiring_cache(sa_env, fake_google):
    fake_google.delay = 0.3  # the first fetch is still under way when the others ask
    command = [sys.executable, "-m", "keyring", "get", INDEX, "oauth2accesstoken"]

    def hammer():
        processes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(16)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        assert all(p.returncode == 0 for p in processes), outputs
        return {out.decode().strip() for out, _ in outputs}

    first = hammer()
    assert len(first) == 1 and all(fake_google.is_live(t) for t in first)
    # The cached token now has less than 15 minutes left (the fake still calls it live).
    (path,) = cache_files()
    edit_record(path, 2, repr(time.time() + gauth.MIN_TOKEN_LIFE - 60))
    assert path.stat().st_mode & 0o777 == 0o600  # still a trusted entry, only a stale one
    second = hammer()
    assert len(second) == 1 and second != first
    assert len(fake_google.token_requests) == 2
    assert record_token(path) in second


# --- the warm path parses only what it needs -----------------------------------------------------

WARM_PROBE = """
import sys, artifactregistry_gauth as m
code = m.main(["token"])
print(sorted(n for n in ("json", "re", "base64", "ssl", "urllib.request") if n in sys.modules))
print(code)
"""


def test_a_warm_token_call_imports_no_json_re_or_base64(sa_env, fake_google):
    token = gauth.get_token()  # primes the disk cache
    result = subprocess.run(
        [sys.executable, "-S", "-c", WARM_PROBE],  # -S: only what the call itself imports
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(gauth.__file__).parent,
    )
    assert result.stdout.splitlines() == [token, "[]", "0"], result.stderr
    assert len(fake_google.token_requests) == 1


def test_an_edited_credentials_file_is_a_new_identity_before_any_parsing(sa_env, fake_google):
    first = gauth.get_token()
    sa_env.write_text(sa_env.read_text() + "\n")  # the same key, other bytes: asked again
    as_new_process()
    assert gauth.get_token() != first
    assert len(fake_google.token_requests) == 2


def test_doctor_counts_the_cached_tokens(sa_env, fake_google):
    gauth.get_token()
    assert gauth.diagnose()["cache"]["entries"] == 1
