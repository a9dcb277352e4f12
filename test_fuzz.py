"""Fuzzing the parsers: any input gives a valid result or our documented error, nothing else."""

import base64
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import artifactregistry_gauth as gauth

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
ADC_KEYS = [
    "type",
    "client_email",
    "private_key",
    "private_key_id",
    "token_uri",
    "client_id",
    "client_secret",
    "refresh_token",
    "universe_domain",
    "rapt_token",
    "account",
]
adc_documents = st.dictionaries(
    st.sampled_from(ADC_KEYS), json_values | st.text(max_size=40), max_size=8
).map(
    lambda d: (
        d
        if "type" in d
        else {"type": "service_account", **d}
        if len(d) % 2
        else {"type": "authorized_user", **d}
    )
)


def pem(label, der):
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def der_of(pem_text):
    body = "".join(pem_text.strip().splitlines()[1:-1])
    return base64.b64decode(body)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_is_a_key_or_a_key_format_error(text):
    try:
        gauth.RsaPrivateKey.from_pem(text)
    except gauth.KeyFormatError:
        pass


@FUZZ
@given(data=st.data())
def test_a_mutated_key_is_rejected_or_still_signs_correctly(rsa_key, data):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    label, source = data.draw(
        st.sampled_from(
            [("PRIVATE KEY", rsa_key.pkcs8_pem), ("RSA PRIVATE KEY", rsa_key.pkcs1_pem)]
        )
    )
    der = bytearray(der_of(source))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(der) - 1))
        der[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        key = gauth.RsaPrivateKey.from_pem(pem(label, bytes(der[:cut])))
        signature = key.sign_rs256(b"message")
    except gauth.KeyFormatError:
        return
    rsa_key.public_key.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


def der_integer(value):
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    length = len(body)
    if length < 0x80:
        return b"\x02" + bytes([length]) + body
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return b"\x02" + bytes([0x80 | len(raw)]) + raw + body


def pkcs1_der(numbers):
    body = b"".join(der_integer(v) for v in (0, *numbers))
    raw = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(raw)]) + raw + body


def near(value):
    """Integers of about the size of ``value``: itself, off by a little, or random of its size."""
    bits = max(value.bit_length(), 2)
    return st.sampled_from([value, value + 1, value - 1, value + 2]) | st.integers(
        0, (1 << (bits + 8)) - 1
    )


@FUZZ
@given(data=st.data())
def test_a_key_of_random_bounded_numbers_is_refused_or_signs_correctly(rsa_key, data):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    real = rsa_key.private_key.private_numbers()
    names = ("n", "e", "d", "p", "q", "dp", "dq", "qinv")
    values = (
        real.public_numbers.n,
        real.public_numbers.e,
        real.d,
        real.p,
        real.q,
        real.dmp1,
        real.dmq1,
        real.iqmp,
    )
    numbers = [data.draw(near(value), label=name) for name, value in zip(names, values)]
    try:
        key = gauth.RsaPrivateKey.from_pem(pem("RSA PRIVATE KEY", pkcs1_der(numbers)))
        signature = key.sign_rs256(b"message")
    except gauth.KeyFormatError:
        return
    public = rsa.RSAPublicNumbers(numbers[1], numbers[0]).public_key()
    public.verify(signature, b"message", padding.PKCS1v15(), hashes.SHA256())


def loads_or_says_which_file(path):
    """An ADC file gives a source with an identity, or one line that names the file."""
    try:
        source = gauth.load_adc_file(str(path), "GOOGLE_APPLICATION_CREDENTIALS")
    except gauth.CredentialError as exc:
        assert str(path) in str(exc)
        assert "\n" not in str(exc)
    else:
        assert isinstance(source, gauth.CredentialSource)
        assert source.static_identity


@FUZZ
@given(document=adc_documents | json_values)
def test_any_adc_file_loads_or_says_what_is_wrong(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("adc") / "creds.json"
    path.write_text(json.dumps(document))
    loads_or_says_which_file(path)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_an_adc_file_load_or_say_what_is_wrong(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("adc") / "creds.json"
    path.write_bytes(raw)
    loads_or_says_which_file(path)


token_bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(
        st.sampled_from(
            ["access_token", "expires_in", "error", "error_description", "error_subtype"]
        ),
        json_values,
    ).map(lambda v: json.dumps(v).encode())
)


@FUZZ
@given(status=st.sampled_from([200, 400, 401, 403, 404, 500]), body=token_bodies)
def test_any_token_endpoint_answer_is_a_token_or_a_credential_error(status, body):
    response = gauth.Response(status, {}, body)
    try:
        data = gauth._token_response_json(response, "https://oauth2.googleapis.com/token", "it", [])
        token = gauth._token_from_oauth(data, "it", "fuzz")
    except gauth.CredentialError as exc:
        assert "\n" not in str(exc)
    else:
        assert token.value
        assert token.expiry is None or token.seconds_left() > 0


@FUZZ
@given(
    header=st.text(max_size=30)
    | st.integers(-(10**12), 10**12).map(str)
    | st.floats().map(str)
    | st.sampled_from(["nan", "inf", "-inf", "1e999", "Wed, 21 Oct 2037 07:28:00 GMT"]),
    limit=st.floats(0, 20),
)
def test_any_retry_after_is_a_wait_within_the_limit(header, limit):
    wait = gauth._retry_after(gauth.Response(503, {"retry-after": header}, b""), limit)
    assert 0.0 <= wait <= limit
    text = header.strip()
    if text.isascii() and text.isdigit():
        assert wait == min(int(text), limit)
    else:
        assert wait == 0.0


def secret_encodings(secret):
    from urllib.parse import quote, quote_plus

    return [
        secret,
        quote(secret),
        quote(secret, safe="").lower(),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1].replace("/", "\\/"),
    ]


@FUZZ
@given(
    secret=st.text(min_size=8, max_size=60).filter(lambda s: "*" not in s and s.strip()),
    before=st.text(max_size=400),
    after=st.text(max_size=100),
    which=st.integers(0, 5),
)
def test_a_secret_echoed_in_any_encoding_is_never_quoted(secret, before, after, which):
    echoed = secret_encodings(secret)[which]
    said = gauth._redact(before + echoed + after, [secret])
    assert len(said) <= gauth.MAX_QUOTED
    folded = " ".join(secret.split())
    for form in {folded, *secret_encodings(folded)}:
        assert form.lower() not in said.lower() or len(form) < 4


BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]+|[A-Za-z0-9_=-]+")
HEX_RUN = re.compile(r"[0-9A-Fa-f]+")


def decodings(text):
    """Every byte string that some run of base64, base64url or hex in ``text`` decodes to."""
    for run in BASE64_RUN.findall(text):
        for start in range(4):
            chunk = run[start:].replace("=", "")
            chunk = chunk[: len(chunk) // 4 * 4]
            yield base64.b64decode(chunk.replace("-", "+").replace("_", "/"))
    for run in HEX_RUN.findall(text):
        for start in range(2):
            chunk = run[start:]
            yield bytes.fromhex(chunk[: len(chunk) // 2 * 2])


@FUZZ
@given(
    secret=st.text(min_size=8, max_size=40).filter(lambda s: "*" not in s),
    prefix=st.binary(max_size=5),
    suffix=st.binary(max_size=5),
    before=st.text(" :=", max_size=20),
    encoding=st.sampled_from(["base64", "base64url", "base64url-unpadded", "hex", "HEX"]),
)
def test_a_secret_echoed_as_base64_or_hex_is_never_quoted(secret, prefix, suffix, before, encoding):
    data = prefix + secret.encode() + suffix
    echoed = {
        "base64": lambda: base64.b64encode(data).decode(),
        "base64url": lambda: base64.urlsafe_b64encode(data).decode(),
        "base64url-unpadded": lambda: base64.urlsafe_b64encode(data).decode().rstrip("="),
        "hex": data.hex,
        "HEX": lambda: data.hex().upper(),
    }[encoding]()
    said = gauth._redact(before + echoed, [secret])
    middle = secret.encode()[2:-2]  # an edge of at most 2 bytes may share a group with others
    assert not any(middle in decoded for decoded in decodings(said))


@FUZZ
@given(stdout=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_gcloud_output_parses_or_is_a_value_error(stdout):
    try:
        value, expiry, account = gauth.parse_config_helper(stdout)
    except ValueError:
        return
    assert isinstance(value, str)
    assert isinstance(account, str)
    assert expiry is None or isinstance(expiry, float)


@FUZZ
@given(
    credential=st.dictionaries(
        st.sampled_from(["access_token", "token_expiry", "id_token"]),
        json_values | st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01T00:00:00.5Z", "99"]),
    )
)
def test_gcloud_credential_fields_of_any_shape_parse(credential):
    value, _, _ = gauth.parse_config_helper(json.dumps({"credential": credential}).encode())
    assert value == (
        credential.get("access_token") if isinstance(credential.get("access_token"), str) else ""
    )


@FUZZ
@given(content=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_cache_file_is_a_token_or_ignored(monkeypatch, tmp_path_factory, content):
    directory = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_CACHE_DIR", str(directory))
    identity = "service account:/x.json:abc"
    path = Path(directory) / (gauth._file_key(identity) + ".json")
    path.write_bytes(content)
    path.chmod(0o600)
    token = gauth.TokenCache()._read(identity)
    assert token is None or token.seconds_left() >= gauth.MIN_TOKEN_LIFE


@FUZZ
@given(
    service=st.text(max_size=60)
    | st.builds(
        "{}{}{}".format,
        st.sampled_from(["", "https://", "http://", "HTTPS://", "ftp://", "//"]),
        st.text(max_size=25),
        st.sampled_from(
            ["", ".pkg.dev", ".pkg.dev/p/r/simple/", "-python.pkg.dev:443", "@x.pkg.dev"]
        ),
    ),
    username=st.none() | st.sampled_from(["", "oauth2accesstoken", "x"]) | st.text(max_size=5),
)
def test_the_host_policy_never_raises_and_never_answers_plain_http(service, username):
    answers = gauth.answers_for(service, username)
    assert isinstance(answers, bool)
    if answers:
        assert not service.lower().startswith("http://")
        assert gauth.service_host(service).endswith(".pkg.dev")
        assert username in (None, "", "oauth2accesstoken")


@FUZZ
@given(
    url=st.builds(
        "{}{}{}".format,
        st.sampled_from(["https://", "http://", "ftp://", "", "https://["]),
        st.text(alphabet="[]:@/.%\\127abcx", max_size=20),
        st.sampled_from(["", "/token", "]/token", ":443/token"]),
    )
    | st.text(max_size=40)
)
def test_any_endpoint_url_is_accepted_or_refused_in_one_line(url):
    try:
        gauth._check_endpoint(url, "the token endpoint")
    except gauth.CredentialError as exc:
        assert "\n" not in str(exc) and "refusing to send credentials" in str(exc)
    else:
        scheme, host = gauth._scheme_and_host(url)
        assert host and (scheme == "https" or gauth._is_loopback_host(host))


# Pieces that make HTTP stacks disagree on a URL's host: backslashes, percent-encoding,
# userinfo, ports, whitespace and controls, IDNA-mapped dots and letters, IPv6 brackets.
URL_PIECES = st.sampled_from(
    [
        "us-python",
        ".pkg.dev",
        "pkg.dev",
        "evil.example",
        "x",
        ".",
        "-",
        "@",
        ":",
        "443",
        "\\",
        "/",
        "?",
        "#",
        "%2e",
        "%40",
        "%",
        "[",
        "]",
        "::1",
        "\t",
        "\n",
        " ",
        "\x00",
        "\u3002",
        "\uff0e",
        "\uff55",
        "\u200b",
        "xn--",
        "_",
        "a:b@",
        "oauth2accesstoken@",
    ]
)
SERVICES = st.builds(
    "{}{}".format,
    st.sampled_from(["https://", "HTTPS://", "", "http://", "https:/", "https:\\\\"]),
    st.lists(URL_PIECES, min_size=1, max_size=8).map("".join),
)


def _readers_hosts(service):
    """The host urllib.parse, urllib3 (requests) and WHATWG (ada, as uv) would connect to."""
    import urllib.parse

    import ada_url
    import urllib3

    url = service if "://" in service else f"https://{service}"
    readers = {
        "urllib.parse": lambda: urllib.parse.urlsplit(url).hostname,
        "urllib3": lambda: urllib3.util.parse_url(url).host,
        "whatwg": lambda: ada_url.URL(url).hostname,
    }
    hosts = {}
    for name, read in readers.items():
        try:
            host = read()
        except (ValueError, urllib3.exceptions.LocationParseError):
            continue  # this reader refuses the URL: that stack connects nowhere
        hosts[name] = (host or "").lower().rstrip(".")
    return hosts


@FUZZ
@given(service=SERVICES)
def test_we_answer_only_when_every_http_stack_agrees_on_the_registry_host(service):
    host = gauth.service_host(service)
    if not gauth.is_registry_service(service):
        return
    hosts = _readers_hosts(service)
    assert set(hosts.values()) == {host}, hosts
    assert host.endswith(".pkg.dev")


# Artifact Registry's host names, written here from Google's published grammar rather than
# taken from the module: LOCATION-FORMAT.pkg.dev, LOCATION a multi-region or a region named
# continent-direction-number, FORMAT a repository format (pypi: the Python alpha's host).
CONTINENTS = ["us", "europe", "asia", "australia", "northamerica", "southamerica", "me", "africa"]
DIRECTIONS = ["north", "south", "east", "west", "central"]
DIRECTIONS += ["northeast", "northwest", "southeast", "southwest"]
FORMATS = ["apt", "docker", "generic", "go", "kfp", "maven", "npm", "python", "pypi", "ruby", "yum"]
REGISTRY_HOST = re.compile(
    rf"(?:us|europe|asia|(?:{'|'.join(CONTINENTS)})-(?:{'|'.join(DIRECTIONS)})[1-9][0-9]?)"
    rf"-(?:{'|'.join(FORMATS)})\.pkg\.dev\.?(?::[0-9]*)?",
    re.IGNORECASE | re.ASCII,
)
locations = st.sampled_from(["us", "europe", "asia"]) | st.builds(
    "{}-{}{}".format,
    st.sampled_from(CONTINENTS),
    st.sampled_from(DIRECTIONS),
    st.integers(1, 99),
)
registry_hosts = st.builds(
    "{}-{}.pkg.dev{}".format,
    locations,
    st.sampled_from(FORMATS),
    st.sampled_from(["", ":443", ":8443", "."]),
)
# Pieces of host names and of what tools and attackers put around them.
AROUND_NAMES = ["1", "12", "0", "-", ".", "pkg", "dev", ".pkg.dev", "@", ":", "443", "/", "?"]
AROUND_NAMES += ["#", "pdm-pypi-", "poetry-repository-", "x", "\\", "%"]
NAME_PIECES = st.sampled_from([*CONTINENTS, *DIRECTIONS, *FORMATS, *AROUND_NAMES])
bare_names = st.lists(NAME_PIECES, min_size=1, max_size=10).map("".join) | st.text(max_size=40)


@FUZZ
@given(name=bare_names | registry_hosts)
def test_a_bare_name_is_answered_only_if_it_is_a_registry_host(name):
    assume("://" not in name)
    assert gauth.answers_for(name, None) is bool(REGISTRY_HOST.fullmatch(name)), name


@FUZZ
@given(host=registry_hosts)
def test_every_registry_host_the_grammar_makes_is_answered(host):
    assert gauth.answers_for(host, None)
    assert gauth.answers_for(f"https://{host}/proj/repo/simple/", "oauth2accesstoken")


@FUZZ
@given(
    prefix=st.sampled_from(["pdm-pypi-", "pdm-repository-", "poetry-repository-"]),
    label=bare_names | registry_hosts,
    username=st.sampled_from([None, "", "oauth2accesstoken"]),
)
def test_no_name_a_tool_builds_from_any_label_is_answered(prefix, label, username):
    assert not gauth.answers_for(prefix + label, username)


@pytest.mark.parametrize(
    "service",
    [
        "https://evil.example\\@us-python.pkg.dev/p/r/",
        "https://evil.example\\.pkg.dev/",
        "https://us-python.pkg.dev%2eevil.example/",
        "https://evil\u3002pkg.dev/",
    ],
)
def test_the_readers_really_disagree_on_the_known_attacks(service):
    assert len(set(_readers_hosts(service).values())) > 1
    assert not gauth.is_registry_service(service)


@pytest.mark.parametrize(
    "expires_in", ["Infinity", "-Infinity", "NaN", "1e400", "-5", "0", '"12x"', "99999999999"]
)
def test_absurd_expires_in_means_unknown_expiry(expires_in):
    body = f'{{"access_token": "t", "expires_in": {expires_in}}}'.encode()
    data = gauth._token_response_json(gauth.Response(200, {}, body), "https://x/token", "it", [])
    assert gauth._token_from_oauth(data, "it", "fuzz").expiry is None


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(gauth.CredentialError, match="is not a valid JSON file"):
        gauth.load_adc_file(str(path), "GOOGLE_APPLICATION_CREDENTIALS")


ini_names = st.sampled_from(["account", "a", "b", "universe_domain"])
ini_values = st.text(st.sampled_from("ab%()sA"), max_size=12)
ini_files = st.dictionaries(
    st.sampled_from(["core", "auth", "proxy", "DEFAULT"]),
    st.dictionaries(ini_names, ini_values, max_size=4),
    max_size=3,
)


def configparser_reading(text):
    """What configparser (so gcloud) makes of the file: its decisive values, or None if it fails."""
    import configparser

    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
        every = {f"{s}/{n}": v for s in parser.sections() for n, v in parser.items(s)}
    except configparser.Error:
        return None
    return {k: v for k, v in every.items() if k.startswith(("auth/", "core/account", "core/uni"))}


@FUZZ
@given(sections=ini_files)
def test_gcloud_properties_read_as_configparser_reads_them_or_fail_alike(
    tmp_path_factory, sections
):
    text = "".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in options.items())
        for name, options in sections.items()
    )
    path = tmp_path_factory.mktemp("ini") / "config_default"
    path.write_text(text)
    expected = configparser_reading(text)
    try:
        found = gauth._read_gcloud_properties(str(path))
    except gauth.CredentialError as exc:
        assert expected is None, str(exc)
        assert "\n" not in str(exc)
        return
    assert found == expected
