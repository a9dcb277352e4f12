"""Google's auth services, strict and recording: the OAuth token endpoint, STS, IAM
credentials and a subject-token identity provider; each a `FakeService`.

`FakeGoogle` checks every claim of a JWT-bearer assertion and its RS256 signature with
``cryptography`` (an implementation independent of the module under test).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fakes import register_secret
from fakes.network import (
    FORM_URLENCODED,
    FakeService,
    RoutingProxy,
    media_type,
    reply,
    single_values,
)

OAUTH_HOST = "oauth2.googleapis.com"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_HOSTS = ("oauth2.googleapis.com", "sts.googleapis.com", "iamcredentials.googleapis.com")
TLS_HOSTS = (
    *GOOGLE_HOSTS,
    "us-python.pkg.dev",
    "europe-west1-python.pkg.dev",
    "127.0.0.1",
    "localhost",
)
STS_HOST = "sts.googleapis.com"
IAM_HOST = "iamcredentials.googleapis.com"
RESOURCE_MANAGER_HOST = "cloudresourcemanager.googleapis.com"
OTHER_UNIVERSE = "universe.example"
FEDERATION_TLS_HOSTS = (
    *TLS_HOSTS,
    RESOURCE_MANAGER_HOST,
    f"sts.{OTHER_UNIVERSE}",
    f"iamcredentials.{OTHER_UNIVERSE}",
)
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"


def _oauth_error(status, error, description):
    """Build an OAuth2 error reply."""
    return reply(status, {"error": error, "error_description": description})


def verify_rs256(public_key, signature, signed):
    """Tell whether `signature` is an RS256 signature of `signed` by `public_key`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def public_key_from_numbers(n, e):
    """A `cryptography` RSA public key from its modulus and exponent."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPublicNumbers(e, n).public_key()


# --- Google's OAuth2 token endpoint --------------------------------------------------------------


class _InvalidGrantError(Exception):
    """An assertion check failed; the message says which."""


@dataclass(frozen=True)
class _User:
    client_id: str
    client_secret: str
    account: str


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_JWT_HEADER = {"typ": "JWT", "alg": "RS256"}
_JWT_CLAIMS = frozenset({"iat", "exp", "iss", "aud", "scope"})
_REFRESH_FIELDS = frozenset({"grant_type", "client_id", "client_secret", "refresh_token", "rapt"})


class FakeGoogle(FakeService):
    """Google's OAuth2 token endpoint, strict about every grant our module sends.

    ``for_gcloud`` serves the real Cloud SDK instead, which is not under test: any grant
    signed by a registered key, token introspection, and subject-token exchange.
    """

    server_header = "ESF"

    def __init__(self, for_gcloud=False):
        super().__init__()
        self.expected_scope = CLOUD_PLATFORM
        self.service_accounts: dict[str, tuple] = {}
        self.users: dict[str, _User] = {}
        self.rejected: list[str] = []  # why each refused assertion was refused
        # The real Cloud SDK is not under test: its assertions carry its own aud and
        # scopes, it introspects tokens and exchanges external-account subject tokens here.
        self.for_gcloud = for_gcloud
        self.revoked: set = set()  # service accounts whose keys were deleted
        self.subject_tokens: dict = {}  # workload identity audience -> its one subject token
        if for_gcloud:
            self.token_prefix = "gcloud-sa"

    @property
    def token_url(self):
        """The plain-HTTP token endpoint URL."""
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def token_requests(self):
        """The recorded requests for /token."""
        return [record for record in self.requests if record.path.startswith("/token")]

    def add_service_account(self, email, public_key, kid=None):
        """Accept JWTs from `email` signed by `public_key`, with header kid `kid` (or none)."""
        self.service_accounts[email] = (public_key, kid)

    def add_user(self, client_id, client_secret, refresh_token, account="user@example.com"):
        """Accept `refresh_token` from the OAuth client (client_id, client_secret)."""
        self.users[refresh_token] = _User(client_id, client_secret, account)

    def respond(self, record):
        """Answer token requests; anything else is a 404."""
        if self.for_gcloud:
            return self._respond_to_gcloud(record)
        host = record.headers.get("host", "").lower().removesuffix(":443")
        if record.scheme == "https" and host != OAUTH_HOST:
            return reply(404, f"fake google serves only {OAUTH_HOST} over TLS, not {host!r}")
        if record.route != "/token":
            return reply(404, f"fake google has nothing at {record.route}")
        if record.method != "POST":
            return _oauth_error(405, "invalid_request", f"{record.method} is not allowed")
        if record.query:
            return _oauth_error(400, "invalid_request", "the token endpoint takes no query")
        if media_type(record.headers) != FORM_URLENCODED:
            return _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_URLENCODED}")
        try:
            fields = parse_qs(record.body.decode(), keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return _oauth_error(400, "invalid_request", "malformed form body")
        repeated = sorted(name for name, values in fields.items() if len(values) > 1)
        if repeated:
            return _oauth_error(400, "invalid_request", f"repeated parameters {repeated}")
        form = single_values(fields)
        grant_type = form.get("grant_type")
        if grant_type == JWT_BEARER:
            return self._jwt_bearer_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_token_grant(form)
        return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _jwt_bearer_grant(self, form):
        unexpected = sorted(set(form) - {"grant_type", "assertion"})
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        try:
            email = self._check_assertion(form.get("assertion", ""))
        except _InvalidGrantError as exc:
            with self._lock:
                self.rejected.append(str(exc))
            return _oauth_error(400, "invalid_grant", str(exc))
        return self._issue(email)

    def _check_assertion(self, assertion):
        segments = assertion.split(".")
        if len(segments) != 3:
            raise _InvalidGrantError("assertion is not three dot-separated segments")
        header = _decode_segment(segments[0], "header")
        claims = _decode_segment(segments[1], "claims")
        signature = _base64url_decode(segments[2], "signature")
        if {key: value for key, value in header.items() if key != "kid"} != _JWT_HEADER:
            raise _InvalidGrantError(
                f"header must be {_JWT_HEADER} plus optional kid, got {header}"
            )
        if set(claims) != _JWT_CLAIMS:
            raise _InvalidGrantError(
                f"claims must be exactly {sorted(_JWT_CLAIMS)}, got {sorted(claims)}"
            )
        email = claims["iss"]
        if not isinstance(email, str) or email not in self.service_accounts:
            raise _InvalidGrantError(f"iss {email!r} is not a registered service account")
        public_key, kid = self.service_accounts[email]
        if kid is None and "kid" in header:
            raise _InvalidGrantError("header has a kid but the key was registered without one")
        if "kid" in header and header["kid"] != kid:
            raise _InvalidGrantError(f"header kid {header['kid']!r} is not the registered {kid!r}")
        signed = f"{segments[0]}.{segments[1]}".encode("ascii")
        if not verify_rs256(public_key, signature, signed):
            raise _InvalidGrantError("RS256 signature does not verify with the registered key")
        if claims["aud"] != TOKEN_AUDIENCE:
            raise _InvalidGrantError(f"aud must be {TOKEN_AUDIENCE!r}, got {claims['aud']!r}")
        if claims["scope"] != self.expected_scope:
            raise _InvalidGrantError(
                f"scope must be {self.expected_scope!r}, got {claims['scope']!r}"
            )
        iat, exp = claims["iat"], claims["exp"]
        if type(iat) is not int or type(exp) is not int:
            raise _InvalidGrantError(f"iat and exp must be integers, got {iat!r} and {exp!r}")
        if exp - iat != 3600:
            raise _InvalidGrantError(f"exp - iat must be 3600, got {exp - iat}")
        if abs(iat - time.time()) > 300:
            raise _InvalidGrantError(f"iat {iat} is more than 300 s from now")
        return email

    def _respond_to_gcloud(self, record):
        """Grants as gcloud's refreshes send them: signed by a registered key, not revoked."""
        if record.route == "/introspect" and record.method == "POST":  # gcloud names the account
            entry = self.issued.get(record.form.get("token", ""))
            if entry is None:
                return reply(200, {"active": False})
            return reply(200, {"active": True, "username": entry["identity"]})
        if record.route != "/token" or record.method != "POST":
            return reply(404, f"nothing at {record.method} {record.route}")
        if record.form.get("grant_type") == TOKEN_EXCHANGE:  # as STS, for external accounts
            audience = record.form.get("audience", "")
            if record.form.get("subject_token") != self.subject_tokens.get(audience):
                return _oauth_error(400, "invalid_grant", "The subject token is invalid.")
            return self._issue(audience)
        if record.form.get("grant_type") != JWT_BEARER:
            return _oauth_error(400, "unsupported_grant_type", "only JWT bearer grants here")
        segments = record.form.get("assertion", "").split(".")
        try:
            claims = _decode_segment(segments[1], "claims")
            signature = _base64url_decode(segments[2], "signature")
            email = claims.get("iss")
            public_key, _ = self.service_accounts[email]
            signed = verify_rs256(public_key, signature, ".".join(segments[:2]).encode())
        except (IndexError, KeyError, TypeError, _InvalidGrantError):
            signed = False
        if not signed or email in self.revoked:
            return _oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        return self._issue(email)

    def _refresh_token_grant(self, form):
        if "scope" in form:
            return _oauth_error(400, "invalid_request", "a refresh_token grant must not send scope")
        unexpected = sorted(set(form) - _REFRESH_FIELDS)
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        for name in ("client_id", "client_secret", "refresh_token"):
            if not form.get(name):
                return _oauth_error(400, "invalid_request", f"Missing required parameter: {name}")
        secrets_by_client = {user.client_id: user.client_secret for user in self.users.values()}
        if form["client_id"] not in secrets_by_client:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if form["client_secret"] != secrets_by_client[form["client_id"]]:
            return _oauth_error(401, "invalid_client", "Unauthorized")
        user = self.users.get(form["refresh_token"])
        if user is None or user.client_id != form["client_id"]:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        return self._issue(user.account)


def _base64url_decode(segment, what):
    """Decode unpadded base64url, or reject the assertion naming the segment."""
    if not _BASE64URL.fullmatch(segment):
        raise _InvalidGrantError(f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise _InvalidGrantError(f"{what} is not valid base64url") from None


def _decode_segment(segment, what):
    """Decode a base64url JSON object segment of a JWT."""
    try:
        value = json.loads(_base64url_decode(segment, what))
    except ValueError:
        raise _InvalidGrantError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _InvalidGrantError(f"{what} is not a JSON object")
    return value


# --- service-account keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class RsaKey:
    """An RSA key pair with its private key as PKCS#8 and PKCS#1 PEM."""

    private_key: object  # cryptography RSAPrivateKey
    public_key: object  # cryptography RSAPublicKey
    pkcs8_pem: str
    pkcs1_pem: str


def _private_pem(key, private_format):
    """Serialize a private key as unencrypted PEM text."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode("ascii")


def new_rsa_key():
    """A new RSA-2048 key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return RsaKey(
        private_key=key,
        public_key=key.public_key(),
        pkcs8_pem=_private_pem(key, serialization.PrivateFormat.PKCS8),
        pkcs1_pem=_private_pem(key, serialization.PrivateFormat.TraditionalOpenSSL),
    )


# --- the fake Google at its real https:// URL ---------------------------------------------------


@dataclass
class GoogleHTTPS:
    """The fake Google reachable at its real https:// URLs through a CONNECT proxy."""

    proxy_url: str
    ca_file: Path
    fake: FakeGoogle
    tls_port: int
    proxy: RoutingProxy

    @property
    def connects(self):
        """CONNECT targets ("host:port") the proxy tunnelled, in order."""
        return self.proxy.connects

    @property
    def rejected(self):
        """Targets the proxy refused: anything but the Google hosts on port 443."""
        return self.proxy.rejected


# --- federation: STS, IAM credentials, an identity provider ------------------------------------

_STS_FIELDS = frozenset(
    {
        "grant_type",
        "audience",
        "scope",
        "requested_token_type",
        "subject_token",
        "subject_token_type",
        "options",
    }
)
_WORKFORCE_AUDIENCE = re.compile(r"//iam\.googleapis\.com/locations/[^/]+/workforcePools/")
_GENERATE_ACCESS_TOKEN = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")


def _google_api_error(status, code, message):
    """A Google API error reply (`{"error": {"code", "message", "status"}}`)."""
    return reply(status, {"error": {"code": status, "message": message, "status": code}})


def _strict_form(record):
    """Return (form, None) for a well-formed urlencoded POST, or (None, error reply)."""
    if record.method != "POST":
        return None, _oauth_error(405, "invalid_request", f"{record.method} is not allowed")
    if media_type(record.headers) != FORM_URLENCODED:
        return None, _oauth_error(400, "invalid_request", f"Content-Type must be {FORM_URLENCODED}")
    try:
        fields = parse_qs(record.body.decode(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None, _oauth_error(400, "invalid_request", "malformed form body")
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:
        return None, _oauth_error(400, "invalid_request", f"repeated parameters {repeated}")
    return single_values(fields), None


def _basic(client_id, client_secret):
    """The Authorization header value of HTTP Basic client authentication."""
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()


@dataclass
class _Provider:
    """A workload or workforce pool provider the fake STS knows."""

    subject_token_type: str
    accepts: object  # the one subject token it takes, or a callable returning a problem or None
    client: tuple | None
    user_project: str | None


class FakeSTS(FakeService):
    """Google's Security Token Service: RFC 8693 token exchange and workforce refresh grants."""

    server_header = "ESF"
    token_prefix = "sts"

    def __init__(self):
        super().__init__()
        self.providers: dict[str, _Provider] = {}
        self.workforce_users: dict[str, tuple] = {}

    @property
    def token_url(self):
        """The plain-HTTP token exchange URL (for token_url in test files)."""
        return f"http://127.0.0.1:{self.port}/v1/token"

    @property
    def refresh_url(self):
        """The plain-HTTP workforce refresh URL."""
        return f"http://127.0.0.1:{self.port}/v1/oauth/token"

    @property
    def exchanges(self):
        """The recorded token exchange requests."""
        return [r for r in self.requests if r.route == "/v1/token"]

    def add_provider(self, audience, subject_token_type, accepts, client=None, user_project=None):
        """Accept subject tokens for `audience`: `accepts` is the token or a checking callable."""
        self.providers[audience] = _Provider(subject_token_type, accepts, client, user_project)

    def add_workforce_user(self, refresh_token, client_id, client_secret, account):
        """Accept `refresh_token` at /v1/oauth/token with Basic auth of the OAuth client."""
        self.workforce_users[refresh_token] = (client_id, client_secret, account)

    def respond(self, record):
        """Answer /v1/token and /v1/oauth/token; anything else is a 404."""
        if record.route == "/v1/token":
            return self._exchange(record)
        if record.route == "/v1/oauth/token":
            return self._refresh(record)
        return reply(404, f"fake STS has nothing at {record.route}")

    def _exchange(self, record):
        form, error = _strict_form(record)
        if error:
            return error
        unexpected = sorted(set(form) - _STS_FIELDS)
        if unexpected:
            return _oauth_error(400, "invalid_request", f"unexpected parameters {unexpected}")
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return _oauth_error(400, "unsupported_grant_type", "not a token exchange")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error(400, "invalid_request", "requested_token_type must be access_token")
        provider = self.providers.get(form.get("audience", ""))
        if provider is None:
            return _oauth_error(
                400, "invalid_target", "The target service indicated by the audience is invalid."
            )
        if form.get("subject_token_type") != provider.subject_token_type:
            return _oauth_error(
                400, "invalid_request", "subject_token_type does not match the provider"
            )
        if form.get("scope") not in (CLOUD_PLATFORM, IAM_SCOPE):
            return _oauth_error(400, "invalid_scope", f"unexpected scope {form.get('scope')!r}")
        expected_auth = _basic(*provider.client) if provider.client else None
        if record.headers.get("authorization") != expected_auth:
            return _oauth_error(401, "invalid_client", "client authentication failed")
        from urllib.parse import unquote

        user_project = None
        if "options" in form:
            try:
                options = json.loads(unquote(form["options"]))
            except ValueError:
                return _oauth_error(400, "invalid_request", "options is not URL-encoded JSON")
            user_project = options.get("userProject") if isinstance(options, dict) else None
            if not isinstance(options, dict) or set(options) != {"userProject"}:
                return _oauth_error(400, "invalid_request", "unexpected options")
            if not _WORKFORCE_AUDIENCE.match(form["audience"]):
                return _oauth_error(400, "invalid_request", "unexpected options")
        if user_project != (None if provider.client else provider.user_project):
            return _oauth_error(400, "invalid_request", "workforce user project mismatch")
        token = form.get("subject_token", "")
        problem = self._check_subject_token(provider, token)
        if problem:
            return _oauth_error(400, "invalid_grant", problem)
        issued = self._issue(
            form["audience"], scope=form["scope"], subject_token=token, user_project=user_project
        )
        body = json.loads(issued.body)
        body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return reply(200, body)

    @staticmethod
    def _check_subject_token(provider, token):
        if not token:
            return "subject_token is empty"
        if callable(provider.accepts):
            return provider.accepts(token)
        return None if token == provider.accepts else "the subject token was not accepted"

    def _refresh(self, record):
        form, error = _strict_form(record)
        if error:
            return error
        if set(form) != {"grant_type", "refresh_token"} or form["grant_type"] != "refresh_token":
            return _oauth_error(400, "invalid_request", f"unexpected fields {sorted(form)}")
        user = self.workforce_users.get(form["refresh_token"])
        if user is None:
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or expired.")
        if record.headers.get("authorization") != _basic(user[0], user[1]):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        return self._issue(user[2])


class FakeIAMCredentials(FakeService):
    """IAM credentials generateAccessToken, accepting live tokens of the given issuers."""

    server_header = "ESF"
    token_prefix = "iam"

    def __init__(self, *issuers):
        super().__init__()
        self.issuers = list(issuers)
        self.service_accounts: set[str] = set()
        self.fractional_seconds = False

    def url(self, email):
        """The plain-HTTP generateAccessToken URL of `email`."""
        return f"http://127.0.0.1:{self.port}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"

    def add_service_account(self, email):
        """Let any live issued token impersonate `email`."""
        self.service_accounts.add(email)

    def respond(self, record):
        """Answer generateAccessToken strictly, with Google API style errors."""
        match = _GENERATE_ACCESS_TOKEN.fullmatch(record.route)
        if match is None:
            return _google_api_error(404, "NOT_FOUND", f"nothing at {record.route}")
        if record.method != "POST":
            return _google_api_error(405, "METHOD_NOT_ALLOWED", f"{record.method} is not allowed")
        if media_type(record.headers) != "application/json":
            return _google_api_error(
                400, "INVALID_ARGUMENT", "Content-Type must be application/json"
            )
        scheme, _, bearer = record.headers.get("authorization", "").partition(" ")
        source = self._source_of(bearer) if scheme == "Bearer" else None
        if source is None:
            return _google_api_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
            )
        body = record.json
        problem = self._check_body(body)
        if problem:
            return _google_api_error(400, "INVALID_ARGUMENT", problem)
        email = match.group(1)
        if email not in self.service_accounts:
            return _google_api_error(
                404, "NOT_FOUND", f"Not found; Gaia id not found for email {email}"
            )
        lifetime = int(body["lifetime"][:-1]) if body.get("lifetime") else 3600
        with self._lock:
            token = f"ya29.{self.token_prefix}-{next(self._serial)}-{secrets.token_hex(8)}"
            register_secret(token, access_token=True)
            expiry = time.time() + lifetime
            self.issued[token] = {
                "identity": email,
                "expiry": expiry,
                "source": source,
                "delegates": body.get("delegates"),
                "scope": body["scope"],
                "lifetime": lifetime,
                "quota_project": record.headers.get("x-goog-user-project"),
            }
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(expiry))
        if self.fractional_seconds:
            stamp += ".123456789"
        return reply(200, {"accessToken": token, "expireTime": stamp + "Z"})

    def _source_of(self, bearer):
        for issuer in self.issuers:
            if issuer.is_live(bearer):
                return issuer.issued[bearer]["identity"]
        return None

    @staticmethod
    def _check_body(body):
        if not isinstance(body, dict) or not set(body) <= {"delegates", "scope", "lifetime"}:
            return f"unexpected request body {body!r}"
        scope = body.get("scope")
        if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
            return "scope must be a non-empty list of strings"
        delegates = body.get("delegates")
        if delegates is not None and not (
            isinstance(delegates, list) and all(isinstance(d, str) for d in delegates)
        ):
            return "delegates must be a list of strings"
        lifetime = body.get("lifetime")
        if lifetime is not None and not (
            isinstance(lifetime, str) and re.fullmatch(r"[1-9][0-9]*s", lifetime)
        ):
            return f"lifetime {lifetime!r} is not a duration in seconds"
        if lifetime is not None and int(lifetime[:-1]) > 3600:
            return "lifetime must not exceed 3600s"
        return None


def aws_signature_checker(audience, keys):
    """A subject-token check for FakeSTS: a SigV4-signed GetCallerIdentity for `audience`.

    `keys` maps access key ids to (secret access key, session token or None).
    """

    import calendar
    import hashlib
    import hmac

    def check(subject_token):
        try:
            request = json.loads(urllib.parse.unquote(subject_token))
            headers = {h["key"]: h["value"] for h in request["headers"]}
            order = [h["key"] for h in request["headers"]]
        except (ValueError, KeyError, TypeError):
            return "the subject token is not a serialized AWS request"
        url = urlsplit(request.get("url", ""))
        match = re.fullmatch(r"sts\.([a-z0-9-]+)\.amazonaws\.com", url.hostname or "")
        if request.get("method") != "POST" or url.scheme != "https" or match is None:
            return "the subject token is not a POST to a regional AWS STS"
        if parse_qs(url.query) != {"Action": ["GetCallerIdentity"], "Version": ["2011-06-15"]}:
            return "the subject token is not a GetCallerIdentity call"
        if headers.get("x-goog-cloud-target-resource") != audience:
            return "x-goog-cloud-target-resource is not the audience"
        credential = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([a-z0-9-]+)/sts/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            headers.get("Authorization", ""),
        )
        if credential is None or credential.group(1) not in keys:
            return "unknown AWS access key"
        key_id, date, region, signed_names, signature = credential.groups()
        secret, session_token = keys[key_id]
        expected_names = ["host", "x-amz-date"] + (
            ["x-amz-security-token"] if session_token else []
        )
        if signed_names.split(";") != expected_names or region != match.group(1):
            return "unexpected signed headers or region"
        if headers.get("x-amz-security-token") != session_token:
            return "wrong session token"
        if order != [
            "Authorization",
            "host",
            "x-amz-date",
            *expected_names[2:],
            "x-goog-cloud-target-resource",
        ]:
            return f"unexpected header order {order}"
        amz_date = headers["x-amz-date"]
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        if abs(signed_at - time.time()) > 300 or amz_date[:8] != date:
            return "the request is not signed now"
        values = {
            "host": url.hostname,
            "x-amz-date": amz_date,
            "x-amz-security-token": session_token,
        }
        canonical = "\n".join(
            [
                "POST",
                "/",
                "Action=GetCallerIdentity&Version=2011-06-15",
                "".join(f"{name}:{values[name]}\n" for name in expected_names),
                signed_names,
                hashlib.sha256(b"").hexdigest(),
            ]
        )
        scope = f"{date}/{region}/sts/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{digest}"
        key = f"AWS4{secret}".encode()
        for part in (date, region, "sts", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(
            hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature
        ):
            return "the AWS signature does not verify"
        return None

    return check


class FakeIdentityProvider(FakeService):
    """A URL that hands out subject tokens (as Azure's metadata service does), text or JSON."""

    server_header = "IdP"

    def __init__(self):
        super().__init__()
        self.token = "idp-jwt-" + secrets.token_hex(8)
        register_secret(self.token)
        self.json_field = None  # None: answer text/plain; else {json_field: token}
        self.required_headers: dict[str, str] = {}

    @property
    def url(self):
        """The subject token URL."""
        return f"http://127.0.0.1:{self.port}/token?resource=gauth"

    def respond(self, record):
        """Answer GET /token when the required headers are there."""
        if record.route != "/token" or record.method != "GET":
            return reply(404, "not found")
        for name, value in self.required_headers.items():
            if record.headers.get(name.lower()) != value:
                return reply(401, {"error": f"header {name} missing"})
        if self.json_field is None:
            return reply(200, self.token)
        return reply(200, {self.json_field: self.token, "token_type": "Bearer"})


class VirtualHosts(FakeService):
    """One TLS server answering for several Google hosts, each by its own fake."""

    server_header = "ESF"

    def __init__(self, hosts):
        super().__init__()
        self.hosts = hosts

    def pop_scripted(self):
        """Scripts belong to the per-host fakes."""
        return None

    def respond(self, record):
        """Hand the request to the fake for its Host header, recording it there too."""
        host = record.headers.get("host", "").lower().removesuffix(":443")
        fake = self.hosts.get(host)
        if fake is None:
            return _google_api_error(404, "NOT_FOUND", f"no fake serves {host}")
        fake.record(record)
        return fake.pop_scripted() or fake.respond(record)


@dataclass
class GoogleFederation:
    """Fake STS, IAM credentials and OAuth endpoints, at their real https:// URLs via a proxy."""

    sts: FakeSTS
    iam: FakeIAMCredentials
    google: FakeGoogle
    hosts: VirtualHosts
    proxy: RoutingProxy
    ca_file: Path

    @property
    def connects(self):
        """CONNECT targets the proxy tunnelled, in order."""
        return self.proxy.connects
