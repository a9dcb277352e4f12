"""X.509 workload identity federation: the certificate chain is the subject token, and STS
(and IAM) are called over mutual TLS with the workload's certificate, as google-auth does."""

import base64
import contextlib
import json
import ssl
import threading
import urllib.error
import urllib.request

import pytest

import artifactregistry_gauth as gauth
from fakes import WINE_CHAIN_ENGINE, wine_gap
from fakes.google import CLOUD_PLATFORM, IAM_HOST, VirtualHosts
from fakes.network import JOIN_TIMEOUT, RoutingProxy, mutual_tls_server_context
from fakes.testing import one_line, run_cli

MTLS_TYPE = "urn:ietf:params:oauth:token-type:mtls"
MTLS_STS_HOST = "sts.mtls.googleapis.com"
WORKLOAD = (
    "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/x509"
)
IAM_URL = (
    f"https://{IAM_HOST}/v1/projects/-/serviceAccounts/"
    "deployer@proj.iam.gserviceaccount.com:generateAccessToken"
)


class Workload:
    """A workload certificate from a child CA of the test CA, its files and a gcloud config."""

    def __init__(self, test_ca, tmp_path, monkeypatch):
        self.tmp = tmp_path
        self.intermediate = test_ca.create_child_ca()
        self.leaf = self.intermediate.issue_cert("workload.example")
        self.cert = tmp_path / "leaf.pem"
        self.key = tmp_path / "leaf.key"
        self.chain = tmp_path / "chain.pem"
        # The leaf then its issuer, so the TLS handshake can reach the test CA; the subject
        # token takes the first certificate only, as google-auth does.
        self.cert.write_bytes(b"".join(p.bytes() for p in self.leaf.cert_chain_pems))
        self.key.write_bytes(self.leaf.private_key_pem.bytes())
        self.chain.write_bytes(b"".join(p.bytes() for p in self.leaf.cert_chain_pems))
        self.config = tmp_path / "certificate_config.json"
        self.config.write_text(
            json.dumps(
                {
                    "cert_configs": {
                        "workload": {"cert_path": str(self.cert), "key_path": str(self.key)}
                    }
                }
            )
        )
        monkeypatch.setenv("GOOGLE_API_CERTIFICATE_CONFIG", str(self.config))

    def pems(self):
        """The leaf, then the intermediate, each as PEM text."""
        return [blob.bytes().decode() for blob in self.leaf.cert_chain_pems]

    def write(self, name="x509.json", certificate=None, **extra):
        """A credential config shaped as `gcloud iam workload-identity-pools create-cred-config
        --credential-cert-path ... --credential-cert-trust-chain-path ...` writes it."""
        info = {
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": WORKLOAD,
            "subject_token_type": MTLS_TYPE,
            "token_url": f"https://{MTLS_STS_HOST}/v1/token",
            "credential_source": {
                "certificate": certificate
                or {"use_default_certificate_config": True, "trust_chain_path": str(self.chain)}
            },
            "token_info_url": f"https://{MTLS_STS_HOST}/v1/introspect",
            **extra,
        }
        path = self.tmp / name
        path.write_text(json.dumps(info, indent=2))
        return path


@pytest.fixture
def workload(test_ca, tmp_path, monkeypatch):
    return Workload(test_ca, tmp_path, monkeypatch)


@pytest.fixture
def mtls_google(google_federation, test_ca, monkeypatch):
    """The fake STS at sts.mtls.googleapis.com and IAM, both refusing clients without a
    certificate of the test CA, reached through a CONNECT proxy as the real hosts are."""
    hosts = VirtualHosts({MTLS_STS_HOST: google_federation.sts, IAM_HOST: google_federation.iam})
    server = hosts.serve(mutual_tls_server_context(test_ca, (MTLS_STS_HOST, IAM_HOST)))
    proxy = RoutingProxy({host: server.port for host in (MTLS_STS_HOST, IAM_HOST)}).start()
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy.url)
    yield google_federation
    stopping = [threading.Thread(target=stop) for stop in (proxy.stop, hosts.close)]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join(JOIN_TIMEOUT)


def expected_subject(workload):
    leaf, intermediate = (
        base64.b64encode(ssl.PEM_cert_to_DER_cert(pem)).decode() for pem in workload.pems()
    )
    return json.dumps([leaf, intermediate])


def use(monkeypatch, path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))


# --- the exchange ---------------------------------------------------------------------------------


def test_the_fake_sts_refuses_a_client_without_a_certificate(mtls_google, test_ca_file):
    context = ssl.create_default_context(cafile=str(test_ca_file))
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        opener.open(f"https://{MTLS_STS_HOST}/v1/token", data=b"", timeout=10)


@wine_gap(WINE_CHAIN_ENGINE)
def test_the_chain_is_exchanged_over_mutual_tls_at_the_mtls_sts(workload, mtls_google, monkeypatch):
    subject = expected_subject(workload)
    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, subject)
    use(monkeypatch, workload.write())
    token = gauth.get_token()
    assert mtls_google.sts.is_live(token)
    (exchange,) = mtls_google.sts.exchanges
    assert exchange.host == MTLS_STS_HOST
    assert exchange.form["subject_token"] == subject
    assert exchange.form["subject_token_type"] == MTLS_TYPE


@wine_gap(WINE_CHAIN_ENGINE)
def test_impersonation_after_an_x509_exchange_also_uses_the_client_certificate(
    workload, mtls_google, monkeypatch
):
    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, expected_subject(workload))
    mtls_google.iam.add_service_account("deployer@proj.iam.gserviceaccount.com")
    use(monkeypatch, workload.write(service_account_impersonation_url=IAM_URL))
    assert mtls_google.iam.is_live(gauth.get_token())
    (exchange,) = mtls_google.sts.exchanges
    assert exchange.form["scope"] == gauth.IAM_SCOPE


@wine_gap(WINE_CHAIN_ENGINE)
def test_a_new_certificate_is_a_new_cache_identity(workload, mtls_google, monkeypatch, test_ca):
    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, lambda token: None)
    use(monkeypatch, workload.write())
    first = gauth.get_token()
    assert gauth.get_token() == first  # cached
    renewed = workload.intermediate.issue_cert("workload.example")
    workload.cert.write_bytes(b"".join(p.bytes() for p in renewed.cert_chain_pems))
    workload.key.write_bytes(renewed.private_key_pem.bytes())
    second = gauth.get_token()
    assert second != first
    assert len(mtls_google.sts.exchanges) == 2


@wine_gap(WINE_CHAIN_ENGINE)
@pytest.mark.filterwarnings("ignore:The load_credentials_from_file method is deprecated")
@pytest.mark.parametrize("impersonated", [False, True], ids=["sts", "impersonated"])
def test_x509_token_requests_match_google_auth(workload, mtls_google, monkeypatch, impersonated):
    pytest.importorskip("google.auth")
    import google.auth.transport.requests
    from google.auth import identity_pool

    from fakes.federation import clear_requests, token_requests

    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, expected_subject(workload))
    mtls_google.iam.add_service_account("deployer@proj.iam.gserviceaccount.com")
    extra = {"service_account_impersonation_url": IAM_URL} if impersonated else {}
    path = workload.write(**extra)
    issuer = mtls_google.iam if impersonated else mtls_google.sts

    credentials = identity_pool.Credentials.from_file(str(path), scopes=[CLOUD_PLATFORM])
    clear_requests(mtls_google)
    with google_auth_can_run():
        credentials.refresh(google.auth.transport.requests.Request())
    assert issuer.is_live(credentials.token)
    theirs = token_requests(mtls_google)

    clear_requests(mtls_google)
    use(monkeypatch, path)
    assert issuer.is_live(gauth.get_token())
    ours = token_requests(mtls_google)

    assert theirs["FakeSTS"], "google-auth sent no token request"
    assert ours == theirs


# --- the chain rules, to the byte as google-auth -----------------------------------------------


@contextlib.contextmanager
def google_auth_can_run():
    """Skip where this Python's google-auth needs a module it lacks (pyOpenSSL, before 2.40)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        pytest.skip(f"google-auth here needs {exc.name} for X.509 federation")


def google_auth_subject(path):
    pytest.importorskip("google.auth")
    pytest.importorskip("cryptography")
    from google.auth import identity_pool

    with google_auth_can_run():
        return identity_pool.Credentials.from_file(str(path)).retrieve_subject_token(None)


def our_subject(path):
    return gauth.load_adc_file(str(path), str(path)).subject_token(None)


CHAINS = {
    "no trust chain": lambda leaf, mid: None,
    "chain without the leaf": lambda leaf, mid: [mid],
    "chain opening with the leaf": lambda leaf, mid: [leaf, mid],
    "chain of the leaf alone": lambda leaf, mid: [leaf],
    "chain with text between blocks": lambda leaf, mid: [leaf, "\n# intermediate\n", mid],
}


@pytest.mark.filterwarnings("ignore:The load_credentials_from_file method is deprecated")
@pytest.mark.parametrize("chain", list(CHAINS.values()), ids=list(CHAINS))
def test_subject_token_is_google_auths_to_the_byte(workload, chain):
    parts = chain(*workload.pems())
    certificate = {"use_default_certificate_config": True}
    if parts is not None:
        workload.chain.write_text("".join(parts))
        certificate["trust_chain_path"] = str(workload.chain)
    path = workload.write(certificate=certificate)
    assert our_subject(path) == google_auth_subject(path)


@pytest.mark.filterwarnings("ignore:The load_credentials_from_file method is deprecated")
def test_the_leaf_after_the_start_of_the_chain_is_an_error_as_in_google_auth(workload):
    leaf, mid = workload.pems()
    workload.chain.write_text(mid + leaf)
    path = workload.write()
    google_auth = pytest.importorskip("google.auth")
    with pytest.raises(google_auth.exceptions.RefreshError, match="top of the trust chain"):
        google_auth_subject(path)
    use_path = path
    with pytest.raises(
        gauth.CredentialError, match="holds the workload certificate after"
    ) as caught:
        our_subject(use_path)
    assert one_line(caught).startswith(str(path))


def test_the_gcloud_default_certificate_config_is_found(workload, monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLE_API_CERTIFICATE_CONFIG")
    config_dir = tmp_path / "gcloud"
    config_dir.mkdir()
    (config_dir / "certificate_config.json").write_text(workload.config.read_text())
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(config_dir))
    assert json.loads(our_subject(workload.write()))[0] == json.loads(expected_subject(workload))[0]


def test_an_explicit_certificate_config_location_wins(workload, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_API_CERTIFICATE_CONFIG", str(tmp_path / "absent.json"))
    path = workload.write(certificate={"certificate_config_location": str(workload.config)})
    assert our_subject(path) == json.dumps(json.loads(expected_subject(workload))[:1])


# --- bad configurations: one clear line each -------------------------------------------------


def bad_config(workload, tmp_path, case):
    """Write the broken piece of `case`; return the credential file and the expected message."""
    certificate = {"use_default_certificate_config": True}
    cert_config = None
    if case == "both config kinds":
        certificate["certificate_config_location"] = str(workload.config)
        message = (
            "exactly one of use_default_certificate_config: true and certificate_config_location"
        )
    elif case == "neither config kind":
        certificate = {"trust_chain_path": str(workload.chain)}
        message = "exactly one of use_default_certificate_config"
    elif case == "certificate not an object":
        certificate = "leaf.pem"
        message = r"field 'credential_source\.certificate' is not a JSON object; recreate"
    elif case == "use_default not a boolean":
        certificate["use_default_certificate_config"] = "yes"
        message = (
            r"field 'credential_source\.certificate\.use_default_certificate_config' is not "
            "true or false; recreate"
        )
    elif case == "trust chain path not a string":
        certificate["trust_chain_path"] = 7
        message = (
            r"field 'credential_source\.certificate\.trust_chain_path' is not a path; recreate"
        )
    elif case == "missing certificate config":
        workload.config.unlink()
        message = r"the certificate config .* \(GOOGLE_API_CERTIFICATE_CONFIG\) was not found"
    elif case == "certificate config not json":
        cert_config = "{"
        message = "cannot read the certificate config .* \\(not JSON\\)"
    elif case == "no workload section":
        cert_config = {"cert_configs": {"ecp": {}}}
        message = r"field 'cert_configs\.workload' is missing; it must name the workload's cert"
    elif case == "empty key path":
        cert_config = {
            "cert_configs": {"workload": {"cert_path": str(workload.cert), "key_path": ""}}
        }
        message = r"field 'cert_configs\.workload\.key_path' is not a path; it must name the"
    elif case == "missing certificate file":
        workload.cert.unlink()
        message = "cannot read the workload certificate .* \\(No such file"
    elif case == "certificate file without pem":
        workload.cert.write_text("not a certificate\n")
        message = "the workload certificate .* holds no PEM certificate"
    elif case == "broken base64 in the chain":
        certificate["trust_chain_path"] = str(workload.chain)
        workload.chain.write_text("-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n")
        message = "the trust chain .* holds no PEM certificate"
    else:  # pragma: no cover
        raise AssertionError(case)
    if cert_config is not None:
        workload.config.write_text(
            cert_config if isinstance(cert_config, str) else json.dumps(cert_config)
        )
    return workload.write(certificate=certificate), message


BAD = [
    "both config kinds",
    "neither config kind",
    "certificate not an object",
    "use_default not a boolean",
    "trust chain path not a string",
    "missing certificate config",
    "certificate config not json",
    "no workload section",
    "empty key path",
    "missing certificate file",
    "certificate file without pem",
    "broken base64 in the chain",
]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_x509_configuration_gets_one_clear_line(workload, tmp_path, monkeypatch, case):
    path, message = bad_config(workload, tmp_path, case)
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match=message) as caught:
        gauth.get_token()
    line = one_line(caught)
    assert line.startswith(f"{path}: ") and line.count(str(path)) == 1, line
    assert "PRIVATE KEY" not in line and "BEGIN CERTIFICATE" not in line


def test_a_key_that_does_not_match_is_a_clear_line_without_key_material(
    workload, mtls_google, monkeypatch, test_ca
):
    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, lambda token: None)
    workload.key.write_bytes(test_ca.issue_cert("other.example").private_key_pem.bytes())
    path = workload.write()
    use(monkeypatch, path)
    with pytest.raises(gauth.CredentialError, match="as a TLS client certificate") as caught:
        gauth.get_token()
    assert one_line(caught).startswith(f"{path}: ") and one_line(caught).count(str(path)) == 1
    assert "PRIVATE" not in one_line(caught)
    assert not mtls_google.sts.exchanges


# --- doctor -------------------------------------------------------------------------------------


@wine_gap(WINE_CHAIN_ENGINE)
def test_doctor_shows_the_x509_source(workload, mtls_google, monkeypatch):
    mtls_google.sts.add_provider(WORKLOAD, MTLS_TYPE, expected_subject(workload))
    path = workload.write()
    use(monkeypatch, path)
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert f"workload identity federation (certificate) from {path}" in result.stdout


# --- what a lookup learns is handed on, not kept on the source ---------------------------------


def test_learning_the_identity_leaves_the_source_as_it_was(workload):
    source = gauth.AdcFile(str(workload.write()), "test")
    before = dict(vars(source.parsed()))
    identity, learned = source.learn(gauth.Transport())
    assert vars(source.parsed()) == before
    assert learned == expected_subject(workload)
    assert identity == source.identify(gauth.Transport())
