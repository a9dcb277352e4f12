"""A token goes only to Artifact Registry, only over TLS or on this machine, and only as one word.

Each table row is a hostile input with the outcome it must get. The agreement property
between our reading of a URL and urllib.parse, urllib3 (requests) and WHATWG (uv,
browsers) lives in test_fuzz.py.
"""

import pytest

import artifactregistry_gauth as gauth
from fakes.network import Listener


@pytest.fixture
def sa_env(monkeypatch, sa_file):
    path = sa_file()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


# --- which host a keyring service names -----------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [
        # requests/urllib3 and WHATWG end the host at a backslash; urllib.parse does not
        "https://evil.example\\@us-python.pkg.dev/p/r/",
        "https://evil.example\\.pkg.dev/",
        "https://us-python.pkg.dev\\@evil.example/",
        "evil.example\\@us-python.pkg.dev",
        # percent-encoding in the authority is decoded by some readers only
        "https://us-python.pkg.dev%2eevil.example/",
        "https://evil.example%2f.pkg.dev/",
        "https://evil.example%40us-python.pkg.dev/",
        "https://oauth2accesstoken%3Ax@us-python.pkg.dev/",
        # whitespace and control characters are dropped by WHATWG, kept by others
        "https://evil.exa\tmple.pkg.dev/",
        "https://evil.example\n.pkg.dev/",
        "https://us-python.pkg.dev\r\nHost: evil.example/",
        "https://evil.example\x00.pkg.dev/",
        "https://us-python.pkg.dev /",
        " https://us-python.pkg.dev/",
        "https://us-python.pkg.dev/p/r/\x7f",
        # a password in the URL, or more than one @
        "https://user:secret@us-python.pkg.dev/p/r/",
        "https://oauth2accesstoken:@us-python.pkg.dev/p/r/",
        "https://a@b@us-python.pkg.dev/p/r/",
        "https://us-python.pkg.dev:443@evil.example/",
        # Unicode that IDNA maps onto ASCII (ideographic and fullwidth dots, fullwidth letters)
        "https://evil\u3002pkg.dev/",
        "https://evil\uff0epkg.dev/",
        "https://\uff55s-python.pkg.dev/",
        "https://us-python.pkg.dev\u200b/",
        # not a host name at all
        "https://[::1]/p/r/",
        "https://.pkg.dev/",
        "https://x..pkg.dev/",
        "https://-x.pkg.dev/",
        "https://x_y.pkg.dev/",
        "https://us-python.pkg.dev:44x3/",
        "https://us-python.pkg.dev:-1/",
        # the host is elsewhere
        "https://evil.example#@us-python.pkg.dev/",
        "https://evil.example?@us-python.pkg.dev/",
        "https://us-python.pkg.dev@evil.example/",
        "https://pkg.dev/",
        "http://us-python.pkg.dev/p/r/simple/",
        "ftp://us-python.pkg.dev/",
        "//us-python.pkg.dev/",
    ],
)
def test_an_ambiguous_or_foreign_service_gets_no_answer(service):
    assert gauth.service_host(service) is None or not gauth.is_registry_service(service)
    assert not gauth.answers_for(service, None)
    assert not gauth.answers_for(service, "oauth2accesstoken")


@pytest.mark.parametrize(
    ("service", "host"),
    [
        ("https://us-python.pkg.dev/p/r/simple/", "us-python.pkg.dev"),
        ("https://oauth2accesstoken@us-python.pkg.dev/p/r/", "us-python.pkg.dev"),
        ("us-python.pkg.dev", "us-python.pkg.dev"),
        ("us-python.pkg.dev:443", "us-python.pkg.dev"),
        ("https://us-python.pkg.dev:/p/", "us-python.pkg.dev"),
        ("HTTPS://EUROPE-WEST1-PYTHON.PKG.DEV./p/", "europe-west1-python.pkg.dev"),
        # only the authority decides: every reader has ended it at the first "/"
        ("https://us-python.pkg.dev/p/r/a%2Bb/x\\@evil.example", "us-python.pkg.dev"),
        ("https://us-python.pkg.dev/p/r/?next=https://evil.example\\@x", "us-python.pkg.dev"),
    ],
)
def test_a_plain_artifact_registry_service_names_its_host(service, host):
    assert gauth.service_host(service) == host
    assert gauth.answers_for(service, None)


def test_extra_hosts_obey_the_same_rules(monkeypatch):
    monkeypatch.setenv("ARTIFACTREGISTRY_GAUTH_HOSTS", "*.corp.example")
    assert gauth.answers_for("https://pypi.corp.example/simple/", None)
    assert not gauth.answers_for("https://evil.example\\@pypi.corp.example/simple/", None)
    assert not gauth.answers_for("https://u:p@pypi.corp.example/simple/", None)


def test_the_backend_gives_a_backslash_url_no_token(sa_env, fake_google):
    backend = gauth.GooglePyPIAuth()
    assert backend.get_password("https://evil.example\\@us-python.pkg.dev/p/r/", None) is None
    assert backend.get_credential("https://evil.example\\.pkg.dev/", None) is None
    assert fake_google.requests == []  # decided before any I/O


# --- where credentials may be sent in plain http ------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/token", True),
        ("http://127.8.9.10/token", True),
        ("http://[::1]:8080/token", True),
        ("http://localhost:8080/token", True),
        ("http://LOCALHOST/token", True),
        ("https://oauth2.googleapis.com/token", True),
        ("http://127.evil.example/token", False),
        ("http://127.0.0.1.nip.io/token", False),
        ("http://localhost.evil.example/token", False),
        ("http://127.1/token", False),  # inet_aton shorthand: not an IP literal to us
        ("http://2130706433/token", False),
        ("http://0x7f000001/token", False),
        ("http://[::ffff:127.0.0.1]/token", False),
        ("http://10.0.0.1/token", False),
        ("http://oauth2.googleapis.com/token", False),
        ("ftp://127.0.0.1/token", False),
        ("https:///token", False),
    ],
)
def test_plain_http_is_allowed_only_to_a_loopback_address(url, allowed):
    if allowed:
        gauth._check_endpoint(url, "the token endpoint")
    else:
        with pytest.raises(gauth.CredentialError, match="refusing to send credentials"):
            gauth._check_endpoint(url, "the token endpoint")


def test_a_name_that_starts_with_127_gets_no_assertion(monkeypatch, sa_file):
    path = sa_file(token_uri="http://127.evil.example/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(gauth.CredentialError, match="refusing to send credentials"):
        gauth.get_token()


@pytest.fixture
def recording_proxy():
    """A proxy that counts connections and answers none: any use of it is a leak."""
    with Listener(hold=False) as proxy:
        yield proxy


def test_a_loopback_token_endpoint_is_never_reached_through_a_proxy(
    monkeypatch, sa_env, fake_google, recording_proxy
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, recording_proxy.url)
    assert fake_google.is_live(gauth.get_token())
    assert recording_proxy.connections == 0


# --- the token itself must be one word --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "ya29.a b",
        "ya29.a\nmachine evil.example login x password y",
        "ya29.a\r\nX-Injected: 1",
        "ya29.a\tb",
        "ya29.\x00",
        "ya29.caf\u00e9",
        "ya29.\u2028",
    ],
)
def test_a_token_with_whitespace_or_control_characters_is_refused(fake_google, sa_env, value):
    fake_google.script((200, {"access_token": value, "expires_in": 3600}))
    with pytest.raises(gauth.CredentialError, match="not one word of printable ASCII") as caught:
        gauth.get_token()
    assert value not in str(caught.value)


def test_a_handed_over_token_with_a_newline_inside_is_refused(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.one\nya29.two")
    with pytest.raises(gauth.CredentialError, match="GOOGLE_OAUTH_ACCESS_TOKEN.*printable"):
        gauth.get_token()


def test_a_cached_token_with_a_newline_is_ignored_and_replaced(sa_env, fake_google):
    first = gauth.lookup()
    cache = gauth._CACHE
    identity = next(iter(cache._entries))
    planted = gauth.Token("ya29.x\nmachine evil.example", first.expiry, "planted")
    cache._write(identity, planted)
    gauth._forget_tokens()
    token = gauth.get_token()
    assert fake_google.is_live(token)
    assert token not in (first.value, planted.value)
