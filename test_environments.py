"""Where users really run it: a GKE pod at start, a laptop whose metadata address is a
black hole, VMs sharing a home directory, and the warm command line."""

import json
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import artifactregistry_gauth as gauth
from fakes import MODE_BITS, SYMLINK, assert_private, posix_case, posix_only
from fakes.network import server_context
from fakes.testing import run_main

ROOT = Path(__file__).resolve().parent


def as_new_process():
    """Forget what this process remembers, as a new pip or uv process would start."""
    gauth._forget_tokens()


def metadata_files():
    directory = os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"]
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if name.endswith(".metadata"))


def ping_settings(monkeypatch):
    """Record (timeout, attempts) of every metadata ping."""
    seen = []
    original = gauth.Transport.request

    def spy(self, method, url, **kwargs):
        if url.endswith("/") and "computeMetadata" not in url:
            seen.append((kwargs.get("timeout"), kwargs.get("attempts")))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(gauth.Transport, "request", spy)
    return seen


class Connects:
    """Connections this process opened to a metadata address."""

    count = 0


@pytest.fixture
def connects(monkeypatch, isolated_env, fake_metadata):
    """Count connects to the fake metadata server or the refused port, as the client makes them."""
    counter = Connects()
    ports = {fake_metadata.port, int(isolated_env.dead_metadata_host.rpartition(":")[2])}
    guarded = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[1] in ports:
            counter.count += 1
        return guarded(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return counter


def refused_metadata_address(monkeypatch, isolated_env):
    """Point the metadata settings at a loopback port that refuses connections."""
    monkeypatch.setenv("GCE_METADATA_HOST", isolated_env.dead_metadata_host)
    monkeypatch.setenv("GCE_METADATA_IP", isolated_env.dead_metadata_host)


# --- a new GKE pod: the metadata server refuses for a few seconds ------------------------------


@pytest.mark.parametrize("refusals", [1, 3, 4])
def test_google_hardware_waits_for_a_metadata_server_that_is_still_starting(
    on_google_hardware, fake_metadata, fake_gcloud, refusals
):
    fake_metadata.refuse_connections(refusals)
    assert fake_metadata.is_live(gauth.get_token())
    assert fake_gcloud.calls == []


def test_off_google_hardware_a_refused_metadata_address_is_tried_once(
    connects, monkeypatch, isolated_env, fake_gcloud
):
    refused_metadata_address(monkeypatch, isolated_env)
    assert gauth.get_token() in fake_gcloud.issued
    assert connects.count == 1


@pytest.mark.parametrize("status", [301, 403, 404, 500, 503])
def test_only_a_200_with_metadata_flavor_counts_as_a_metadata_server(
    fake_metadata, fake_gcloud, status
):
    fake_metadata.script((status, "not a metadata server"))
    assert gauth.get_token() in fake_gcloud.issued
    assert [r.path for r in fake_metadata.requests] == ["/"]


@pytest.mark.parametrize(
    ("google_hardware", "env", "expected"),
    [
        (False, {}, (0.5, 1)),
        (True, {}, (3.0, 3)),
        (False, {"GCE_METADATA_TIMEOUT": "2"}, (2.0, 1)),
        (False, {"GCE_METADATA_DETECT_RETRIES": "2"}, (0.5, 2)),
        (False, {"ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET": "60"}, (0.5, 1)),
        (True, {"GCE_METADATA_TIMEOUT": "7", "GCE_METADATA_DETECT_RETRIES": "5"}, (7.0, 5)),
        (True, {"GCE_METADATA_TIMEOUT": "60", "GCE_METADATA_DETECT_RETRIES": "99"}, (10.0, 10)),
    ],
)
def test_gce_metadata_timeout_and_detect_retries_set_the_ping(
    request, monkeypatch, fake_metadata, google_hardware, env, expected
):
    if google_hardware:
        request.getfixturevalue("on_google_hardware")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = ping_settings(monkeypatch)
    gauth.get_token()
    assert seen == [expected]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[("GCE_METADATA_TIMEOUT", v) for v in ("", "abc", "nan", "inf", "-inf", "-1", "0")],
        *[("GCE_METADATA_TIMEOUT", v) for v in ("1e999", "3 s")],
        *[("GCE_METADATA_DETECT_RETRIES", v) for v in ("", "0", "-2", "two", "2.5", "1e3")],
        *[("GCE_METADATA_DETECT_RETRIES", v) for v in (" ", "3 times")],
    ],
)
def test_a_bad_metadata_setting_means_the_default(
    monkeypatch, on_google_hardware, fake_metadata, name, value
):
    monkeypatch.setenv(name, value)
    seen = ping_settings(monkeypatch)
    gauth.get_token()
    assert seen == [(3.0, 3)]


@pytest.mark.parametrize("name", ["GCE_METADATA_HOST", "GCE_METADATA_IP"])
@pytest.mark.parametrize(
    "value",
    [
        *("::1]", "]", "[::1", "[::1]x", "a b", "h\u00e9te", "127.0.0.1\n", "%41", "user@host"),
        *("127.0.0.1:x", "127.0.0.1:", "127.0.0.1:99999", "host/path", "127.0.0.1:9/x?y"),
    ],
)
def test_a_malformed_metadata_address_is_a_clear_error(monkeypatch, fake_gcloud, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(gauth.CredentialError, match=f"{name} is .*not a host or host:port"):
        gauth.get_token()


# --- a warm token costs no probe: the "not on Google Cloud" verdict is remembered ---------------


def test_a_black_holed_metadata_address_is_not_asked_again_by_the_next_process(
    connects, fake_metadata, fake_gcloud
):
    fake_metadata.black_hole = True
    first = gauth.get_token()
    connections = connects.count
    as_new_process()
    assert gauth.get_token() == first
    assert connects.count == connections
    assert len(fake_gcloud.calls) == 1


def test_a_refusing_metadata_address_is_known_without_loading_the_http_stack(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing may leave loopback
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    code = (
        "import sys, artifactregistry_gauth as m\n"
        "m.DMI_PRODUCT_NAME = '/nonexistent/product_name'\n"
        "code = m.main(['token'])\n"
        "print(sorted(n for n in ('http.client', 'urllib.request') if n in sys.modules), code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.stdout == "[] 1\n", result.stderr
    assert "Connection refused" in result.stderr


def test_a_refused_metadata_address_is_asked_again_by_the_next_process(
    connects, monkeypatch, isolated_env, fake_gcloud
):
    refused_metadata_address(monkeypatch, isolated_env)
    gauth.get_token()
    as_new_process()
    gauth.get_token()
    assert connects.count == 2
    assert metadata_files() == []


def _change_metadata_host(monkeypatch, fake, tmp_path):
    monkeypatch.setenv("GCE_METADATA_HOST", f"localhost:{fake.port}")


def _change_metadata_ip(monkeypatch, fake, tmp_path):
    monkeypatch.setenv("GCE_METADATA_IP", f"localhost:{fake.port}")


def _change_hostname(monkeypatch, fake, tmp_path):
    monkeypatch.setattr(gauth, "_hostname", lambda: "another-machine")


def _change_boot_id(monkeypatch, fake, tmp_path):
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("00000000-0000-4000-8000-000000000000\n")
    monkeypatch.setattr(gauth, "BOOT_ID", str(boot_id))


def _change_product_name(monkeypatch, fake, tmp_path):
    product_name = tmp_path / "another-product-name"
    product_name.write_text("Standard PC (Q35 + ICH9, 2009)\n")
    monkeypatch.setattr(gauth, "DMI_PRODUCT_NAME", str(product_name))


@pytest.mark.parametrize(
    "change",
    [
        _change_metadata_host,
        _change_metadata_ip,
        _change_hostname,
        _change_boot_id,
        _change_product_name,
    ],
)
def test_another_machine_or_metadata_address_asks_again(
    connects, monkeypatch, tmp_path, fake_metadata, fake_gcloud, change
):
    fake_metadata.black_hole = True
    gauth.get_token()
    connections = connects.count
    change(monkeypatch, fake_metadata, tmp_path)
    as_new_process()
    gauth.get_token()
    assert connects.count > connections


def test_the_black_hole_verdict_expires(connects, monkeypatch, fake_metadata, fake_gcloud):
    fake_metadata.black_hole = True
    gauth.get_token()
    connections = connects.count
    as_new_process()
    later = gauth._now() + gauth.METADATA_ABSENT_MEMORY + 1
    monkeypatch.setattr(gauth, "_now", lambda: later)
    gauth.get_token()
    assert connects.count > connections


def test_google_hardware_is_never_told_it_is_not_on_google_cloud(
    request, fake_metadata, fake_gcloud
):
    fake_metadata.black_hole = True
    gauth.get_token()
    fake_metadata.black_hole = False
    request.getfixturevalue("on_google_hardware")
    as_new_process()
    assert fake_metadata.is_live(gauth.get_token())


def test_the_verdict_file_is_private_and_its_name_says_nothing(fake_metadata, fake_gcloud):
    fake_metadata.black_hole = True
    gauth.get_token()
    (name,) = metadata_files()
    path = os.path.join(os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"], name)
    assert_private(path)
    assert all(c in "0123456789abcdef" for c in name.removesuffix(".metadata"))


def test_doctor_says_the_verdict_is_remembered_and_how_to_forget_it(fake_metadata, fake_gcloud):
    fake_metadata.black_hole = True
    gauth.get_token()
    as_new_process()
    (step,) = [s for s in gauth.diagnose()["sources"] if s["source"] == "metadata server"]
    assert step["status"] == "skipped"
    assert "remembered" in step["detail"]
    assert metadata_files()[0] in step["detail"]


def _memory_path():
    return gauth._MetadataMemory(gauth.MetadataServer())._path(
        os.environ["ARTIFACTREGISTRY_GAUTH_CACHE_DIR"]
    )


def _memory_key():
    return gauth._MetadataMemory(gauth.MetadataServer()).key


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        (b"not json", 0o600),
        (b"\xff\xfe", 0o600),
        (b"[" * 100_000, 0o600),
        (json.dumps({"key": "0" * 64, "at": 0, "verdict": "absent"}).encode(), 0o600),
        ("key-at-in-the-future", 0o600),
        posix_case("absent-readable-by-others", 0o644, reason=MODE_BITS),
        ("present-with-a-number-for-account", 0o600),
        ("absent-at-is-a-string", 0o600),
        ("absent-at-is-nan", 0o600),
    ],
)
def test_a_hostile_verdict_file_is_ignored(fake_metadata, content, mode):
    now, key = gauth._now(), _memory_key()
    records = {
        "key-at-in-the-future": {"key": key, "at": now + 86400, "verdict": "absent"},
        "absent-readable-by-others": {"key": key, "at": now, "verdict": "absent"},
        "present-with-a-number-for-account": {
            "key": key,
            "at": now,
            "verdict": "present",
            "account": 5,
            "instance_id": "1",
        },
        "absent-at-is-a-string": {"key": key, "at": str(now), "verdict": "absent"},
        "absent-at-is-nan": {"key": key, "at": float("nan"), "verdict": "absent"},
    }
    if isinstance(content, str):
        content = json.dumps(records[content]).encode()
    path = _memory_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)
    assert fake_metadata.is_live(gauth.get_token())


# --- the metadata server's identity: its service account and instance -------------------------


@pytest.mark.parametrize(
    "other",
    [{"email": "other-sa@proj.iam.gserviceaccount.com"}, {"instance_id": "9876543210"}],
)
def test_vms_sharing_a_home_directory_each_get_their_own_token(monkeypatch, fake_metadata, other):
    first = gauth.get_token()
    # Another VM with the same metadata host and the same cache directory (NFS).
    monkeypatch.setattr(gauth, "_hostname", lambda: "another-vm")
    for name, value in other.items():
        setattr(fake_metadata, name, value)
    as_new_process()
    second = gauth.get_token()
    assert second != first
    assert fake_metadata.issued[second]["identity"] == fake_metadata.email


def test_identity_is_asked_directly_with_metadata_flavor(monkeypatch, fake_metadata):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a proxy that refuses everything
    gauth.get_token()
    paths = [r.path for r in fake_metadata.requests]
    assert paths[:3] == [
        "/",
        "/computeMetadata/v1/instance/service-accounts/default/email",
        "/computeMetadata/v1/instance/id",
    ]
    assert all(r.headers["metadata-flavor"] == "Google" for r in fake_metadata.requests)


def test_a_warm_call_on_google_cloud_asks_the_metadata_server_nothing(
    connects, on_google_hardware, fake_metadata
):
    gauth.get_token()
    connections = connects.count
    as_new_process()
    gauth.get_token()
    assert connects.count == connections


def test_the_service_account_is_asked_again_when_its_memory_expires(
    connects, monkeypatch, fake_metadata
):
    gauth.get_token()
    connections = connects.count
    as_new_process()
    later = gauth._now() + gauth.METADATA_IDENTITY_MEMORY + 1
    monkeypatch.setattr(gauth, "_now", lambda: later)
    gauth.get_token()
    assert connects.count > connections


@posix_only(SYMLINK)
def test_a_verdict_file_that_is_a_symlink_is_ignored(tmp_path, fake_metadata):
    planted = tmp_path / "planted"
    planted.write_text(json.dumps({"key": _memory_key(), "at": gauth._now(), "verdict": "absent"}))
    planted.chmod(0o600)
    path = _memory_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.symlink(planted, path)
    assert fake_metadata.is_live(gauth.get_token())


def test_doctor_names_the_metadata_servers_service_account(fake_metadata):
    report = gauth.diagnose()
    assert fake_metadata.email in report["token"]["source"]
    (step,) = [s for s in report["sources"] if s["source"] == "metadata server"]
    assert fake_metadata.email in step["detail"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((200, ""), "answered its service account with something unexpected"),
        ((200, "two words"), "answered its service account with something unexpected"),
        ((200, "x" * 300), "answered its service account with something unexpected"),
        ((200, "bell\x07"), "answered its service account with something unexpected"),
        ((403, "denied"), "answered HTTP 403 for its service account"),
    ],
)
def test_a_strange_service_account_answer_is_a_clear_error(fake_metadata, reply, message):
    fake_metadata.script((200, "computeMetadata/\n"), reply)
    with pytest.raises(gauth.CredentialError, match=message):
        gauth.get_token()


# --- a remembered "absent" never fails a lookup that a fresh look would pass ------------------


@pytest.fixture
def patient_ping(monkeypatch):
    """The ping a lookup makes before it says "no credentials", shortened for tests."""
    monkeypatch.setattr(gauth, "METADATA_PING_TIMEOUT_ON_GCE", 1.5)


def test_a_slow_first_ping_does_not_hide_the_metadata_server(fake_metadata, patient_ping):
    fake_metadata.ping_delay = 0.7  # a cold start, where the DMI product name is unreadable
    assert fake_metadata.is_live(gauth.get_token())
    fake_metadata.ping_delay = 0.0
    as_new_process()
    assert fake_metadata.is_live(gauth.get_token())


def test_a_remembered_absence_is_checked_again_before_saying_no_credentials(
    fake_metadata, patient_ping
):
    fake_metadata.black_hole = True
    with pytest.raises(gauth.CredentialError, match="no Google credentials found"):
        gauth.get_token()
    assert metadata_files()  # remembered
    fake_metadata.black_hole = False
    as_new_process()
    assert fake_metadata.is_live(gauth.get_token())


def test_no_credentials_names_the_metadata_server_once(fake_metadata, patient_ping):
    fake_metadata.black_hole = True
    report = []
    with pytest.raises(gauth.CredentialError) as failure:
        gauth.lookup(report=report)
    assert str(failure.value).count("not on Google Cloud") == 1
    assert [step["source"] for step in report].count("metadata server") == 1


@pytest.mark.parametrize(
    "name",
    [
        *("K_SERVICE", "CLOUD_RUN_JOB", "FUNCTION_TARGET", "FUNCTION_REGION", "GAE_SERVICE"),
        "BUILDER_OUTPUT",
    ],
)
def test_where_the_environment_says_google_cloud_absence_is_not_remembered(
    monkeypatch, fake_metadata, fake_gcloud, name
):
    monkeypatch.setenv(name, "set-by-google")
    fake_metadata.black_hole = True
    assert gauth.get_token() in fake_gcloud.issued
    assert metadata_files() == []
    fake_metadata.black_hole = False
    as_new_process()
    assert fake_metadata.is_live(gauth.get_token())


def test_kubernetes_alone_is_no_sign_of_google_cloud(
    connects, monkeypatch, fake_metadata, fake_gcloud
):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    fake_metadata.black_hole = True
    gauth.get_token()
    connections = connects.count
    as_new_process()
    assert gauth.get_token() in fake_gcloud.issued
    assert connects.count == connections  # the warm call is probe-free


# --- on Google hardware, metadata discovery has its own budget ---------------------------------


class VirtualTime:
    """The time module, but sleeping only moves a virtual clock forward (for long waits)."""

    def __init__(self):
        self.offset = 0.0
        self.start = time.monotonic()

    def elapsed(self):
        """Seconds on this clock since it was made: the waits slept plus the time really spent."""
        return self.monotonic() - self.start

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        self.offset += seconds

    def monotonic(self):
        return time.monotonic() + self.offset

    def time(self):
        return time.time() + self.offset


@pytest.fixture
def virtual_time(monkeypatch):
    """Let the lookup and the fake servers wait in virtual time."""
    import fakes.network

    clock = VirtualTime()
    monkeypatch.setattr(gauth, "time", clock)
    monkeypatch.setattr(fakes.network, "time", clock)
    return clock


@pytest.mark.parametrize("seconds", [12, 18])
def test_a_pod_whose_metadata_server_refuses_for_long_still_gets_a_token(
    on_google_hardware, fake_metadata, fake_gcloud, virtual_time, seconds
):
    fake_metadata.refuse_for(seconds)
    assert fake_metadata.is_live(gauth.get_token())
    assert seconds <= virtual_time.elapsed() <= 30
    assert fake_gcloud.calls == []


def test_the_metadata_budget_is_set_by_a_variable(
    monkeypatch, on_google_hardware, fake_metadata, virtual_time
):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET", "45")
    fake_metadata.refuse_for(38)
    assert fake_metadata.is_live(gauth.get_token())


@pytest.mark.parametrize("value", ["", "abc", "nan", "inf", "-5", "0"])
def test_a_bad_metadata_budget_means_the_default(
    monkeypatch, on_google_hardware, fake_metadata, virtual_time, value
):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET", value)
    fake_metadata.refuse_for(60)
    with pytest.raises(gauth.CredentialError):
        gauth.get_token()
    assert 25 <= virtual_time.elapsed() <= 31


def test_off_google_hardware_the_lookup_budget_is_unchanged(
    monkeypatch, fake_metadata, virtual_time
):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET", "60")
    fake_metadata.script(*[(503, "starting")] * 50)
    with pytest.raises(gauth.CredentialError):
        gauth.get_token()
    assert virtual_time.offset <= gauth.LOOKUP_BUDGET


# --- Metadata-Flavor where google-auth checks it, and an instance id that cannot be read -------


def test_data_answers_without_metadata_flavor_are_taken(fake_metadata):
    fake_metadata.data_flavor = False  # an emulator, or a proxy that drops the header
    assert fake_metadata.is_live(gauth.get_token())


def test_a_ping_without_metadata_flavor_is_no_metadata_server(fake_metadata, fake_gcloud):
    fake_metadata.google_flavor = False
    assert gauth.get_token() in fake_gcloud.issued


INSTANCE_ID_FAILURES = [(403, "denied"), (404, "none"), (500, "oops"), (200, "two words")]


@pytest.mark.parametrize("answer", INSTANCE_ID_FAILURES)
def test_an_unreadable_instance_id_is_no_failure(fake_metadata, fake_gcloud, answer):
    fake_metadata.instance_id_answer = answer
    assert fake_metadata.is_live(gauth.get_token())
    assert fake_gcloud.calls == []


@pytest.mark.parametrize("answer", INSTANCE_ID_FAILURES)
def test_without_an_instance_id_vms_sharing_a_home_never_share_a_token(
    monkeypatch, fake_metadata, answer
):
    fake_metadata.instance_id_answer = answer
    first = gauth.get_token()
    monkeypatch.setattr(gauth, "_hostname", lambda: "another-vm")  # the same home over NFS
    as_new_process()
    assert gauth.get_token() != first


# --- GCE_METADATA_MTLS_MODE: https with the metadata server's client certificate --------------


@pytest.fixture
def mds_certificates(tmp_path, monkeypatch, test_ca):
    """The metadata server's root and client certificate files, where the module looks."""
    directory = tmp_path / "google-mds-mtls"
    directory.mkdir()
    monkeypatch.setattr(gauth, "METADATA_MTLS_DIR", str(directory))
    root, client = gauth._metadata_mtls_files()
    test_ca.cert_pem.write_to_path(root)
    test_ca.issue_cert("gce-client.example").private_key_and_cert_chain_pem.write_to_path(client)
    return directory


@pytest.fixture
def mtls_metadata(fake_metadata, monkeypatch, test_ca):
    """The fake metadata server also on https, demanding a client certificate of the test CA."""
    context = server_context(test_ca, ["127.0.0.1"])
    context.verify_mode = ssl.CERT_REQUIRED
    test_ca.configure_trust(context)
    server = fake_metadata.serve(context)
    fake_metadata.plain_host = fake_metadata.host
    fake_metadata.tls_host = f"127.0.0.1:{server.port}"
    return fake_metadata


def point_metadata_at(monkeypatch, host):
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    monkeypatch.setenv("GCE_METADATA_IP", host)


@pytest.mark.parametrize("mode", ["strict", "default", "DEFAULT"])
def test_mtls_mode_speaks_https_with_the_client_certificate(
    monkeypatch, mds_certificates, mtls_metadata, mode
):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", mode)
    point_metadata_at(monkeypatch, mtls_metadata.tls_host)
    assert mtls_metadata.is_live(gauth.get_token())
    assert {r.scheme for r in mtls_metadata.requests} == {"https"}


@pytest.mark.parametrize("mode", ["none", "", "default"])
def test_plain_http_without_mtls_or_without_its_certificates(monkeypatch, fake_metadata, mode):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", mode)
    monkeypatch.setattr(gauth, "METADATA_MTLS_DIR", "/nonexistent/google-mds-mtls")
    assert fake_metadata.is_live(gauth.get_token())
    assert {r.scheme for r in fake_metadata.requests} == {"http"}


def test_mode_none_ignores_the_certificates(monkeypatch, mds_certificates, fake_metadata):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", "none")
    assert fake_metadata.is_live(gauth.get_token())


def test_strict_without_the_certificates_is_one_clear_line(monkeypatch, fake_metadata):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", "strict")
    monkeypatch.setattr(gauth, "METADATA_MTLS_DIR", "/nonexistent/google-mds-mtls")
    with pytest.raises(gauth.CredentialError) as failure:
        gauth.get_token()
    message = str(failure.value)
    assert "GCE_METADATA_MTLS_MODE is strict" in message
    assert "/nonexistent/google-mds-mtls" in message
    assert "\n" not in message
    assert fake_metadata.requests == []  # never plain http


def test_strict_never_falls_back_to_plain_http(monkeypatch, mds_certificates, mtls_metadata):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", "strict")
    point_metadata_at(monkeypatch, mtls_metadata.plain_host)  # speaks http only
    with pytest.raises(gauth.CredentialError):
        gauth.get_token()
    assert mtls_metadata.requests == []


def test_default_falls_back_to_http_with_a_warning(
    monkeypatch, caplog, mds_certificates, mtls_metadata
):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", "default")
    point_metadata_at(monkeypatch, mtls_metadata.plain_host)
    with caplog.at_level(logging.WARNING, logger="artifactregistry_gauth"):
        assert mtls_metadata.is_live(gauth.get_token())
    assert any("mutual TLS" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["strictly", "on", "true", "1"])
def test_an_unknown_mtls_mode_is_one_clear_line(monkeypatch, fake_metadata, value):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", value)
    with pytest.raises(
        gauth.CredentialError, match="GCE_METADATA_MTLS_MODE is .*strict, default or none"
    ):
        gauth.get_token()


def test_an_unusable_client_certificate_is_one_clear_line(
    monkeypatch, mds_certificates, mtls_metadata
):
    monkeypatch.setenv("GCE_METADATA_MTLS_MODE", "strict")
    point_metadata_at(monkeypatch, mtls_metadata.tls_host)
    _, client = gauth._metadata_mtls_files()  # client.key; mds-mtls-client.key on Windows
    Path(client).write_text("not a certificate\n")
    with pytest.raises(gauth.CredentialError, match=re.escape(os.path.basename(client))):
        gauth.get_token()


# --- the metadata server as a source: never through a proxy, one short ping, errors named ----


def test_metadata_server_token_never_goes_through_a_proxy(monkeypatch, fake_metadata):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # a proxy that refuses everything
    token = gauth.get_token()
    assert fake_metadata.is_live(token)
    paths = [r.path for r in fake_metadata.requests]
    assert paths[0] == "/"
    assert paths[-1] == (
        "/computeMetadata/v1/instance/service-accounts/default/token"
        "?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
    )
    assert all(r.headers["metadata-flavor"] == "Google" for r in fake_metadata.requests)


def test_a_hanging_metadata_server_costs_only_the_ping_timeout(fake_metadata, fake_gcloud):
    fake_metadata.script("HANG")
    assert gauth.get_token() in fake_gcloud.issued
    assert [r.path for r in fake_metadata.requests] == ["/"]


@pytest.mark.parametrize(("google_hardware", "timeout"), [(True, 3.0), (False, 0.5)])
def test_the_metadata_ping_waits_longer_only_on_google_hardware(
    request, monkeypatch, fake_metadata, google_hardware, timeout
):
    if google_hardware:
        request.getfixturevalue("on_google_hardware")
    seen = []
    original = gauth.Transport.request

    def spy(self, method, url, **kwargs):
        if url.endswith("/") and method == "GET":
            seen.append(kwargs.get("timeout"))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(gauth.Transport, "request", spy)
    gauth.get_token()
    assert seen == [timeout]


def test_metadata_server_error_is_reported(fake_metadata):
    fake_metadata.script((200, "computeMetadata/"), (403, "denied"))
    with pytest.raises(gauth.CredentialError, match="metadata server answered HTTP 403"):
        gauth.get_token()


# --- the warm command line: argparse only when the plain forms do not do ------------------------

INDEX = "https://us-python.pkg.dev/proj/repo/simple/"
COMMAND_LINES = [
    ["token"],
    ["token", "--url", INDEX],
    ["token", "--url=" + INDEX],
    ["token", "--url", "https://pypi.org/simple/"],
    ["token", "--url", "-x"],
    ["token", "--url"],
    ["token", "--help"],
    ["token", "--bogus"],
    ["token", "extra"],
    [],
    ["--help"],
    ["--help", "token"],
    ["--version"],
    ["bogus"],
    ["doctor", "--bogus"],
    ["doctor", "-h"],
    ["print-settings"],
    ["print-settings", "--location", "us", "--project", "p", "--repository", "r", "--tool", "uv"],
    ["get", INDEX, "oauth2accesstoken"],
    ["--output", "json", "get", INDEX, "oauth2accesstoken"],
    ["--mode", "creds", "get", INDEX],
    ["--mode=creds", "--output=json", "get", INDEX],
    ["get", "us-python.pkg.dev", "--mode", "creds"],
    ["get", INDEX, "oauth2accesstoken", "--output=json", "--mode", "creds"],
    ["get", "--mode", "creds", INDEX],
    ["get", INDEX, "--output", "json", "oauth2accesstoken"],
    ["get", INDEX],
    ["get"],
    ["--mode", "bogus", "get", INDEX],
    ["--mode", "get", INDEX],
    ["--mode=", "get", INDEX],
    ["--output", "json", "--output", "plain", "get", INDEX, "oauth2accesstoken"],
    ["get", INDEX, "someone"],
    ["get", "", "oauth2accesstoken"],
    ["get", INDEX, "oauth2accesstoken", "extra"],
    ["get", INDEX, "-"],
    ["--list-backends"],
    ["set", INDEX, "oauth2accesstoken"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_every_command_line_answers_as_with_every_parser_built(monkeypatch, capsys, argv):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.same-for-both")
    quick = run_main(capsys, *argv)
    monkeypatch.setattr(gauth, "_command_word", lambda argv: None)
    monkeypatch.setattr(gauth, "_plain_keyring_get", lambda argv: None)
    assert quick == run_main(capsys, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["get", INDEX, "oauth2accesstoken"],  # pip before 26.2, uv with a username
        ["--mode=creds", "--output=json", "get", INDEX],  # pip 26.2
        ["get", "us-python.pkg.dev", "--mode", "creds"],  # uv without a username
    ],
)
def test_the_clients_get_forms_are_read_without_argparse(argv):
    assert gauth._plain_keyring_get(argv) == gauth._parse_keyring_command(argv, "keyring")


@pytest.mark.parametrize("argv", [["token"], ["get", INDEX, "oauth2accesstoken"]])
def test_a_warm_token_or_get_never_imports_argparse(monkeypatch, argv):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.handed-over")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing may leave loopback
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    code = (
        "import sys, artifactregistry_gauth as m\n"
        f"code = m.main({argv!r})\n"
        "print('argparse' in sys.modules, code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.stdout.splitlines() == ["ya29.handed-over", "False 0"], result.stderr
