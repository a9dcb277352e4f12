"""Google Artifact Registry credentials for pip, uv, twine and poetry: a keyring backend.

Answers ``oauth2accesstoken`` and a short-lived Google access token for ``*.pkg.dev``
hosts. Credentials are found the way Google's Application Default Credentials are, then
through the gcloud CLI. Standard library only; ``keyring`` is imported only when the
backend class is built, so this file can be vendored on its own.

One lookup, in the order this file is written:

1. ``GooglePyPIAuth.get_password`` (keyring) or ``get_token``;
2. the host policy, ``answers_for``: no answer and no I/O unless the service is a
   registry host that every HTTP stack agrees on;
3. ``lookup`` walks ``DISCOVERY``, the ADC order: a handed-over token, the
   ``GOOGLE_APPLICATION_CREDENTIALS`` file, gcloud's ADC file, the metadata server, gcloud;
4. the first step that applies gives a ``CredentialSource``, whose ``identify`` names the
   principal its token would be for;
5. ``TokenCache`` answers for that identity from memory or a private file; otherwise,
   under a lock, the source's ``fetch`` asks Google (OAuth, RS256, STS, SigV4 below);
6. through ``Transport``: HTTP with timeouts, retries, no redirects, and the TLS trust
   of ``_tls_context``; then the low-level helpers (files, subprocesses, hashing).

The command line (``main``) comes last, behind a banner; nothing above it uses it.
"""

from __future__ import annotations

import os
import sys
import time  # built in: loaded with the interpreter, free to import

__version__ = "0.1.0"
__all__ = ["CredentialError", "GooglePyPIAuth", "Token", "get_token", "lookup", "main"]  # noqa: F822 - built on first access


# --- constants and errors ---------------------------------------------------------------


USERNAME = "oauth2accesstoken"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
DEFAULT_UNIVERSE = "googleapis.com"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_HINT = "run `gcloud auth application-default login` (or `gcloud auth login`)"

# A token is handed out again only while it has this much life left: uv and poetry
# hold on to the password they get for a whole run.
MIN_TOKEN_LIFE = 15 * 60
# A token whose source did not say when it expires is kept in memory this long.
UNKNOWN_EXPIRY_LIFE = 5 * 60
# The whole lookup gives up after this many seconds, whatever hangs.
LOOKUP_BUDGET = 10.0
REQUEST_TIMEOUT = 5.0
MAX_BACKOFF = 4.0  # between retries: only the metadata server on Google hardware gets this far
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 3


# After a failed lookup, later calls in the same process fail fast and quietly
# (pip asks once for the URL and once for the host).
FAILURE_MEMORY = 30.0
MAX_RESPONSE_BYTES = 1 << 20


MAX_LOCAL_FILE_BYTES = 1 << 20


class CredentialError(Exception):
    """No token could be had; the message says what was tried and what to do."""


class NotApplicable(Exception):  # noqa: N818 - a verdict, not an error
    """This source does not apply here; ``look_again``, if any, is a step to try once more."""

    def __init__(self, reason: str, look_again=None) -> None:
        super().__init__(reason)
        self.look_again = look_again


class TokenEndpointError(CredentialError):
    """The token endpoint said no; ``error`` and ``subtype`` are its OAuth error codes."""

    def __init__(self, message: str, error: str = "", subtype: str = "") -> None:
        super().__init__(message)
        self.error = error
        self.subtype = subtype


class KeyFormatError(ValueError):
    """A private key that cannot be used; the message never contains key material."""


class _StaleResponseError(CredentialError):
    """An executable's answer that is well formed but unusable: run the executable again."""


class _TransientError(Exception):
    """A connection-level failure worth another try."""


class _OutputTooLargeError(Exception):
    """A command printed more than we keep; it was killed."""


class Token:
    """An access token, when it expires (epoch seconds, None if unknown) and where it came from."""

    __slots__ = ("value", "expiry", "source")

    def __init__(self, value: str, expiry: float | None, source: str = "") -> None:
        self.value = value
        self.expiry = expiry
        self.source = source

    def seconds_left(self) -> float | None:
        if self.expiry is None:
            return None
        return self.expiry - _now()

    def __repr__(self) -> str:  # never the token itself
        return f"<Token from {self.source or '?'} expiring at {self.expiry}>"


def _now() -> float:
    return time.time()


def _monotonic() -> float:
    return time.monotonic()


# --- the keyring backend and get_token: what callers see --------------------------------


def _build_backend_class() -> type:
    from keyring.backend import KeyringBackend
    from keyring.credentials import SimpleCredential

    class GooglePyPIAuth(KeyringBackend):
        """Google access tokens for Artifact Registry (*.pkg.dev) Python repositories."""

        # Above the OS keyrings (about 5) so we answer first; below keyring's chainer (10)
        # so other hosts still reach them.
        priority = 9

        def get_password(self, service: str, username: str | None) -> str | None:
            if not answers_for(service, username):
                return None
            return _token_or_none()

        def get_credential(self, service: str, username: str | None):
            if not answers_for(service, username):
                return None
            token = _token_or_none()
            return None if token is None else SimpleCredential(USERNAME, token)

        def set_password(self, service: str, username: str, password: str) -> None:
            # NotImplementedError (not PasswordSetError) lets keyring's chainer move on.
            raise NotImplementedError(
                "artifactregistry-gauth stores nothing: its credentials come from Google"
            )

        def delete_password(self, service: str, username: str) -> None:
            raise NotImplementedError(
                "artifactregistry-gauth stores nothing: its credentials come from Google"
            )

    GooglePyPIAuth.__module__ = "artifactregistry_gauth"
    GooglePyPIAuth.__qualname__ = "GooglePyPIAuth"
    return GooglePyPIAuth


def __getattr__(name: str) -> object:
    # PEP 562: `GooglePyPIAuth` is built (and keyring imported) on first access, which is
    # how keyring's entry point and keyringrc.cfg both load it.
    if name == "GooglePyPIAuth":
        module = sys.modules.get("artifactregistry_gauth") or sys.modules[__name__]
        cls = module.__dict__.get("_backend_class")
        if cls is None:
            cls = _build_backend_class()
            module._backend_class = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_token() -> str:
    """A live access token, or CredentialError."""
    return lookup().value


def _token_or_none() -> str | None:
    """The token for the keyring backend: on failure one warning line, then None."""
    if _LAST_FAILURE and _monotonic() - _LAST_FAILURE[0] < FAILURE_MEMORY:
        return None
    try:
        return get_token()
    except CredentialError as exc:
        _LAST_FAILURE[:] = [_monotonic()]
        _logger().warning("artifactregistry-gauth: %s", exc)
        return None


# --- which services we answer for (the host policy) -------------------------------------


def answers_for(service: str, username: str | None) -> bool:
    """Whether the backend answers this keyring question (decided without any I/O)."""
    return username in (None, "", USERNAME) and is_registry_service(service)


def is_registry_service(service: str) -> bool:
    """True for an https URL whose host is Artifact Registry's (``*.pkg.dev``) or in
    ARTIFACTREGISTRY_GAUTH_HOSTS, and for a bare name that is exactly a registry host.

    A URL's host is where the request goes. A bare name is answered only when it is
    ``LOCATION-FORMAT.pkg.dev`` or an ARTIFACTREGISTRY_GAUTH_HOSTS entry, with an optional
    port and nothing else: pdm and poetry also ask with names they build from a label that
    whoever wrote the project chose (``pdm-pypi-NAME``, ``poetry-repository-NAME``), then
    send the answer to that label's URL, wherever it points.
    """
    host = service_host(service)
    if host is None:
        return False
    if "://" not in service:
        return _is_registry_host(host) or _is_extra_host(host, wildcards=False)
    return _is_token_destination(host)


def service_host(service: str) -> str | None:
    """The host a keyring service names, an https URL or a bare ``host[:port]``, if unambiguous.

    None unless every HTTP stack would connect to the same host: urllib.parse ends the
    authority only at ``/?#``, while urllib3 (requests, so twine and poetry) and WHATWG
    parsers (uv) also end it at a backslash, decode ``%``, drop tabs and map Unicode dots.
    So a service with whitespace or control characters, an authority with a backslash,
    ``%``, a password or non-ASCII, or a host that is not plain letters, digits, ``-``
    and ``.`` gets no answer; neither does plain http, nor a bare name with more than
    ``host[:port]`` (a user, a path): that is not what pip and uv ask with.
    """
    if not isinstance(service, str) or not service.isprintable() or " " in service:
        return None
    scheme, sep, rest = service.partition("://")
    if not sep:
        return _authority_host(service, userinfo=False)
    if scheme.lower() != "https":
        return None
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    return _authority_host(rest[:end], userinfo=True)


# --- lookup: the first source that applies, its token cached by identity ----------------


def lookup(report: list | None = None) -> Token:
    """Find credentials in the documented order and return a live token.

    Raises CredentialError with one line saying what was tried and what to do. With
    ``report``, appends what each source said (for ``doctor``).
    """
    transport = Transport()
    skipped: dict = {}  # label -> NotApplicable
    for label, step in DISCOVERY:
        token = _try_step(label, step, transport, report, skipped)
        if token is not None:
            return token
    # A last, patient look where "absent" was remembered or hurried: it may be stale.
    again = [(label, exc.look_again) for label, exc in skipped.items() if exc.look_again]
    for label, step in again:
        token = _try_step(label, step, transport, report, skipped)
        if token is not None:
            return token
    raise CredentialError(
        f"no Google credentials found ({'; '.join(map(str, skipped.values()))}); {LOGIN_HINT}, "
        "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
    )


def _try_step(
    label, step, transport: Transport, report: list | None, skipped: dict
) -> Token | None:
    """The token of one discovery step, or None when it does not apply (why goes to skipped)."""
    try:
        source = step()
        with transport.own_budget(source.budget):
            token, how = _cached_or_fetched(source, transport)
    except NotApplicable as exc:
        _debug("skipped: %s", exc)
        skipped[label] = exc
        _note(report, label, "skipped", str(exc))
        return None
    except CredentialError as exc:
        _note(report, label, "failed", str(exc))
        raise _with_what_was_tried(exc, label, skipped) from None
    _note(report, label, "answered", source, token=token, how=how)
    return token


def _note(report: list | None, label: str, status: str, detail: object, **extra: object) -> None:
    if report is not None:
        report[:] = [step for step in report if step["source"] != label]  # a second look wins
        report.append(dict(source=label, status=status, detail=str(detail), **extra))


def _cached_or_fetched(source: CredentialSource, transport: Transport) -> tuple[Token, str]:
    """The source's token and where it came from: memory, disk or a fetch."""
    identity, learned = source.learn(transport)
    token = _CACHE.get(identity, source)
    if token is not None:
        _debug("using a cached token from %s", source)
        return token, "cache"
    with _CACHE.lock(identity, transport) if source.cacheable else _NO_LOCK:
        token = _CACHE.get(identity, source)  # another process may have just fetched it
        if token is not None:
            _debug("using a token another process just fetched from %s", source.describe())
            return token, "cache"
        started = _monotonic()
        token = source.fetch_learned(transport, learned)
        if not _is_token_text(token.value):
            # Printed into netrc files, headers and `keyring get` output, a space or newline
            # would smuggle in extra entries or lines.
            raise source.fail(
                "the token it gave is not one word of printable ASCII",
                "check what issues the token",
            )
        _debug("got a token from %s in %.0f ms", source.describe(), 1000 * (_monotonic() - started))
        _CACHE.put(identity, token, source)
    return token, "fetched"


def _is_token_text(value: object) -> bool:
    """True for a non-empty string of printable ASCII without spaces, as access tokens are."""
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isprintable()
        and " " not in value
        and bool(value)
    )


# --- discovery: the ADC order, then gcloud ----------------------------------------------


#
# Each step returns a source or raises NotApplicable with the reason it was skipped.
# A CredentialError from a step ends the search: a broken credential that was asked for
# must never silently become another identity.
def _explicit_token() -> CredentialSource:
    value = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN", "").strip()
    if not value:
        raise NotApplicable("GOOGLE_OAUTH_ACCESS_TOKEN is not set")
    return ExplicitToken(value)


def _explicit_adc_file() -> CredentialSource:
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if not path:
        raise NotApplicable("GOOGLE_APPLICATION_CREDENTIALS is not set")
    # Naming gcloud's own ADC file means "use gcloud's ADC": when it is missing, discovery
    # goes on as google-auth's does (docs/protocols.md#discovery); other missing files fail.
    if not os.path.exists(path) and _same_path(path, gcloud_adc_path()):
        raise NotApplicable(f"GOOGLE_APPLICATION_CREDENTIALS names gcloud's absent {path}")
    return AdcFile(path, "GOOGLE_APPLICATION_CREDENTIALS")


def _gcloud_adc_file() -> CredentialSource:
    path = gcloud_adc_path()
    if not os.path.isfile(path):
        raise NotApplicable(f"no {path}")
    return AdcFile(path, "gcloud's application default credentials")


def _metadata_server() -> CredentialSource:
    if os.environ.get("NO_GCE_CHECK", "").lower() in ("true", "1", "yes"):
        raise NotApplicable("metadata server not checked (NO_GCE_CHECK)")
    return MetadataServer()  # its identity is learnt from the server, in the lookup's budget


def _gcloud() -> CredentialSource:
    executable = _find_executable("gcloud.cmd" if os.name == "nt" else "gcloud")
    try:
        settings = GcloudSettings.read(executable)
    except CredentialError as exc:
        if executable:
            raise
        raise NotApplicable(f"gcloud is not on PATH (and {exc})") from None
    if not settings.impersonated():
        # gcloud would print these tokens unchanged, so it need not run (its order: the
        # variable, then the file). Impersonation trades them for another token: gcloud runs.
        token = os.environ.get("CLOUDSDK_AUTH_ACCESS_TOKEN", "").strip()
        if token:
            return ExplicitToken(token, "$CLOUDSDK_AUTH_ACCESS_TOKEN")
        token_file = settings.get("auth/access_token_file")
        if token_file:
            return GcloudAccessTokenFile(token_file, settings.named_by("auth/access_token_file"))
    if not executable:
        raise NotApplicable("gcloud is not on PATH")
    return GcloudCli(executable, settings)


DISCOVERY = (
    ("GOOGLE_OAUTH_ACCESS_TOKEN", _explicit_token),
    ("GOOGLE_APPLICATION_CREDENTIALS", _explicit_adc_file),
    ("gcloud ADC file", _gcloud_adc_file),
    ("metadata server", _metadata_server),
    ("gcloud", _gcloud),
)


# --- credential sources: one class each, the same small interface ------------------------


#
# Each source is built cheaply (no network), names a stable ``identity`` for the token
# cache, describes itself for humans, and ``fetch``es a Token. ``fetch`` raises
# NotApplicable when the source turns out to be absent (no metadata server), and
# CredentialError when it is there but fails.
class CredentialSource:
    """One place a token can come from."""

    kind = "credentials"
    account = ""
    cacheable = True  # False for tokens that are already at hand: nothing to save
    budget: float | None = None  # seconds of its own, instead of the lookup's
    content_hash = ""  # of the file it was read from, so an edited file is a new identity

    def __init__(self, origin: str) -> None:
        self.origin = origin  # the file or variable it was found in

    identity_kind = ""  # the kind its identity names, when not ``kind``

    @property
    def static_identity(self) -> str:
        """The cache identity as far as it is known without asking anyone."""
        return f"{self.identity_kind or self.kind}:{self.origin}:{self.content_hash}"

    def identify(self, transport: Transport) -> str:
        """The cache identity; a source whose principal shows only at run time looks here."""
        return self.static_identity

    def learn(self, transport: Transport) -> tuple[str, object]:
        """The cache identity, and what finding it learned that a fetch needs again (a
        subject token, AWS keys): handed to ``fetch_learned``, never kept on the source."""
        return self.identify(transport), None

    def fetch_learned(self, transport: Transport, learned: object) -> Token:
        """``fetch``, given what ``learn`` found in this lookup."""
        return self.fetch(transport)

    def describe(self) -> str:
        who = f" {self.account}" if self.account else ""
        return f"{self.kind}{who} from {self.origin}"

    def __str__(self) -> str:  # log lines describe a source only when they are written
        return self.describe()

    def fetch(self, transport: Transport) -> Token:
        raise NotImplementedError

    def fail(self, problem: str, fix: str = "") -> CredentialError:
        """One line: who failed, what went wrong, and what to do."""
        if fix:
            problem = (problem[:-1] if problem.endswith(".") else problem) + f"; {fix}"
        return CredentialError(f"{self.blame()}: {problem}")

    def blame(self) -> str:
        """How error lines name this source: the file or variable it came from."""
        return self.origin

    def failed(self, exc: CredentialError, fix: str = "") -> CredentialError:
        """``fail`` for a request that failed; a token endpoint's refusal gets a fix.

        The fix is ``fix`` if given, else the source's own ``refusal_fix``.
        """
        if isinstance(exc, TokenEndpointError):
            return self.fail(str(exc), fix or self.refusal_fix(exc))
        return self.fail(str(exc))

    def refusal_fix(self, exc: TokenEndpointError) -> str:
        """What to do when the token endpoint refuses this source (its OAuth error)."""
        return ""


class ExplicitToken(CredentialSource):
    """A token handed over in a variable: ``GOOGLE_OAUTH_ACCESS_TOKEN`` or gcloud's own."""

    kind = "access token"
    cacheable = False

    def __init__(self, value: str, origin: str = "$GOOGLE_OAUTH_ACCESS_TOKEN") -> None:
        super().__init__(origin)
        self.value = value
        # A new value is a new identity at once; the hash keeps the value out of the key.
        self.content_hash = _short_hash(value)

    def fetch(self, transport: Transport) -> Token:
        return Token(self.value, None, self.describe())


# --- Application Default Credentials files: service account and authorized user ----------


class ServiceAccountKey(CredentialSource):
    """A service-account key file: an RS256-signed JWT exchanged at its ``token_uri``."""

    kind = "service account"
    scope = SCOPE  # impersonation asks for the IAM scope instead

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(origin)
        fields = _Fields(info, origin, _KEY_FIX)
        self.account = fields.require("client_email")
        private_key = fields.require("private_key")
        self.token_uri = fields.require("token_uri")
        self.key_id = fields.get("private_key_id") or None
        self.universe = fields.get("universe_domain") or DEFAULT_UNIVERSE
        try:
            self.key = RsaPrivateKey.from_pem(private_key)
        except KeyFormatError as exc:
            problem = f"field private_key is not a usable RSA private key ({exc})"
            raise self.fail(problem, _KEY_FIX) from None

    def sign(self, claims: dict) -> str:
        try:
            return make_jwt(self.key, claims, self.key_id)
        except ValueError as exc:  # KeyFormatError included
            raise self.fail(f"signing with private_key failed ({exc})", _KEY_FIX) from None

    def fetch(self, transport: Transport) -> Token:
        now = int(_now())
        if self.universe != DEFAULT_UNIVERSE:
            # Outside googleapis.com there is no token endpoint: the signed JWT is the token.
            claims = {"iss": self.account, "sub": self.account, "iat": now, "exp": now + 3600}
            claims["scope"] = self.scope
            return Token(self.sign(claims), now + 3600, self.describe())
        claims = {
            "iat": now,
            "exp": now + 3600,
            "iss": self.account,
            "aud": GOOGLE_TOKEN_URI,  # even when token_uri differs, as Google's libraries do
            "scope": self.scope,
        }
        assertion = self.sign(claims)
        fields = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        try:
            data = _post_form(transport, self.token_uri, fields, "the token endpoint")
        except CredentialError as exc:
            raise self.failed(exc) from None
        return _token_from_oauth(data, "the token endpoint", self.describe())

    def refusal_fix(self, exc: TokenEndpointError) -> str:
        if "clock" in str(exc).lower() or "jwt" in str(exc).lower():
            return "check that this machine's clock is right, or " + _KEY_FIX
        return _KEY_FIX if exc.error in ("invalid_grant", "invalid_client") else ""


_KEY_FIX = (
    "create a new key with `gcloud iam service-accounts keys create KEY.json "
    "--iam-account=SA_EMAIL` and point GOOGLE_APPLICATION_CREDENTIALS at it"
)


class AuthorizedUser(CredentialSource):
    """A user's refresh token, as `gcloud auth application-default login` writes it."""

    kind = "user"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(origin)
        fields = _Fields(info, origin, LOGIN_HINT)
        refresh_token = fields.require("refresh_token")
        self.account = fields.get("account")
        self.fields = {
            "grant_type": "refresh_token",
            "client_id": fields.require("client_id"),
            "client_secret": fields.require("client_secret"),
            "refresh_token": refresh_token,
        }
        rapt_token = fields.get("rapt_token")
        if rapt_token:
            self.fields["rapt"] = rapt_token
        universe = fields.get("universe_domain") or DEFAULT_UNIVERSE
        if universe != DEFAULT_UNIVERSE:
            raise self.fail(
                f"user credentials work only in the {DEFAULT_UNIVERSE} universe, not {universe}",
                "use a service account key for that universe",
            )

    def fetch(self, transport: Transport) -> Token:
        # The token URI is fixed for user credentials: a token_uri in the file is ignored.
        try:
            data = _post_form(transport, GOOGLE_TOKEN_URI, self.fields, "Google's token endpoint")
        except TokenEndpointError as exc:
            if exc.subtype in ("invalid_rapt", "rapt_required"):
                problem = "Google wants you to sign in again (reauthentication)"
                raise self.fail(problem, LOGIN_HINT) from None
            raise self.failed(exc) from None
        return _token_from_oauth(data, "Google's token endpoint", self.describe())

    def refusal_fix(self, exc: TokenEndpointError) -> str:
        return _expired_login_fix(exc, LOGIN_HINT)


def _expired_login_fix(exc: TokenEndpointError, login: str) -> str:
    """For a refresh token the endpoint no longer accepts: log in again."""
    if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
        return "the login has expired or was revoked; " + login
    return ""


# What a JSON field must hold, in the words its error line uses.
_KINDS = {
    "a string": lambda value: isinstance(value, str),
    "a non-empty string": lambda value: isinstance(value, str) and value != "",
    "a path": lambda value: isinstance(value, str),
    "a JSON object": lambda value: isinstance(value, dict),
    "an object of string values": lambda value: (
        isinstance(value, dict) and all(isinstance(item, str) for item in value.values())
    ),
    "a list of service account emails": lambda value: (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ),
    "true or false": lambda value: isinstance(value, bool),
    "a number": lambda value: type(value) in (int, float),  # not true or false
    "a whole number": lambda value: type(value) is int,
}


class _Fields:
    """A JSON object of a credentials file (or of an answer it leads to), read one checked
    field at a time.

    A field that is missing or null is absent. A wrong one is one line naming the file, the
    field's full path (``credential_source.format.type``) and the fix.
    """

    def __init__(self, data: dict, origin: str, fix: str, path: str = "") -> None:
        self.data, self.origin, self.fix, self.path = data, origin, fix, path

    def get(self, name: str, kind: str = "a string", default: object = "") -> object:
        """The field ``name`` if it holds ``kind``; ``default`` when it is absent."""
        value = self.data.get(name)
        if value is not None and not _KINDS[kind](value):
            raise self.fail(name, f"is not {kind}")
        return default if value is None else value

    def require(self, name: str, kind: str = "a non-empty string") -> object:
        """The field ``name``, which must be there, hold ``kind`` and not be empty."""
        if name not in self.data:
            raise self.fail(name, "is missing")
        value = self.get(name, kind, None)
        if value is None or value == "":
            raise self.fail(name, f"is not {kind}")
        return value

    def number(self, name: str, kind: str, low: int, high: int, default: int) -> float:
        """The field ``name``, ``kind`` from ``low`` to ``high``; ``default`` when absent."""
        value = self.data.get(name)
        if value is None:
            return default
        if not _KINDS[kind](value) or not low <= value <= high:
            fix = f"fix it or remove it (the default is {default})"
            raise self.fail(name, f"is not {kind} from {low} to {high}", fix)
        return value

    def object(self, name: str, required: bool = False) -> _Fields:
        """The JSON object in the field ``name``, its own fields read the same way."""
        kind = "a JSON object"
        data = self.require(name, kind) if required else self.get(name, kind, {})
        return _Fields(data, self.origin, self.fix, f"{self.path}{name}.")

    def fail(self, name: str, problem: str, fix: str = "") -> CredentialError:
        """One line: the file, the field's full path, what is wrong with it, the fix."""
        return CredentialError(
            f"{self.origin}: field {self.path + name!r} {problem}; {fix or self.fix}"
        )


# --- workload and workforce identity federation (external_account) ------------------------


# Workload and workforce identity federation and service-account impersonation
# (docs/protocols.md#federation): a token from another identity provider is exchanged at
# Google's Security Token Service (STS), and the result may be traded at IAM for a service
# account's token. Each way of getting the outside token is one small subclass.
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
STS_URL_TEMPLATE = "https://sts.{universe_domain}/v1/token"
IAM_URL_TEMPLATE = (
    "https://iamcredentials.{universe_domain}/v1/projects/-/serviceAccounts/"
    "{email}:generateAccessToken"
)
DEFAULT_IMPERSONATION_LIFETIME = 3600
EXECUTABLE_TIMEOUT_MILLIS = 30_000
IMDSV2_TTL_SECONDS = "300"
_FEDERATION_FIX = (
    "recreate the file with `gcloud iam workload-identity-pools create-cred-config` "
    "(or `gcloud iam workforce-pools create-cred-config`)"
)
_WORKFORCE_LOGIN_FIX = (
    "run `gcloud auth application-default login --login-config=LOGIN_CONFIG_FILE` again"
)


def _target_principal(url: str) -> str:
    """The service account email in a ``.../serviceAccounts/EMAIL:generateAccessToken`` URL."""
    start, end = url.rfind("/"), url.find(":generateAccessToken")
    if start == -1 or end == -1 or start > end or not url[start + 1 : end]:
        return ""
    return url[start + 1 : end]


def _impersonated_account(fields: _Fields, url: str) -> str:
    """The service account of the file's service_account_impersonation_url ``url``."""
    account = _target_principal(url)
    if not account:
        problem = "does not end in serviceAccounts/EMAIL:generateAccessToken"
        raise fields.fail("service_account_impersonation_url", problem)
    return account


# Claims that change with every token issued to the same subject.
_VOLATILE_CLAIMS = frozenset({"iat", "exp", "nbf", "jti", "auth_time"})


def _stable_jwt_claims(token: str) -> str:
    """A JWT's claims without its times and id, as canonical JSON; "" if not a JWT."""
    import base64
    import binascii
    import json

    parts = token.split(".")
    if len(parts) != 3:
        return ""
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = _json_loads(payload)
    except (binascii.Error, ValueError):
        return ""
    if not isinstance(claims, dict):
        return ""
    stable = {k: v for k, v in claims.items() if k not in _VOLATILE_CLAIMS}
    return json.dumps(stable, sort_keys=True, separators=(",", ":"))


class ExternalAccount(CredentialSource):
    """An ``external_account`` file: a subject token exchanged at Google's STS (RFC 8693)."""

    source_name = ""  # how the subject token is found: file, url, executable, aws

    @classmethod
    def from_info(cls, info: dict, origin: str) -> ExternalAccount:
        """The subclass for this file's ``credential_source``, in Google's order."""
        fields = _Fields(info, origin, _FEDERATION_FIX)
        source = fields.object("credential_source", required=True)
        if info.get("subject_token_type") == AWS_TOKEN_TYPE:
            return AwsFederation(info, origin)
        if source.data.get("executable") is not None:
            return ExecutableFederation(info, origin)
        if "environment_id" in source.data:
            raise source.fail(
                "environment_id",
                f"is {source.data['environment_id']!r}, which is only for AWS, but "
                f"subject_token_type is not {AWS_TOKEN_TYPE}",
            )
        given = [n for n in ("file", "url", "certificate") if source.data.get(n) is not None]
        if len(given) != 1:
            raise fields.fail(
                "credential_source",
                "must have exactly one of 'file', 'url', 'executable', 'certificate' or "
                "AWS's 'environment_id'",
            )
        classes = {"file": FileFederation, "url": UrlFederation, "certificate": X509Federation}
        return classes[given[0]](info, origin)

    def __init__(self, info: dict, origin: str) -> None:
        import re

        super().__init__(origin)
        fields = _Fields(info, origin, _FEDERATION_FIX)
        self.credential_source = fields.object("credential_source", required=True)
        self.audience = fields.require("audience")
        self.subject_token_type = fields.require("subject_token_type")
        self.universe = fields.get("universe_domain") or DEFAULT_UNIVERSE
        # gcloud writes token_url; without one, the universe's STS is the documented default.
        token_url = fields.get("token_url") or STS_URL_TEMPLATE
        self.token_url = token_url.replace("{universe_domain}", self.universe)
        self.client_id = fields.get("client_id")
        self.client_secret = fields.get("client_secret")
        workforce = re.match(
            r"//iam\.googleapis\.com/locations/[^/]+/workforcePools/", self.audience
        )
        self.user_project = fields.get("workforce_pool_user_project")
        if self.user_project and not workforce:
            raise fields.fail(
                "workforce_pool_user_project",
                "is set but the audience is not a workforce pool "
                "(//iam.googleapis.com/locations/LOCATION/workforcePools/...)",
                "remove workforce_pool_user_project, or fix the audience",
            )
        federation = "workforce" if workforce else "workload"
        self.kind = f"{federation} identity federation ({self.source_name})"
        self.quota_project = os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT") or fields.get(
            "quota_project_id"
        )
        self.impersonation_url = fields.get("service_account_impersonation_url")
        self.lifetime = DEFAULT_IMPERSONATION_LIFETIME
        if self.impersonation_url:
            self.account = _impersonated_account(fields, self.impersonation_url)
            options = fields.object("service_account_impersonation")
            self.lifetime = options.number(
                "token_lifetime_seconds", "a whole number", 1, 43200, self.lifetime
            )

    def subject_token(self, transport: Transport) -> str:
        """The token from the other identity provider."""
        raise NotImplementedError

    def client_tls(self) -> tuple | None:
        """(SSL context, its trust) for STS and IAM when they need a client certificate."""
        return None

    def identify(self, transport: Transport) -> str:
        return self.learn(transport)[0]

    def learn(self, transport: Transport) -> tuple[str, object]:
        # The file says where the subject token comes from, not whose it is: on a shared CI
        # runner the same file serves one job's token, then another's. So the subject is
        # part of the identity (hashed; it is never stored).
        subject_token = self.subject_token(transport)
        subject = _short_hash(self.subject_fingerprint(subject_token))
        return f"{self.static_identity}:{subject}", subject_token

    def subject_of(self, learned: object) -> str:
        """The subject token, from what ``learn`` found."""
        return str(learned)

    def subject_fingerprint(self, subject_token: str) -> str:
        """What decides the principal: a JWT's claims (not its times), else the whole token."""
        return _stable_jwt_claims(subject_token) or subject_token

    def fetch(self, transport: Transport) -> Token:
        return self.fetch_learned(transport, None)

    def fetch_learned(self, transport: Transport, learned: object) -> Token:
        if learned is None:  # identified without looking (a cached token that just expired)
            learned = self.learn(transport)[1]
        subject_token = self.subject_of(learned)
        # With impersonation the STS token only has to be good enough to call IAM.
        fields = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "audience": self.audience,
            "scope": IAM_SCOPE if self.impersonation_url else SCOPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token": subject_token,
            "subject_token_type": self.subject_token_type,
        }
        headers = {}
        if self.user_project and not self.client_id:
            import json
            from urllib.parse import quote

            # Encoded once here and again by the form: Google's STS expects exactly that.
            fields["options"] = quote(json.dumps({"userProject": self.user_project}))
        _debug(
            "exchanging the %s subject token at %s", self.source_name, _quoted_url(self.token_url)
        )
        try:
            if self.client_id:
                headers["Authorization"] = _basic_auth(self.client_id, self.client_secret)
            tls = self.client_tls()
            data = _post_form(transport, self.token_url, fields, "Google's STS", headers, tls)
            token = _token_from_oauth(data, "Google's STS", self.describe())
        except CredentialError as exc:
            raise self.failed(exc) from None
        if not self.impersonation_url:
            return token
        try:
            return _generate_access_token(
                transport,
                self.impersonation_url,
                token.value,
                None,
                self.lifetime,
                self.quota_project,
                self.describe(),
                tls,
            )
        except CredentialError as exc:
            fix = f"grant the federated identity roles/iam.workloadIdentityUser on {self.account}"
            raise self.failed(exc, fix) from None

    def refusal_fix(self, exc: TokenEndpointError) -> str:
        if not exc.error:
            return ""
        return "check the audience, and that the pool's provider accepts this subject token"

    def _token_format(self) -> tuple[str, str]:
        """(format type, JSON field name) of a file or url subject token."""
        form = self.credential_source.object("format")
        kind = form.get("type") or "text"
        if kind not in ("text", "json"):
            raise form.fail("type", f"is {kind!r}, expected 'text' or 'json'")
        field = form.get("subject_token_field_name") if kind == "json" else ""
        if kind == "json" and not field:
            raise form.fail("subject_token_field_name", "is missing (needed for the json format)")
        return kind, field

    def _parse_subject_token(self, content: str, where: str) -> str:
        kind, field = self.format
        token = content
        if kind == "json":
            try:
                data = _json_loads(content)
                token = data[field]
            except (ValueError, KeyError, TypeError):
                raise self.fail(
                    f"cannot read a subject token from {where}: it is not a JSON object "
                    f"with the field {field!r}",
                    "check credential_source.format.subject_token_field_name",
                ) from None
        if not isinstance(token, str) or not token:
            raise self.fail(f"{where} holds no subject token", "check the identity provider")
        return token


class FileFederation(ExternalAccount):
    """Federation with a subject token read from a file (Kubernetes, Azure, CI systems)."""

    source_name = "file"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(info, origin)
        self.path = self.credential_source.require("file", "a path")
        self.format = self._token_format()

    def subject_token(self, transport: Transport) -> str:
        where = f"the subject token file {self.path}"
        try:
            content = read_local_text(self.path)  # whole, not stripped, as Google's libraries do
        except FileNotFoundError:
            raise self.fail(
                f"{where} (credential_source.file) was not found",
                "check that the identity provider's token is written there",
            ) from None
        except OSError as exc:
            raise self.fail(f"cannot read {where} ({exc.strerror})") from None
        return self._parse_subject_token(content, where)


class UrlFederation(ExternalAccount):
    """Federation with a subject token fetched from a URL (Azure and other metadata services)."""

    source_name = "url"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(info, origin)
        source = self.credential_source
        self.url = source.get("url")
        scheme, host = _scheme_and_host(self.url)
        if scheme not in ("http", "https") or not host:
            raise source.fail("url", "is not an http or https URL")
        self.headers = source.get("headers", "an object of string values", {})
        self.direct = _is_local_address(host)
        self.format = self._token_format()

    def subject_token(self, transport: Transport) -> str:
        where = f"the subject token URL {_quoted_url(self.url)}"
        try:
            response = transport.request("GET", self.url, headers=self.headers, direct=self.direct)
        except CredentialError as exc:
            raise self.fail(str(exc)) from None
        if response.status != 200:
            raise self.fail(
                f"{where} answered HTTP {response.status}",
                "check credential_source.url and credential_source.headers",
            )
        try:
            content = response.body.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{where} answered with something not UTF-8 text") from None
        return self._parse_subject_token(content, where)


def split_command(command: str, windows: bool | None = None) -> list:
    """The words of credential_source.executable.command, run without a shell.

    google-auth runs shlex.split(command) (google/auth/pluggable.py): quotes group words,
    a backslash escapes the next character. On Windows (``windows``, default: this OS) the
    backslash is the path separator, which those rules would drop (C:\\tools\\idp.exe
    becomes C:toolsidp.exe), so there it is an ordinary character; the quotes work alike.
    Raises ValueError for an unclosed quote.
    """
    import shlex

    if windows is None:
        windows = os.name == "nt"
    if not windows:
        return shlex.split(command)
    lexer = shlex.shlex(command, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # as shlex.split: a "#" is part of a word
    lexer.escape = ""
    return list(lexer)


class ExecutableFederation(ExternalAccount):
    """Federation with a subject token printed by a command (docs/protocols.md#executable)."""

    source_name = "executable"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(info, origin)
        self.executable = self.credential_source.object("executable", required=True)
        self.command = self.executable.get("command")
        if not self.command.strip():
            raise self.executable.fail("command", "is missing or empty")
        millis = self.executable.number(
            "timeout_millis", "a number", 5000, 120_000, EXECUTABLE_TIMEOUT_MILLIS
        )
        self.timeout = millis / 1000
        self.output_file = self.executable.get("output_file", "a path")

    def subject_token(self, transport: Transport) -> str:
        if os.environ.get("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES") != "1":
            raise self.fail(
                "it runs a command (credential_source.executable), and executables are not allowed",
                "set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1 if you trust this file",
            )
        if self.output_file:
            token = self._token_from_output_file()
            if token:
                _debug("reusing the subject token in %s", self.output_file)
                return token
        return self._parse_response(self._run(transport), "the executable's response")

    def _token_from_output_file(self) -> str:
        try:
            # Ours only: in a shared directory such as /tmp another user could plant a token.
            response = _json_loads(read_local_file(self.output_file, owned=True))
        except FileNotFoundError:
            return ""  # not written yet: run the executable
        except OSError as exc:
            _debug("not using the output file %s: %s", self.output_file, exc.strerror)
            return ""
        except ValueError:
            return ""  # half-written: run the executable
        if not isinstance(response, dict):
            return ""
        try:
            token = self._parse_response(response, f"the output file {self.output_file}")
        except _StaleResponseError:
            return ""
        # Without an expiry a saved token cannot be trusted to be still good.
        return token if "expiration_time" in response else ""

    def _run(self, transport: Transport) -> object:
        import subprocess

        try:
            argv = split_command(self.command)  # at least one word: the command is not blank
        except ValueError as exc:
            raise self.executable.fail("command", f"cannot be split into words ({exc})") from None
        env = dict(os.environ)
        env.update(
            GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=self.audience,
            GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE=self.subject_token_type,
            GOOGLE_EXTERNAL_ACCOUNT_ID=self.account,
            GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE="0",
            GOOGLE_EXTERNAL_ACCOUNT_REVOKE="0",
        )
        if self.impersonation_url:
            env["GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL"] = self.account
        if self.output_file:
            env["GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"] = self.output_file
        # timeout_millis bounds the executable (an SSO helper may wait for a person), not the
        # network budget; the budget is given back afterwards for the exchange that follows.
        timeout = self.timeout
        started = _monotonic()
        _debug("running %s", argv[0])
        try:
            done = _run_capped(argv, env, timeout)  # stderr apart: a warning cannot spoil the JSON
        except subprocess.TimeoutExpired:
            raise self.fail(
                f"the executable did not finish within {timeout:.1f} s",
                "fix the command or raise credential_source.executable.timeout_millis",
            ) from None
        except _OutputTooLargeError as exc:
            raise self.fail(f"the executable {exc}", _EXECUTABLE_FIX) from None
        except OSError as exc:
            raise self.fail(
                f"cannot run the executable {argv[0]!r} ({exc.strerror or exc})",
                "fix credential_source.executable.command",
            ) from None
        transport.deadline += _monotonic() - started
        output = done.stdout.decode("utf-8", "replace").strip()
        if not output and self.output_file and done.returncode == 0:
            try:
                output = read_local_text(self.output_file, owned=True)
            except OSError as exc:
                raise self.fail(
                    f"the executable printed nothing and its output file {self.output_file} "
                    f"cannot be read ({exc.strerror})"
                ) from None
        try:
            response = _json_loads(output)
        except ValueError:
            response = None
        if done.returncode != 0:
            if isinstance(response, dict) and response.get("success") is False:
                self._parse_response(response, "the executable's response")
            said = _last_line(done.stderr)
            raise self.fail(
                f"the executable exited with code {done.returncode}"
                + (f" and said: {said}" if said else ""),
                "run the command by hand to see what is wrong",
            )
        if not isinstance(response, dict):
            raise self.fail(
                "the executable's response is not a JSON object",
                "it must print the JSON response documented for executable-sourced credentials",
            )
        return response

    def _parse_response(self, response: dict, where: str) -> str:
        """The subject token of a response; _StaleResponseError if running again may help."""
        fields = _Fields(response, f"{self.origin}: {where}", _EXECUTABLE_FIX)
        version = fields.require("version", "a whole number")
        if version > 1:
            raise _StaleResponseError(
                f"{self.origin}: {where} has version {version}, and only version 1 is "
                "supported; update the executable or artifactregistry-gauth"
            )
        if not fields.require("success", "true or false"):
            code, message = response.get("code"), response.get("message")
            if code is None or message is None:
                raise self.fail(
                    f"{where} says it failed but has no code and message fields",
                    _EXECUTABLE_FIX,
                )
            raise _StaleResponseError(
                f"{self.origin}: the executable failed: {str(code)[:100]}: {str(message)[:300]}"
            )
        expiration = fields.get("expiration_time", "a number", None)
        if expiration is not None and expiration < _now():
            raise _StaleResponseError(
                f"{self.origin}: the token in {where} has expired (expiration_time "
                f"{int(expiration)}); the executable must print a fresh one"
            )
        token_type = fields.require("token_type", "a string")
        field = _EXECUTABLE_TOKEN_FIELDS.get(token_type)
        if field is None:
            raise _StaleResponseError(
                f"{self.origin}: {where} has the unsupported token_type {token_type[:100]!r}; "
                + _EXECUTABLE_FIX
            )
        return fields.require(field)


_EXECUTABLE_TOKEN_FIELDS = {
    "urn:ietf:params:oauth:token-type:jwt": "id_token",
    "urn:ietf:params:oauth:token-type:id_token": "id_token",
    "urn:ietf:params:oauth:token-type:saml2": "saml_response",
}
_EXECUTABLE_FIX = (
    "the executable must print the JSON response documented for executable-sourced credentials"
)


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class AwsFederation(ExternalAccount):
    """Federation from AWS: a SigV4-signed GetCallerIdentity request is the subject token."""

    source_name = "aws"

    def __init__(self, info: dict, origin: str) -> None:
        import re

        super().__init__(info, origin)
        source = self.credential_source
        environment = source.require("environment_id")
        match = re.fullmatch(r"aws(\d+)", environment)
        if match is None:
            raise source.fail("environment_id", f"is {environment!r}, expected 'aws1'")
        if match.group(1) != "1":
            raise source.fail("environment_id", f"is {environment!r}: only 'aws1' is supported")
        self.verification_url = source.get("regional_cred_verification_url")
        scheme, host = _scheme_and_host(self.verification_url.replace("{region}", "region"))
        if scheme != "https" or not host:
            raise source.fail("regional_cred_verification_url", "is not an https URL")
        urls = [source.get(name) for name in _AWS_URLS]
        for name, url in zip(_AWS_URLS, urls):
            if url and _scheme_and_host(url)[0] not in ("http", "https"):
                raise source.fail(name, "is not an http URL")
        self.region_url, self.credentials_url, self.imdsv2_url = urls

    def learn(self, transport: Transport) -> tuple[str, object]:
        # The signed request carries a timestamp, so it differs every time; the AWS
        # credentials that sign it decide the principal (hashed, never stored).
        aws = self._region_and_credentials(transport)
        return f"{self.static_identity}:{_short_hash(_json_compact(aws))}", aws

    def _region_and_credentials(self, transport: Transport) -> tuple:
        metadata = _AwsMetadata(self, transport)
        return (metadata.region(), *metadata.credentials())

    def subject_token(self, transport: Transport) -> str:
        return self.subject_of(self._region_and_credentials(transport))

    def subject_of(self, learned: object) -> str:
        """The signed GetCallerIdentity request, signed now with the learned keys."""
        import json
        from urllib.parse import quote

        region, key_id, secret, session_token = learned
        url = self.verification_url.replace("{region}", region)
        try:
            headers = aws_sigv4_headers("POST", url, region, key_id, secret, session_token, _now())
        except CredentialError as exc:
            raise self.fail(str(exc), "check the AWS credentials") from None
        # Added after signing: STS checks it, AWS never sees it.
        headers["x-goog-cloud-target-resource"] = self.audience
        request = {
            "url": url,
            "method": "POST",
            "headers": [{"key": key, "value": value} for key, value in headers.items()],
        }
        return quote(json.dumps(request, separators=(",", ":"), sort_keys=True))


_AWS_URLS = ("region_url", "url", "imdsv2_session_token_url")


class _AwsMetadata:
    """Region and credentials from the environment, else from the AWS instance metadata."""

    def __init__(self, source: AwsFederation, transport: Transport) -> None:
        self.source = source
        self.transport = transport
        self._session_headers: dict | None = None

    def region(self) -> str:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            return region
        if not self.source.region_url:
            raise self.source.fail(
                "the AWS region is unknown",
                "set AWS_REGION, or credential_source.region_url",
            )
        zone = self._get(self.source.region_url, "the availability zone").strip()
        if len(zone) < 2:
            raise self.source.fail("the AWS metadata server sent an empty availability zone")
        return zone[:-1]  # us-east-2b is in us-east-2

    def credentials(self) -> tuple[str, str, str]:
        key_id = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            return key_id, secret, os.environ.get("AWS_SESSION_TOKEN", "")
        url = self.source.credentials_url
        if not url:
            raise self.source.fail(
                "no AWS credentials",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or credential_source.url",
            )
        role = self._get(url, "the instance role name").strip()
        if not role or "/" in role:
            raise self.source.fail("the AWS metadata server sent no usable role name")
        data = self._json(f"{url.rstrip('/')}/{role}", "the role's credentials")
        where = f"{self.source.origin}: the AWS metadata server's credentials"
        fields = _Fields(data, where, "check the instance's IAM role")
        return fields.require("AccessKeyId"), fields.require("SecretAccessKey"), fields.get("Token")

    def _headers(self) -> dict:
        """The IMDSv2 session header, fetched once per lookup when the file asks for it."""
        if self._session_headers is None:
            self._session_headers = {}
            if self.source.imdsv2_url:
                response = self._request(
                    "PUT",
                    self.source.imdsv2_url,
                    {"X-aws-ec2-metadata-token-ttl-seconds": IMDSV2_TTL_SECONDS},
                    "an IMDSv2 session token",
                )
                token = response.body.decode("ascii", "replace").strip()
                self._session_headers = {"X-aws-ec2-metadata-token": token}
        return self._session_headers

    def _get(self, url: str, what: str) -> str:
        return self._request("GET", url, self._headers(), what).body.decode("utf-8", "replace")

    def _json(self, url: str, what: str) -> dict:

        body = self._request("GET", url, self._headers(), what).body
        try:
            data = _json_loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self.source.fail(f"the AWS metadata server sent {what} as something not JSON")
        return data

    def _request(self, method: str, url: str, headers: dict, what: str) -> Response:
        # Instance metadata is this machine's own: never through a proxy.
        try:
            response = self.transport.request(method, url, headers=headers, direct=True)
        except CredentialError as exc:
            raise self.source.fail(f"no AWS metadata ({exc})") from None
        if response.status != 200:
            raise self.source.fail(
                f"the AWS metadata server answered HTTP {response.status} for {what} "
                f"({_quoted_url(url)})",
                "check the instance's IAM role, or set the AWS_* variables",
            )
        return response


class X509Federation(ExternalAccount):
    """Federation by X.509 certificate: the chain is the subject, mutual TLS proves the key.

    As google-auth's identity_pool (``_X509Supplier``, ``_mtls_helper``) does it.
    """

    source_name = "certificate"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(info, origin)
        certificate = self.credential_source.object("certificate", required=True)
        self.config_location = certificate.get("certificate_config_location", "a path")
        self.chain_path = certificate.get("trust_chain_path", "a path")
        use_default = certificate.get("use_default_certificate_config", "true or false", False)
        if bool(self.config_location) == use_default:
            raise self.credential_source.fail(
                "certificate",
                "needs exactly one of use_default_certificate_config: true and "
                "certificate_config_location",
            )

    def subject_token(self, transport: Transport) -> str:
        import json

        leaf = self._certificates(self._cert_and_key()[0], "the workload certificate")[0]
        chain = self._certificates(self.chain_path, "the trust chain") if self.chain_path else []
        if chain[:1] == [leaf]:  # the leaf may open the chain, counted once
            chain = chain[1:]
        if leaf in chain:
            raise self.fail(
                f"the trust chain {self.chain_path} holds the workload certificate after "
                "another one",
                "put it first in credential_source.certificate.trust_chain_path, or leave it out",
            )
        return json.dumps([leaf, *chain])  # google-auth's spacing: the same token to the byte

    def _certificates(self, path: str, what: str) -> list:
        """The PEM file's certificates as standard base64 DER, in file order."""
        try:
            certificates = _pem_certificates(read_local_text(path))
        except OSError as exc:
            raise self.fail(f"cannot read {what} {path} ({exc.strerror})") from None
        except ValueError:
            certificates = []
        if not certificates:
            raise self.fail(f"{what} {path} holds no PEM certificate", "check the file")
        return certificates

    def _cert_and_key(self) -> tuple[str, str]:
        try:
            return _workload_cert_and_key(self.config_location)
        except CredentialError as exc:
            raise self.failed(exc) from None

    def client_tls(self) -> tuple:
        cert_path, key_path = self._cert_and_key()
        context, stores = _new_tls_context()  # what every other request trusts, own context
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise CredentialError(  # fetch names the source
                f"cannot use {cert_path} and {key_path} as a TLS client certificate ({reason}); "
                "check cert_configs.workload in the certificate config"
            ) from None
        return context, describe_trust(stores)


# The certificate config names the workload's certificate and key, as google-auth's
# _mtls_helper reads it.
def _certificate_config(location: str) -> tuple[str, str]:
    """The certificate config file and what named it, in google-auth's order."""
    if location:
        named = "credential_source.certificate.certificate_config_location"
        return os.path.expanduser(location), named
    for name in ("GOOGLE_API_CERTIFICATE_CONFIG", _CONTEXT_AWARE_CONFIG):
        if os.environ.get(name):
            return os.path.expanduser(os.environ[name]), name
    # google-auth's X.509 federation stops here: GKE's credential bundle serves only its
    # mTLS channels (_mtls_helper._get_workload_cert_and_key), never this source.
    return os.path.join(gcloud_config_dir(), "certificate_config.json"), "gcloud's default"


def _workload_cert_and_key(location: str) -> tuple[str, str]:
    """The workload certificate and key paths of the certificate config."""
    path, named = _certificate_config(location)
    try:
        config = _json_loads(read_local_file(path))
    except FileNotFoundError:
        raise CredentialError(
            f"the certificate config {path} ({named}) was not found; create it with "
            "`gcloud iam workload-identity-pools create-cred-config --credential-cert-path=... "
            "--credential-cert-private-key-path=...`, or set GOOGLE_API_CERTIFICATE_CONFIG"
        ) from None
    except (OSError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or "not JSON"
        raise CredentialError(f"cannot read the certificate config {path} ({problem})") from None
    if not isinstance(config, dict):
        raise CredentialError(f"the certificate config {path} is not a JSON object")
    fields = _Fields(config, path, "it must name the workload's certificate and key files")
    workload = fields.object("cert_configs", required=True).object("workload", required=True)
    return workload.require("cert_path", "a path"), workload.require("key_path", "a path")


_CONTEXT_AWARE_CONFIG = "CLOUDSDK_CONTEXT_AWARE_CERTIFICATE_CONFIG_FILE_PATH"


def _no_password() -> bytes:
    """An encrypted key fails instead of prompting on the terminal (pip may hold it)."""
    return b""


def _pem_certificates(text: str) -> list:
    """Each CERTIFICATE block of PEM text as standard padded base64 of its DER bytes.

    ValueError if a block is not base64 of a DER SEQUENCE.
    """
    import base64
    import binascii
    import re

    found = []
    for body in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE", text, re.S):
        try:
            der = base64.b64decode("".join(body.split()), validate=True)
        except binascii.Error:
            raise ValueError("not base64") from None
        if der[:1] != b"\x30":
            raise ValueError("not DER")
        found.append(base64.b64encode(der).decode("ascii"))
    return found


class ExternalAccountUser(CredentialSource):
    """A workforce identity user's refresh token (``external_account_authorized_user``)."""

    kind = "workforce user"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(origin)
        fields = _Fields(info, origin, _WORKFORCE_LOGIN_FIX)
        self.refresh_token = fields.require("refresh_token")
        self.token_url = fields.require("token_url")
        self.client_id = fields.require("client_id")
        self.client_secret = fields.require("client_secret")
        self.universe = fields.get("universe_domain") or DEFAULT_UNIVERSE

    def fetch(self, transport: Transport) -> Token:
        fields = {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
        try:
            headers = {"Authorization": _basic_auth(self.client_id, self.client_secret)}
            data = _post_form(transport, self.token_url, fields, "Google's STS", headers)
            return _token_from_oauth(data, "Google's STS", self.describe())
        except CredentialError as exc:
            raise self.failed(exc) from None

    def refusal_fix(self, exc: TokenEndpointError) -> str:
        return _expired_login_fix(exc, _WORKFORCE_LOGIN_FIX)


_IMPERSONATION_SOURCES = {
    "authorized_user": AuthorizedUser,
    "service_account": ServiceAccountKey,
    "external_account_authorized_user": ExternalAccountUser,
}
_IMPERSONATION_FIX = (
    "recreate it with `gcloud auth application-default login "
    "--impersonate-service-account=SA_EMAIL`"
)


class ImpersonatedServiceAccount(CredentialSource):
    """A service account impersonated by another credential (``impersonated_service_account``)."""

    kind = "impersonated service account"

    def __init__(self, info: dict, origin: str) -> None:
        super().__init__(origin)
        fields = _Fields(info, origin, _IMPERSONATION_FIX)
        url = fields.require("service_account_impersonation_url")
        self.account = _impersonated_account(fields, url)
        source_fields = fields.object("source_credentials", required=True)
        source_info = source_fields.data
        source_type = source_fields.get("type", "a string", None)
        if source_type not in _IMPERSONATION_SOURCES:
            expected = ", ".join(_IMPERSONATION_SOURCES)
            hint = _IMPERSONATION_FIX
            if source_type == "external_account":
                hint = "put service_account_impersonation_url into the external_account file itself"
            raise self.fail(
                f"source_credentials of type {source_type!r} cannot be impersonated from "
                f"(expected one of {expected})",
                hint,
            )
        self.source = _IMPERSONATION_SOURCES[source_type](
            source_info, f"{origin} (source_credentials)"
        )
        if isinstance(self.source, ServiceAccountKey):
            self.source.scope = IAM_SCOPE  # enough to call IAM, as Google's libraries ask
        self.delegates = fields.get("delegates", "a list of service account emails", None)
        # The request goes to the universe's standard endpoint: the URL only names the account.
        universe = getattr(self.source, "universe", DEFAULT_UNIVERSE)
        self.iam_url = IAM_URL_TEMPLATE.format(universe_domain=universe, email=self.account)
        self.quota_project = source_fields.get("quota_project_id")

    def fetch(self, transport: Transport) -> Token:
        source_token = self.source.fetch(transport)
        try:
            return _generate_access_token(
                transport,
                self.iam_url,
                source_token.value,
                self.delegates,
                DEFAULT_IMPERSONATION_LIFETIME,
                self.quota_project,
                self.describe(),
            )
        except CredentialError as exc:
            fix = f"grant the source account roles/iam.serviceAccountTokenCreator on {self.account}"
            raise self.failed(exc, fix) from None


# --- reading an ADC file: its type decides the source --------------------------------------


ADC_FILE_TYPES = {
    "service_account": ServiceAccountKey,
    "authorized_user": AuthorizedUser,
    "external_account": ExternalAccount.from_info,
    "external_account_authorized_user": ExternalAccountUser,
    "impersonated_service_account": ImpersonatedServiceAccount,
}
_UNSUPPORTED_TYPES = {
    "gdch_service_account": "Google Distributed Cloud Hosted service accounts",
}


def gcloud_adc_path() -> str:
    return os.path.join(gcloud_config_dir(), "application_default_credentials.json")


ADC_FILE = "ADC file"


class AdcFile(CredentialSource):
    """An ADC file that discovery found, parsed only when the token cache cannot answer.

    A warm call so needs no JSON, base64 or key parsing. Its identity, the file and its
    content, is the identity of every source such a file alone decides; federation adds
    its subject token to it, so a token cached under the bare file identity was fetched
    by one of those and by nothing else.
    """

    kind = ADC_FILE

    def __init__(self, path: str, named_by: str) -> None:
        super().__init__(path)
        self.raw = _read_adc_file(path, named_by)
        self.content_hash = _short_hash(self.raw)
        self._parsed: CredentialSource | None = None

    def parsed(self) -> CredentialSource:
        if self._parsed is None:
            self._parsed = _parse_adc_file(self.origin, self.raw)
        return self._parsed

    def learn(self, transport: Transport) -> tuple[str, object]:
        if _CACHE.get(self.static_identity, self) is not None:
            return self.static_identity, None
        return self.parsed().learn(transport)

    def identify(self, transport: Transport) -> str:
        return self.learn(transport)[0]

    def fetch(self, transport: Transport) -> Token:
        return self.parsed().fetch(transport)

    def fetch_learned(self, transport: Transport, learned: object) -> Token:
        return self.parsed().fetch_learned(transport, learned)

    def describe(self) -> str:
        return self.parsed().describe()


def load_adc_file(path: str, origin: str) -> CredentialSource:
    """Build the credential source an ADC JSON file describes; CredentialError if broken."""
    return _parse_adc_file(path, _read_adc_file(path, origin))


def _read_adc_file(path: str, origin: str) -> bytes:
    try:
        return read_local_file(path)
    except FileNotFoundError:
        raise CredentialError(
            f"{path} (named by {origin}) was not found; point {origin} at a credentials "
            "JSON file or unset it"
        ) from None
    except OSError as exc:
        raise CredentialError(
            f"{path}: cannot read it ({exc.strerror}); point {origin} at a credentials JSON file"
        ) from None


def _parse_adc_file(path: str, raw: bytes) -> CredentialSource:
    try:
        info = _json_loads(raw)
    except UnicodeDecodeError:
        raise CredentialError(f"{path} is not a valid JSON file (not UTF-8 text)") from None
    except ValueError as exc:
        if hasattr(exc, "lineno"):
            problem = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        else:
            problem = str(exc)
        raise CredentialError(f"{path} is not a valid JSON file ({problem})") from None
    if not isinstance(info, dict):
        raise CredentialError(f"{path} is not a credentials file (expected a JSON object)")
    kind = info.get("type")
    if kind is not None and not isinstance(kind, str):
        kind = _json_text(kind)[:40]  # a list or number is no valid type either
    if kind in ADC_FILE_TYPES:
        source = ADC_FILE_TYPES[kind](info, path)
        source.content_hash = _short_hash(raw)
        source.identity_kind = ADC_FILE  # the identity AdcFile looks for before parsing
        return source
    if kind in _UNSUPPORTED_TYPES:
        raise CredentialError(
            f"{path}: {_UNSUPPORTED_TYPES[kind]} ({kind}) are not supported by "
            "artifactregistry-gauth; use a service account key or gcloud"
        )
    expected = ", ".join(sorted(ADC_FILE_TYPES))
    raise CredentialError(
        f"{path} does not have a valid type: type is {kind!r}, expected one of {expected}"
    )


# --- the metadata server (GCE, GKE, Cloud Run, Cloud Build) ---------------------------------


# Off Google Cloud the metadata address is usually a black hole: wait briefly, once.
# When the hardware says Google, wait and retry as google-auth does (GCE_METADATA_TIMEOUT,
# GCE_METADATA_DETECT_RETRIES): a new GKE pod's metadata server refuses for a few seconds.
METADATA_PING_TIMEOUT = 0.5
METADATA_PING_TIMEOUT_ON_GCE = 3.0
METADATA_DETECT_RETRIES = 3
METADATA_MAX_DETECT_RETRIES = 10
# On Google hardware the data requests retry for as long as this budget allows (google-auth
# waits about 18 s for a starting pod), set by ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET.
# Off Google hardware the lookup's budget holds.
METADATA_BUDGET_ON_GCE = 30.0
METADATA_MAX_BUDGET = 600.0
METADATA_ATTEMPTS_ON_GCE = 20  # the budget ends them first
DMI_PRODUCT_NAME = "/sys/class/dmi/id/product_name"
# GCE_METADATA_MTLS_MODE=strict, or =default where these files exist, means https to the
# metadata server with its own root and client certificate (google-auth 2.50+,
# google/auth/compute_engine/_mtls.py; GCE docs "HTTPS metadata server endpoint").
METADATA_MTLS_DIR = (
    "C:/ProgramData/Google/ComputeEngine" if os.name == "nt" else "/run/google-mds-mtls"
)
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# A ping that waited out its timeout (a black-holed address, off Google hardware) is
# remembered for this long, so warm calls skip it; a refusal costs nothing and is not.
METADATA_ABSENT_MEMORY = 10 * 60
# Which service account and instance the metadata server speaks for, remembered per
# machine and boot so that a warm call on Google Cloud needs no request at all.
METADATA_IDENTITY_MEMORY = 5 * 60
# Variables Google Cloud sets where the DMI product name may be unreadable (gVisor): there a
# slow ping is never remembered as "absent". Cloud Run services and Cloud Functions
# (K_SERVICE), Cloud Run jobs (CLOUD_RUN_JOB), Cloud Functions (FUNCTION_TARGET; the older
# runtimes' FUNCTION_REGION), App Engine (GAE_SERVICE), Cloud Build steps (BUILDER_OUTPUT).
# KUBERNETES_SERVICE_HOST is not one: every Kubernetes sets it.
GOOGLE_CLOUD_VARIABLES = (
    "K_SERVICE",
    "CLOUD_RUN_JOB",
    "FUNCTION_TARGET",
    "FUNCTION_REGION",
    "GAE_SERVICE",
    "BUILDER_OUTPUT",
)


class MetadataServer(CredentialSource):
    """The GCE / GKE / Cloud Run / Cloud Build metadata server.

    Its identity is the host, the service account and the instance it speaks for: VMs
    that share a home directory (NFS) must not share a cached token.
    """

    kind = "metadata server"

    def __init__(self, patient: bool = False) -> None:
        self.host = os.environ.get("GCE_METADATA_HOST") or os.environ.get(
            "GCE_METADATA_ROOT", "metadata.google.internal"
        )
        self.ping_host = os.environ.get("GCE_METADATA_IP") or "169.254.169.254"
        host_name = (
            "GCE_METADATA_HOST" if os.environ.get("GCE_METADATA_HOST") else "GCE_METADATA_ROOT"
        )
        for name, value in ((host_name, self.host), ("GCE_METADATA_IP", self.ping_host)):
            if _host_and_port(value) is None:
                raise CredentialError(
                    f"{name} is {value[:80]!r}, not a host or host:port; fix or unset it"
                )
        self.mtls_mode = _metadata_mtls_mode()
        self.mtls_files = _metadata_mtls_files()
        self._mtls_context: tuple | None = None  # built on the first https request
        self.scheme = "https" if self._use_mtls() else "http"
        super().__init__(f"{self.scheme}://{self.host}")
        self.instance_id = ""
        self.product_name = _dmi_product_name()
        self.on_google_hardware = self.product_name.startswith("Google")
        self.on_google_cloud = self.on_google_hardware or any(
            os.environ.get(name) for name in GOOGLE_CLOUD_VARIABLES
        )
        # The last look before "no credentials": no remembered verdict, google-auth's timeout.
        self.patient = patient
        if self.on_google_hardware:
            self.budget = _metadata_budget()

    @property
    def static_identity(self) -> str:
        return f"metadata server:{self.origin}:{self.account}:{self.instance_id}"

    def identify(self, transport: Transport) -> str:
        """Learn the service account and instance; NotApplicable when not on Google Cloud."""
        memory = _MetadataMemory(self)
        remembered = {} if self.patient else memory.recall()
        if remembered.get("verdict") == "present":
            self.account, self.instance_id = remembered["account"], remembered["instance_id"]
            return self.static_identity
        if remembered.get("verdict") == "absent" and not self.on_google_cloud:
            raise NotApplicable(
                f"not on Google Cloud (http://{self.ping_host}/ did not answer "
                f"{_age(remembered['at'])} ago; remembered for "
                f"{METADATA_ABSENT_MEMORY // 60} min: delete {memory.path} to ask again)",
                look_again=self.look_again,
            )
        self.detect(transport, memory)
        email = self._get(
            transport, "instance/service-accounts/default/email", "its service account"
        )
        if email is None:
            raise NotApplicable(f"no service account is attached to this machine ({self.origin})")
        self.account = email
        self.instance_id = self._instance_id(transport)
        if self.instance_id:
            memory.remember_present(self.account, self.instance_id)
        else:
            # Without it two VMs sharing a home directory (NFS) could share a cached token:
            # this lookup's token stays in this process.
            self.cacheable = False
        return self.static_identity

    def look_again(self) -> MetadataServer:
        return MetadataServer(patient=True)

    def _use_mtls(self) -> bool:
        """Whether to speak https with the client certificate; strict without it is an error."""
        if self.mtls_mode == "none":
            return False
        missing = [path for path in self.mtls_files if not os.path.isfile(path)]
        if missing and self.mtls_mode == "strict":
            raise CredentialError(
                f"GCE_METADATA_MTLS_MODE is strict, but {missing[0]} is missing: the metadata "
                "server is never asked over plain http then; set GCE_METADATA_MTLS_MODE=default "
                "or none, or run where the metadata server's certificates are installed"
            )
        return not missing

    def _request(self, transport: Transport, url: str, **options: object) -> Response:
        """GET ``url`` (under http://) from the metadata server, directly, over mTLS if set."""
        if self.scheme == "http":
            return transport.request("GET", url, headers=_METADATA_HEADERS, direct=True, **options)
        secure = "https" + url[len("http") :]
        try:
            return transport.request(
                "GET", secure, headers=_METADATA_HEADERS, direct=True, tls=self._tls(), **options
            )
        except CredentialError as exc:
            if self.mtls_mode == "strict":
                raise
            # As google-auth does in its default mode; said aloud, never silently.
            _logger().warning(
                "artifactregistry-gauth: mutual TLS to the metadata server failed (%s); "
                "using plain http, as GCE_METADATA_MTLS_MODE=default allows",
                exc,
            )
        self.scheme = "http"
        return transport.request("GET", url, headers=_METADATA_HEADERS, direct=True, **options)

    def _tls(self) -> tuple:
        """An SSL context trusting the metadata server's root only, with its client certificate."""
        if self._mtls_context is None:
            self._mtls_context = self._load_mtls_context()
        return self._mtls_context

    def _load_mtls_context(self) -> tuple:
        import ssl

        root, client = self.mtls_files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for path, load in (
            (root, context.load_verify_locations),
            (client, context.load_cert_chain),
        ):
            try:
                load(path)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialError(
                    f"{path}: cannot use it for mutual TLS to the metadata server "
                    f"({getattr(exc, 'reason', None) or exc.strerror or exc}); fix it, or set "
                    "GCE_METADATA_MTLS_MODE=none"
                ) from None
        return context, f"the metadata server's root certificate {root}"

    def _instance_id(self, transport: Transport) -> str:
        """The instance id, or "" when the server will not say (never a failure)."""
        try:
            return self._get(transport, "instance/id", "its instance id") or ""
        except CredentialError as exc:
            _debug("no instance id from the metadata server: %s", exc)
            return ""

    def fetch(self, transport: Transport) -> Token:
        url = (
            f"http://{self.host}/computeMetadata/v1/instance/service-accounts/default/token"
            "?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform"
        )
        response = self._request(transport, url, attempts=self._attempts())
        if response.status == 404:
            raise NotApplicable(f"no service account is attached to this machine ({self.origin})")
        if response.status != 200:
            raise self.fail(f"the metadata server answered HTTP {response.status} for a token")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self.fail("the metadata server answered a token request with something not JSON")
        return _token_from_oauth(data, "the metadata server", self.describe())

    def detect(self, transport: Transport, memory: _MetadataMemory | None) -> None:
        """Raise NotApplicable unless a Google metadata server answers the ping.

        On Google hardware a failed ping is no verdict: the hardware decides, as in
        google-auth, and the requests that follow retry while the server starts.
        """
        timeout = _metadata_timeout(self.on_google_hardware or self.patient)
        attempts = _metadata_detect_retries(self.on_google_hardware)
        started = _monotonic()
        try:
            # With mTLS a refused https port may still leave plain http (mode default).
            if attempts == 1 and not self.on_google_hardware and self.scheme == "http":
                self._knock(min(timeout, transport.remaining()))
            response = self._request(
                transport, f"http://{self.ping_host}/", timeout=timeout, attempts=attempts
            )
        except CredentialError as exc:
            if self.on_google_hardware:
                _debug("metadata ping failed on Google hardware (%s); asking anyway", exc)
                return
            # Only a wait is worth remembering: a refusal is free, and a starting pod refuses.
            waited = _monotonic() - started >= timeout / 2
            if memory is not None and waited and not self.on_google_cloud:
                memory.remember_absent()
            again = None if self.patient else self.look_again
            raise NotApplicable(f"not on Google Cloud ({exc})", look_again=again) from None
        if response.status == 200 and response.headers.get("metadata-flavor") == "Google":
            return
        if self.on_google_hardware:
            _debug(
                "metadata ping answered HTTP %s on Google hardware; asking anyway", response.status
            )
            return
        raise NotApplicable(
            f"not on Google Cloud (http://{self.ping_host}/ is not a Google metadata server)"
        )

    def _knock(self, timeout: float) -> None:
        """Connect to the ping address before loading urllib, which costs tens of ms.

        Off Google Cloud the address refuses, is unreachable or never accepts: each is
        known from the connection alone (CredentialError). Only an IP literal or
        localhost is knocked at: resolving other names has no timeout.
        """
        import socket

        host, port = _ip_and_port(self.ping_host)
        if not host:
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect((host, port))  # not create_connection: its lookup loads idna
        except OSError as exc:
            raise CredentialError(
                f"could not reach http://{self.ping_host}/: {_describe_os_error(exc)}"
            ) from None

    def _get(self, transport: Transport, path: str, what: str) -> str | None:
        """One line of text from the metadata server, or None if it has nothing there."""
        url = f"http://{self.host}/computeMetadata/v1/{path}"
        try:
            response = self._request(transport, url, attempts=self._attempts())
        except CredentialError as exc:
            fix = "a new GKE pod's metadata server may need a few more seconds: try again"
            raise self.fail(str(exc), fix if self.on_google_hardware else "") from None
        if response.status == 404:
            return None
        # Metadata-Flavor is checked on the ping only, as google-auth does: emulators and
        # proxies drop it from data answers.
        if response.status != 200:
            raise self.fail(f"the metadata server answered HTTP {response.status} for {what}")
        text = response.body.decode("utf-8", "replace").strip()
        if not text or len(text) > 256 or not text.isprintable() or " " in text:
            raise self.fail(f"the metadata server answered {what} with something unexpected")
        return text

    def _attempts(self) -> int:
        return METADATA_ATTEMPTS_ON_GCE if self.on_google_hardware else MAX_ATTEMPTS


_METADATA_HEADERS = {"Metadata-Flavor": "Google"}


def _dmi_product_name() -> str:
    # Only the hardware says so: GCE_METADATA_HOST is set as often for local emulators,
    # which answer at once, as on Google Cloud.
    return _system_text(DMI_PRODUCT_NAME, 256)


def _metadata_timeout(on_google_hardware: bool) -> float:
    """The ping timeout: GCE_METADATA_TIMEOUT if set and sane, else by hardware."""
    default = METADATA_PING_TIMEOUT_ON_GCE if on_google_hardware else METADATA_PING_TIMEOUT
    value = _seconds_setting("GCE_METADATA_TIMEOUT")
    return default if value is None else min(value, LOOKUP_BUDGET)


def _metadata_mtls_mode() -> str:
    """GCE_METADATA_MTLS_MODE: none (google-auth's default since 2.50), default or strict."""
    value = os.environ.get("GCE_METADATA_MTLS_MODE", "")
    mode = value.strip().lower() or "none"
    if mode not in ("none", "default", "strict"):
        raise CredentialError(
            f"GCE_METADATA_MTLS_MODE is {value[:40]!r}; set it to strict, default or none"
        )
    return mode


def _metadata_mtls_files() -> tuple:
    """The metadata server's root certificate and client certificate-and-key files."""
    names = (
        ("mds-mtls-root.crt", "mds-mtls-client.key")
        if os.name == "nt"
        else ("root.crt", "client.key")
    )
    return tuple(os.path.join(METADATA_MTLS_DIR, name) for name in names)


def _metadata_budget() -> float:
    """Seconds for metadata discovery on Google hardware: ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET."""
    value = _seconds_setting("ARTIFACTREGISTRY_GAUTH_METADATA_BUDGET")
    return METADATA_BUDGET_ON_GCE if value is None else min(value, METADATA_MAX_BUDGET)


def _seconds_setting(name: str) -> float | None:
    """A positive, finite number of seconds from the variable ``name``; None if unset or not."""
    text = os.environ.get(name, "").strip()
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if 0 < value < float("inf"):
        return value
    if text:
        _debug("ignoring %s=%r: not a positive number of seconds", name, text[:40])
    return None


def _metadata_detect_retries(on_google_hardware: bool) -> int:
    """Ping attempts: GCE_METADATA_DETECT_RETRIES if set and sane, else by hardware."""
    default = METADATA_DETECT_RETRIES if on_google_hardware else 1
    text = os.environ.get("GCE_METADATA_DETECT_RETRIES", "").strip()
    if not text:
        return default
    if not (text.isdigit() and int(text) >= 1):
        _debug("ignoring GCE_METADATA_DETECT_RETRIES=%r: not a whole number >= 1", text[:40])
        return default
    return min(int(text), METADATA_MAX_DETECT_RETRIES)


class _MetadataMemory:
    """What the metadata address said last on this machine and boot, in the cache directory.

    Keyed by metadata host and ping address, host name, DMI product name and boot id, so
    another machine (a shared home directory), a reboot or new settings ask afresh.
    """

    def __init__(self, server: MetadataServer) -> None:
        machine = "\0".join(
            (
                "metadata",
                server.host,
                server.ping_host,
                _hostname(),
                server.product_name,
                _boot_id(),
            )
        )
        self.key = _file_key(machine, full=True)
        self.path = self._path(cache_dir())

    def recall(self) -> dict:
        """The remembered verdict while it is fresh, else {}."""
        if self.path is None:
            return {}
        try:
            data = _json_loads(read_local_file(self.path, 4096, private=True))
        except (OSError, ValueError):
            return {}
        return data if self._fresh(data) else {}

    def _fresh(self, data: object) -> bool:
        if not (isinstance(data, dict) and data.get("key") == self.key):
            return False
        at, verdict = data.get("at"), data.get("verdict")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            return False
        if verdict == "absent":
            life = METADATA_ABSENT_MEMORY
        elif verdict == "present" and all(
            isinstance(data.get(name), str) and data[name] for name in ("account", "instance_id")
        ):
            life = METADATA_IDENTITY_MEMORY
        else:
            return False
        return at - 60 <= _now() < at + life  # a clock set back also forgets

    def remember_absent(self) -> None:
        self._write({"verdict": "absent"})

    def remember_present(self, account: str, instance_id: str) -> None:
        self._write({"verdict": "present", "account": account, "instance_id": instance_id})

    def _path(self, directory: str | None) -> str | None:
        return None if directory is None else os.path.join(directory, self.key[:32] + ".metadata")

    def _write(self, record: dict) -> None:
        self.path = self._path(cache_dir(create=True))
        if self.path is None:
            return
        try:
            _write_private_file(self.path, _json_compact({"key": self.key, "at": _now(), **record}))
        except OSError as exc:
            _debug("cannot remember the metadata verdict in %s: %s", self.path, exc.strerror or exc)


def _hostname() -> str:
    uname = getattr(os, "uname", None)
    return uname().nodename if uname else os.environ.get("COMPUTERNAME", "")


def _boot_id() -> str:
    return _system_text(BOOT_ID, 64)


def _age(at: float) -> str:
    seconds = max(0, int(_now() - at))
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


# --- the gcloud CLI: its access token file, its config-helper, its settings ----------------


class GcloudAccessTokenFile(CredentialSource):
    """A token file named by gcloud's ``auth/access_token_file``, as gcloud itself honours."""

    kind = "access token file"
    cacheable = False

    def __init__(self, path: str, named_by: str = "$CLOUDSDK_AUTH_ACCESS_TOKEN_FILE") -> None:
        super().__init__(path)
        try:
            value = read_local_text(path, MAX_TOKEN_FILE_BYTES).strip()
        except OSError as exc:
            raise self.fail(
                f"cannot read it ({exc.strerror})", f"fix or unset {named_by}"
            ) from None
        if not value or any(c.isspace() for c in value):
            raise self.fail("it does not hold one access token", "write the token alone into it")
        self.value = value
        # Rewritten in place, the file is a new identity at once; only a hash is kept.
        self.content_hash = _short_hash(value)

    def fetch(self, transport: Transport) -> Token:
        return Token(self.value, None, self.describe())


MAX_TOKEN_FILE_BYTES = 64 * 1024
# gcloud gets its own bound, not what the lookup budget has left: it takes about 1 s,
# retries a failing token endpoint for 4-7 s, and impersonation is a second request.
GCLOUD_TIMEOUT = 30.0


class GcloudCli(CredentialSource):
    """``gcloud config config-helper``: gcloud's active account, refreshed by gcloud."""

    kind = "gcloud"

    def __init__(self, executable: str, settings: GcloudSettings) -> None:
        super().__init__(executable)
        self.settings = settings
        self.configuration = self.settings.configuration
        self.account = self.settings.get("core/account")

    @property
    def static_identity(self) -> str:
        settings = self.settings
        return f"gcloud:{settings.config_dir}:{settings.configuration}:{settings.fingerprint()}"

    def identify(self, transport: Transport) -> str:
        # gcloud runs a federation file's exchange itself, and the file says where the
        # subject token comes from, not whose it is: keyed as ADC keys such a file.
        federation = self._federation_override()
        if federation is None:
            return self.static_identity
        return f"{self.static_identity}:{federation.identify(transport)}"

    def _federation_override(self) -> ExternalAccount | None:
        """The external_account file auth/credential_file_override names, if it names one."""
        path = self.settings.get("auth/credential_file_override")
        if not path:
            return None
        try:
            source = load_adc_file(path, self.settings.named_by("auth/credential_file_override"))
        except CredentialError:
            return None  # gcloud reads it and says what is wrong; its content is keyed already
        return source if isinstance(source, ExternalAccount) else None

    def describe(self) -> str:
        who = self.settings.principal(self.account)
        return f"gcloud ({who}, configuration {self.configuration})"

    def blame(self) -> str:
        return self.describe()  # whose token was asked for, not the executable's path

    def fetch(self, transport: Transport) -> Token:
        import subprocess

        command = [self.origin, "config", "config-helper", "--format=json", "--min-expiry=15m"]
        env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
        _debug("running %s", " ".join(command[1:]))
        try:
            done = _run_capped(command, env, GCLOUD_TIMEOUT, answered=_is_config_helper_answer)
        except subprocess.TimeoutExpired:
            raise self.fail(
                f"gcloud did not answer within {GCLOUD_TIMEOUT:.0f} s",
                "it may be waiting for an unreachable or slow token endpoint: check the "
                "network and any proxy (HTTPS_PROXY), then try `gcloud auth print-access-token`",
            ) from None
        except OSError as exc:
            raise self.fail(f"cannot run gcloud ({exc.strerror or exc})") from None
        except _OutputTooLargeError as exc:
            raise self.fail(
                f"gcloud {exc}, which is not `config-helper`'s JSON answer",
                "update the Google Cloud SDK",
            ) from None
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
        if returncode != 0:
            raise self.fail(_gcloud_error(stderr), _gcloud_fix(stderr, self.account))
        try:
            value, expiry, account = parse_config_helper(stdout)
        except ValueError:
            raise self.fail(
                "`gcloud config config-helper` printed something that is not its JSON answer",
                "update the Google Cloud SDK",
            ) from None
        if not value:
            raise self.fail("gcloud has no access token for the active account", LOGIN_HINT)
        self.account = account or self.account
        return Token(value, expiry, self.describe())


def parse_config_helper(stdout: bytes) -> tuple[str, float | None, str]:
    """(access token or "", expiry or None, account or "") from config-helper's JSON.

    ValueError if the output is not that JSON at all.
    """
    data = _json_loads(stdout)
    credential = _dig(data, "credential")
    if not isinstance(credential, dict):
        raise ValueError("no credential object")
    value = credential.get("access_token")
    expiry_text = credential.get("token_expiry")
    expiry = None
    if isinstance(expiry_text, str):
        try:
            expiry = _parse_rfc3339(expiry_text)
        except (ValueError, OverflowError):
            expiry = None
    account = _dig(data, "configuration", "properties", "core", "account")
    return (
        value if isinstance(value, str) else "",
        expiry,
        account if isinstance(account, str) else "",
    )


def _is_config_helper_answer(stdout: bytes) -> bool:
    """Whether config-helper's output is a whole answer with a token: nothing more is to come."""
    try:
        return bool(parse_config_helper(stdout)[0])
    except ValueError:
        return False


def _dig(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _gcloud_error(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    text = (errors or lines or ["gcloud failed and said nothing"])[0]
    return text[:300]


# What gcloud says when it has no account to ask for (no login, or none selected).
_GCLOUD_NO_ACCOUNT = "do not currently have an active account"


def _with_what_was_tried(exc: CredentialError, label: str, skipped: dict) -> CredentialError:
    """gcloud without an account is the last of no credentials at all: say what was absent
    before it too, and keep gcloud's own words and fix (a login is what fits)."""
    if label != "gcloud" or not skipped or _GCLOUD_NO_ACCOUNT not in str(exc):
        return exc
    tried = "; ".join(map(str, skipped.values()))
    return CredentialError(f"no Google credentials found ({tried}); {exc}")


# What gcloud (requests, urllib3, httplib2) says when the network, not the login, failed.
_GCLOUD_NETWORK_WORDS = (
    "timed out",
    "readtimeout",
    "connecttimeout",
    "unable to find the server",
    "failed to establish a new connection",
    "connection refused",
    "connection reset",
    "connection aborted",
    "max retries exceeded",
    "proxyerror",
    "unable to connect to proxy",
    "name resolution",
)


def _gcloud_fix(stderr: bytes, account: str = "") -> str:
    """What to do about gcloud's failure, for the kind of account it failed for."""
    text = stderr.decode("utf-8", "replace").lower()
    if _GCLOUD_NO_ACCOUNT in text:
        return "run `gcloud auth login` (or `gcloud config set account ACCOUNT`)"
    if "reauthentication" in text or "reauth" in text:
        return "gcloud needs you to sign in again: run `gcloud auth login`"
    if any(word in text for word in _GCLOUD_NETWORK_WORDS):
        return (
            "gcloud could not reach Google's token endpoint: check the network and any proxy "
            "(HTTPS_PROXY)"
        )
    if "impersonat" in text or "generateaccesstoken" in text or "getaccesstoken" in text:
        return (
            "check that the account may impersonate the service account "
            "(roles/iam.serviceAccountTokenCreator), or unset auth/impersonate_service_account"
        )
    if account.endswith(".gserviceaccount.com") or "activate-service-account" in text:
        who = account if account.endswith(".gserviceaccount.com") else "the service account"
        return f"run `gcloud auth activate-service-account --key-file=KEY.json` for {who}"
    return "run `gcloud auth login` (or `gcloud auth application-default login`)"


def gcloud_config_dir() -> str:
    """gcloud's configuration directory, as Google's libraries find it."""
    configured = os.environ.get("CLOUDSDK_CONFIG")
    if configured:
        return configured
    if os.name != "nt":
        return os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    appdata = os.environ.get("APPDATA")
    if appdata:
        return os.path.join(appdata, "gcloud")
    return os.path.join(os.environ.get("SystemDrive", "C:") + "\\", "gcloud")


# The properties that decide whose token gcloud returns (docs/protocols.md#gcloud), as
# "section/name": every auth property, the account and the universe.
_GCLOUD_IDENTITY_PROPERTIES = ("core/account", "core/universe_domain")
# The CA bundle gcloud trusts: not an identity, read for TLS (the user's gcloud works with it).
GCLOUD_CA_PROPERTY = "core/custom_ca_certs_file"
_GCLOUD_CORE_PROPERTIES = (*_GCLOUD_IDENTITY_PROPERTIES, GCLOUD_CA_PROPERTY)
_GCLOUD_IDENTITY_SECTION = "auth"
# Properties that name a file whose content gcloud uses: rewritten in place (as
# google-github-actions/auth does), the file is a new identity.
_GCLOUD_FILE_PROPERTIES = ("auth/access_token_file", "auth/credential_file_override")
_GCLOUD_CONFIG_NAME = "^[a-z][-a-z0-9]*$"  # gcloud's own check, with Python's `$`


class GcloudSettings:
    """The gcloud properties that decide whose token gcloud returns, read as gcloud reads them.

    Each property comes from ``CLOUDSDK_<SECTION>_<NAME>`` (set but empty counts as set),
    else the active configuration's file, else the installation's ``properties`` file.
    """

    def __init__(self, config_dir: str, configuration: str, values: dict, where: dict) -> None:
        self.config_dir = config_dir
        self.configuration = configuration
        self.values = values  # "section/name" -> value
        self.where = where  # "section/name" -> the variable or file it came from

    @classmethod
    def read(cls, executable: str | None) -> GcloudSettings:
        config_dir = gcloud_config_dir()
        configuration, config_file = gcloud_active_configuration(config_dir)
        values: dict = {}
        where: dict = {}
        files = [gcloud_installation_properties(executable) if executable else None, config_file]
        for path in files:
            if path:
                for name, value in _read_gcloud_properties(path).items():
                    values[name], where[name] = value, path
        for variable, value in os.environ.items():
            name = _gcloud_property_of(variable)
            if name:
                values[name], where[name] = value, f"${variable}"
        return cls(config_dir, configuration, values, where)

    def get(self, name: str) -> str:
        return self.values.get(name) or ""

    def named_by(self, name: str) -> str:
        """Where a property was set, for a fix: ``$CLOUDSDK_...`` or ``name in FILE``."""
        where = self.where.get(name, "")
        return where if where.startswith("$") else f"{name} in {where}"

    def impersonated(self) -> str:
        """The service account gcloud impersonates, or "" (the last of a delegation chain)."""
        chain = [part.strip() for part in self.get("auth/impersonate_service_account").split(",")]
        return chain[-1]

    def principal(self, account: str) -> str:
        """Who gcloud answers for, in words: the account, a file or a token, and impersonation."""
        if self.get("auth/access_token"):  # the variable, not a property: never in a file
            who = "the token in $CLOUDSDK_AUTH_ACCESS_TOKEN"
        elif self.get("auth/access_token_file"):
            who = f"the token in {self.get('auth/access_token_file')}"
        elif self.get("auth/credential_file_override"):
            who = f"credentials from {self.get('auth/credential_file_override')}"
        else:
            who = account or "the active account"
        target = self.impersonated()
        return f"{who} impersonating {target}" if target else who

    def fingerprint(self) -> str:
        """A hash of everything that decides gcloud's answer; values and tokens stay out of it."""
        decisive = {
            name: value
            for name, value in self.values.items()
            if name in _GCLOUD_IDENTITY_PROPERTIES or name.startswith("auth/")
        }
        for name in _GCLOUD_FILE_PROPERTIES:
            if self.get(name):
                decisive[name + "#content"] = _file_fingerprint(self.get(name))
        return _short_hash(_json_compact(sorted(decisive.items())))


def _gcloud_property_of(variable: str) -> str:
    """ "auth/access_token_file" for ``CLOUDSDK_AUTH_ACCESS_TOKEN_FILE``, "" if not decisive."""
    if variable.startswith("CLOUDSDK_AUTH_"):
        return "auth/" + variable[len("CLOUDSDK_AUTH_") :].lower()
    if variable.startswith("CLOUDSDK_CORE_"):
        name = "core/" + variable[len("CLOUDSDK_CORE_") :].lower()
        return name if name in _GCLOUD_CORE_PROPERTIES else ""
    return ""


def _file_fingerprint(path: str) -> str:
    try:
        return _short_hash(read_local_file(path))
    except OSError as exc:
        return f"unreadable ({exc.strerror})"  # gcloud fails too; a fix is a new identity


def gcloud_active_configuration(config_dir: str) -> tuple[str, str | None]:
    """The active configuration's name and file, as gcloud finds them (docs/protocols.md#gcloud).

    The file is None where gcloud reads none: for ``NONE``, for a name gcloud rejects, and
    on Windows for a name ending in a newline.
    """
    import re

    name = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "")
    if not name:
        path = os.path.join(config_dir, "active_config")
        try:
            data = read_local_file(path, MAX_TOKEN_FILE_BYTES)
            name = data.decode("utf-8")
        except FileNotFoundError:
            name = ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise CredentialError(
                f"{path}: cannot read gcloud's active configuration ({reason}); "
                "run `gcloud config configurations activate default`"
            ) from None
        # Read as text (newlines translated) and taken literally: "work\n" is a
        # configuration of its own, without a file.
        name = name.replace("\r\n", "\n").replace("\r", "\n")
        if name and not re.match(_GCLOUD_CONFIG_NAME, name):
            # gcloud deletes a name it rejects and starts "default" afresh, emptying its file.
            return "default", None
        if name.endswith("\n") and os.name == "nt":
            # No Windows file name holds a newline (opening one fails with EINVAL), and
            # gcloud's configparser skips a file it cannot open as one that is not there.
            return name, None
    name = name or "default"
    if name == "NONE":  # gcloud's name for "no configuration at all"
        return name, None
    return name, os.path.join(config_dir, "configurations", f"config_{name}")


def gcloud_installation_properties(executable: str) -> str | None:
    """``<sdk root>/properties`` of the SDK that ``executable`` belongs to, if it has a root.

    gcloud's root is the nearest directory above its code holding ``.install``; links
    such as ``/usr/bin/gcloud`` are followed to find it.
    """
    directory = os.path.dirname(os.path.realpath(executable))
    for _ in range(4):
        if os.path.isdir(os.path.join(directory, ".install")):
            return os.path.join(directory, "properties")
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return None


def _read_gcloud_properties(path: str) -> dict:
    """The decisive properties in one of gcloud's INI files ({} if it does not exist).

    gcloud reads every section with configparser's ``%`` interpolation and fails on any
    value it cannot interpolate; so do we, in bounded work, naming the file and the
    property and never a value (a ``[proxy] password`` is no business of ours).
    """
    import configparser

    try:
        text = read_local_text(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialError(
            f"{path}: cannot read this gcloud configuration file ({exc.strerror}); fix or remove it"
        ) from None
    parser = configparser.ConfigParser(interpolation=None)  # parsed as gcloud parses it
    try:
        parser.read_string(text, path)
    except configparser.Error as exc:
        raise CredentialError(
            f"{path}: gcloud cannot parse this configuration file ({_ini_problem(exc)}); fix it"
        ) from None
    found: dict = {}
    budget = [MAX_INTERPOLATION_STEPS]
    for section in parser.sections():
        values = dict(parser.items(section, raw=True))
        for name, value in values.items():
            key = f"{section}/{name}"
            try:
                expanded = _interpolate(values, value, 1, budget)
            except ValueError as exc:
                raise CredentialError(
                    f"{path}: gcloud cannot read property {key}: {exc}; fix it "
                    "(a literal % is written %%)"
                ) from None
            if section == _GCLOUD_IDENTITY_SECTION or key in _GCLOUD_CORE_PROPERTIES:
                found[key] = expanded
    return found


# configparser's own bound on nested %(name)s references; ours on the work they cause
# (gcloud would spend minutes on a few hundred bytes of references six to a line).
MAX_INTERPOLATION_DEPTH = 10
MAX_INTERPOLATION_STEPS = 100_000


def _interpolate(values: dict, value: str, depth: int, budget: list) -> str:
    """``value`` with configparser's BasicInterpolation applied; ValueError without the value.

    ``budget`` holds the steps left for the whole file, so the work is bounded.
    """
    import re

    if depth > MAX_INTERPOLATION_DEPTH:
        raise ValueError(f"its %(name)s references nest more than {MAX_INTERPOLATION_DEPTH} deep")
    parts, pos = [], 0
    while pos < len(value):
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(
                f"its %(name)s references expand to over {MAX_INTERPOLATION_STEPS} steps"
            )
        percent = value.find("%", pos)
        if percent < 0:
            parts.append(value[pos:])
            break
        parts.append(value[pos:percent])
        after = value[percent + 1 : percent + 2]
        if after == "%":
            parts.append("%")
            pos = percent + 2
            continue
        reference = re.compile(r"%\(([^)]+)\)s").match(value, percent) if after == "(" else None
        if reference is None:
            raise ValueError("it has a % that is neither %% nor a %(name)s reference")
        name = reference.group(1).lower()  # configparser's optionxform
        if name not in values:
            raise ValueError(f"it refers to %({name})s, which is not set in its section")
        pos = reference.end()
        target = values[name]
        parts.append(_interpolate(values, target, depth + 1, budget) if "%" in target else target)
    return "".join(parts)


def _ini_problem(exc: Exception) -> str:
    """What configparser found wrong, by line number: its own message quotes the line."""
    import configparser

    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section]"
    if isinstance(exc, configparser.ParsingError):
        return f"line {exc.errors[0][0]} is not `name = value`" if exc.errors else "not INI"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{exc.section}/{exc.option} is set again on line {exc.lineno}"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"section [{exc.section}] appears again on line {exc.lineno}"
    return type(exc).__name__


# --- token cache: memory, then private files, one fetch across processes -------------------


class TokenCache:
    """Tokens by credential identity, in memory and in a per-user directory on disk.

    A token is handed out while it has MIN_TOKEN_LIFE left. The directory is shared
    by every process of the user (pip's subprocess provider, uv, tox start many); a
    file that is corrupt, foreign or unreadable is ignored and replaced, never an error.
    """

    def __init__(self) -> None:
        self._entries: dict = {}  # identity -> (token, hand out until)

    def get(self, identity: str, source: CredentialSource) -> Token | None:
        token, until = self._entries.get(identity, (None, 0.0))
        if token is not None and _now() < until:
            return token
        if source is not None and source.cacheable:
            token = self._read(identity)
            if token is not None:
                self._entries[identity] = (token, token.expiry - MIN_TOKEN_LIFE)
                return token
        return None

    def put(self, identity: str, token: Token, source: CredentialSource) -> None:
        if token.expiry is None:
            self._entries[identity] = (token, _now() + UNKNOWN_EXPIRY_LIFE)
            return
        until = token.expiry - MIN_TOKEN_LIFE
        self._entries[identity] = (token, until)
        if source is not None and source.cacheable and until > _now():
            self._write(identity, token)

    def clear(self) -> None:
        self._entries.clear()

    def lock(self, identity: str, transport: Transport) -> _FileLock:
        """Held while fetching, so that concurrent cold processes fetch once."""
        directory = cache_dir(create=True)
        path = None if directory is None else os.path.join(directory, _file_key(identity) + ".lock")
        return _FileLock(path, transport.deadline)

    def _read(self, identity: str) -> Token | None:

        directory = cache_dir()
        if directory is None:
            return None
        path = os.path.join(directory, _file_key(identity) + TOKEN_FILE_SUFFIX)
        try:
            data = read_local_file(path, 65536, private=True)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _debug("ignoring cache file %s: %s", path, exc.strerror or exc)
            return None
        token = _parse_token_record(data, _file_key(identity, full=True))
        if token is None:
            _debug("ignoring cache file %s: not a token record for this identity", path)
            return None
        left = token.seconds_left()
        if left is None or left < MIN_TOKEN_LIFE:
            return None
        _debug("token from the disk cache (%.0f min left)", left / 60)
        return token

    def _write(self, identity: str, token: Token) -> None:
        directory = cache_dir(create=True)
        if directory is None:
            return
        path = os.path.join(directory, _file_key(identity) + TOKEN_FILE_SUFFIX)
        try:
            _write_private_file(path, _token_record(_file_key(identity, full=True), token))
        except OSError as exc:
            _debug("cannot write the token cache in %s: %s", directory, exc.strerror or exc)


_CACHE = TokenCache()

# A token record is five lines: this header, the identity's full key, the expiry (epoch
# seconds), the token, the source's description. Plain lines need no JSON parser on the
# warm path. Records of older versions (JSON, in *.json files) are never read: one fetch.
TOKEN_FILE_SUFFIX = ".token"
_TOKEN_RECORD_HEADER = "artifactregistry-gauth token 2"


def _token_record(key: str, token: Token) -> bytes:
    source = " ".join(token.source.split())  # one line, whatever a path holds
    return f"{_TOKEN_RECORD_HEADER}\n{key}\n{token.expiry!r}\n{token.value}\n{source}\n".encode()


def _parse_token_record(data: bytes, key: str) -> Token | None:
    """The token a record holds for ``key``; None for anything else, however malformed."""
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if len(lines) != 6 or lines[0] != _TOKEN_RECORD_HEADER or lines[1] != key or lines[5]:
        return None
    try:
        expiry = float(lines[2])
    except ValueError:
        return None
    if not 0 < expiry < 1e11 or not _is_token_text(lines[3]):  # not NaN, infinite or absurd
        return None
    return Token(lines[3], expiry, lines[4])


_LAST_FAILURE: list = []  # [monotonic time of the last failed lookup]


def _forget_tokens() -> None:
    """Forget the tokens and failures this process remembers (the disk cache stays)."""
    _CACHE.clear()
    _LAST_FAILURE.clear()


def cache_dir(create: bool = False) -> str | None:
    """This user's token cache directory, or None when caching is off or impossible."""
    if os.environ.get("ARTIFACTREGISTRY_GAUTH_NO_CACHE", "") not in ("", "0"):
        return None
    directory = os.environ.get("ARTIFACTREGISTRY_GAUTH_CACHE_DIR") or _default_cache_dir()
    if create:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            return None
    try:
        problem = _make_private_directory(directory)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        _debug("not using cache directory %s: %s", directory, problem)
        return None
    return directory


def _make_private_directory(directory: str) -> str:
    """What makes ``directory`` unfit for tokens ("" if nothing); others' write access is removed.

    In a directory others can write, another user could hold the lock (every cold lookup
    would wait out the budget) or plant links. The directory may itself be a symlink: what
    it points to is what is checked and repaired, through one descriptor, so nothing can
    be swapped in between.
    """
    import stat

    if not hasattr(os, "getuid"):  # Windows: a per-user profile directory, guarded by ACLs
        return "" if os.path.isdir(directory) else "not a directory"
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):
            return "not a directory"
        if info.st_uid != os.getuid():
            return "it belongs to another user"
        if info.st_mode & 0o022:
            os.fchmod(fd, 0o700)
            _debug("made cache directory %s private: others could write to it", directory)
    finally:
        os.close(fd)
    return ""


def _default_cache_dir() -> str:
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "artifactregistry-gauth", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/artifactregistry-gauth")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "artifactregistry-gauth")


def _file_key(identity: str, full: bool = False) -> str:
    """A file name for an identity: its hash, so names reveal nothing about it."""
    digest = _sha256(_hashable(f"artifactregistry-gauth/1\0{identity}")).hexdigest()
    return digest if full else digest[:32]


class _FileLock:
    """An exclusive lock on a file, given up on at a deadline (then we go on unlocked)."""

    def __init__(self, path: str | None, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.fd: int | None = None

    def __enter__(self) -> _FileLock:
        if self.path is None:
            return self
        try:
            self.fd = _open_lock_file(self.path)
        except OSError:
            return self
        while not _try_lock(self.fd):
            if _monotonic() >= self.deadline - 1.0:
                _debug("lock %s still held by another process; going on without it", self.path)
                os.close(self.fd)
                self.fd = None
                break
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            _unlock(self.fd)
            os.close(self.fd)
            self.fd = None


_NO_LOCK = _FileLock(None, 0.0)


def _open_lock_file(path: str) -> int:
    """Our own lock file, never through a link: anything else found there is replaced.

    A lock another user planted (before the directory was made private) could be held
    forever, and a planted symlink would make us create or lock a file elsewhere.
    """
    import stat

    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        if not os.path.islink(path):
            raise
    else:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and not _not_ours(info, private=True):
            return fd
        os.close(fd)
    _debug("replacing lock file %s: a link, not a file, or not ours alone", path)
    os.unlink(path)
    return os.open(path, flags | os.O_EXCL, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        import errno

        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        return True  # locking unsupported here (some network filesystems): go on unlocked
    return True


def _unlock(fd: int) -> None:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass


# --- OAuth token endpoints: requests, answers, errors without secrets ----------------------


def _post_form(
    transport: Transport,
    url: str,
    fields: dict,
    what: str,
    headers: dict | None = None,
    tls: tuple | None = None,
) -> dict:
    """POST a form to an OAuth token endpoint and return its JSON answer.

    ``tls``: an (SSL context, its trust) of its own, for a client certificate.
    """
    from urllib.parse import urlencode

    _check_endpoint(url, what)
    all_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    all_headers.update(headers or {})
    form = {
        name: _sendable(value, f"the {name} to send to {what}") for name, value in fields.items()
    }
    response = transport.request(
        "POST", url, body=urlencode(form).encode("ascii"), headers=all_headers, tls=tls
    )
    sent = [value for name, value in fields.items() if name in _SECRET_FIELDS]
    for name, value in all_headers.items():
        if name.lower() == "authorization":
            sent += _authorization_secrets(value)
    return _token_response_json(response, url, what, sent)


# Form fields that carry credentials: a server that echoes them must not make us print them.
_SECRET_FIELDS = frozenset({"assertion", "refresh_token", "client_secret", "subject_token", "rapt"})
# At most this much of a server's error text is quoted in ours.
MAX_QUOTED = 300


def _authorization_secrets(value: str) -> list:
    """The credential of an Authorization header, and for Basic the ``id:secret`` and secret."""
    import base64
    import binascii

    scheme, _, credential = value.strip().partition(" ")
    secrets = [credential]
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return secrets
        secrets += [pair, pair.partition(":")[2]]
    return secrets


def _secret_forms(secret: str) -> set:
    """Every way a secret we sent may come back: raw, URL-encoded or JSON-escaped, as is
    or as its bytes in base64, base64url or hex (alone or inside a longer encoded text)."""
    import json
    from urllib.parse import quote, quote_plus

    forms = set()
    for text in {secret, *_binary_forms(secret.encode("utf-8", "surrogatepass"))}:
        forms |= {text, quote(text), quote(text, safe=""), quote_plus(text)}
        for ascii_only in (True, False):
            escaped = json.dumps(text, ensure_ascii=ascii_only)[1:-1]
            forms |= {escaped, escaped.replace("/", "\\/")}
    folded = {" ".join(form.split()) for form in forms}  # as the text they are found in
    return {form for form in forms | folded if len(form) >= 4}


def _binary_forms(data: bytes) -> set:
    """``data`` in hex, and in base64 and base64url: whole, and the characters that
    depend on nothing but ``data`` wherever it starts in a longer encoded text."""
    import base64

    forms = {data.hex()}  # matched regardless of case
    for skip in range(3):  # where data starts within base64's groups of three bytes
        encoded = base64.b64encode(bytes(skip) + data).decode("ascii")
        own = encoded[4 if skip else 0 : (skip + len(data)) // 3 * 4]
        forms |= {own, encoded[4:] if skip else encoded, encoded.rstrip("=")}
    return forms | {form.replace("+", "-").replace("/", "_") for form in forms}


def _redact(text: str, secrets: list) -> str:
    """Server text made safe for one line of ours: folded, our secrets masked, at most 300 chars.

    Servers echo what they were sent in any encoding, so each secret is masked in every
    form we could have sent it (%-escapes in either case).
    """
    import re

    text = " ".join(text.split())
    forms = set()
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4:
            forms |= _secret_forms(secret)
    if not forms:
        return text[:MAX_QUOTED]
    pattern = re.compile(
        "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)), re.IGNORECASE
    )
    longest = max(len(form) for form in forms)
    kept, size, pos = [], 0, 0
    while size < MAX_QUOTED and pos < len(text):  # only as far as what is quoted: bounded work
        room = MAX_QUOTED - size
        found = pattern.search(text, pos, pos + room + longest)
        if found is None or found.start() >= pos + room:
            kept.append(text[pos : pos + room])
            break
        kept += [text[pos : found.start()], "***"]
        size += found.start() - pos + 3
        pos = found.end()
    return "".join(kept)[:MAX_QUOTED]


def _token_response_json(response: Response, url: str, what: str, sent: list) -> dict:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status == 200 and isinstance(data, dict):
        return data
    if response.status == 200:
        raise CredentialError(f"{what} at {_quoted_url(url)} answered with something not JSON")
    error, subtype, description = "", "", ""
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict):  # Google API style (C.3)
            description = str(data["error"].get("message", ""))
            error = str(data["error"].get("status", ""))
        else:
            error = str(data.get("error", ""))
            subtype = str(data.get("error_subtype", ""))
            description = str(data.get("error_description", ""))
    detail = _redact(": ".join(part for part in (error, description) if part), list(sent))
    raise TokenEndpointError(
        f"{what} at {_quoted_url(url)} refused (HTTP {response.status}"
        + (f", {detail})" if detail else ")"),
        error,
        subtype,
    )


def _token_from_oauth(data: dict, what: str, source: str) -> Token:
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise CredentialError(f"{what} answered without an access_token")
    return Token(value, _expiry_from(data.get("expires_in")), source)


def _expiry_from(expires_in: object) -> float | None:
    try:
        seconds = int(expires_in)  # Google sometimes sends it as a string
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 < seconds < 366 * 86400:
        return None
    return _now() + seconds


def _parse_rfc3339(text: str) -> float:
    """Seconds since the epoch for ``2024-05-01T12:00:00Z`` (fractional seconds allowed)."""
    import calendar

    main_part, _, _ = text.rstrip("Z").partition(".")
    return float(calendar.timegm(time.strptime(main_part, "%Y-%m-%dT%H:%M:%S")))


def _basic_auth(client_id: str, client_secret: str) -> str:
    import base64

    pair = _sendable(f"{client_id}:{client_secret or ''}", "the client_id or client_secret")
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _sendable(text: str, what: str) -> bytes:
    """The UTF-8 we send for ``text``; CredentialError naming ``what`` if it cannot be sent.

    JSON can spell half of a UTF-16 pair (``"\\ud800"``) and Python decodes it to a lone
    surrogate, which no UTF-8 encoder accepts: refused here in one line, not a traceback.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise CredentialError(
            f"{what} holds a lone surrogate (half of a UTF-16 pair, as a JSON \\ud800 "
            "escape decodes), which cannot be sent; fix the text where it comes from"
        ) from None


def _generate_access_token(
    transport: Transport,
    url: str,
    bearer: str,
    delegates: list | None,
    lifetime: int,
    quota_project: str,
    source: str,
    tls: tuple | None = None,
) -> Token:
    """Trade a token for a service account's at IAM (docs/protocols.md#impersonation)."""
    import json

    _check_endpoint(url, "IAM credentials")
    body = {"delegates": delegates, "scope": [SCOPE], "lifetime": f"{lifetime}s"}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"}
    if quota_project:
        headers["x-goog-user-project"] = quota_project
    _debug("asking IAM for a token of %s", _target_principal(url))
    response = transport.request(
        "POST", url, body=json.dumps(body).encode("utf-8"), headers=headers, tls=tls
    )
    data = _token_response_json(response, url, "IAM generateAccessToken", [bearer])
    value, expire_time = data.get("accessToken"), data.get("expireTime")
    if not isinstance(value, str) or not value:
        raise CredentialError("IAM generateAccessToken answered without an accessToken")
    try:
        expiry = _parse_rfc3339(expire_time)
    except (AttributeError, ValueError):
        raise CredentialError(
            "IAM generateAccessToken answered without a valid expireTime"
        ) from None
    return Token(value, expiry, source)


# --- RS256 signing in pure Python ---------------------------------------------------------


_RSA_OID = bytes.fromhex("2a864886f70d010101")  # rsaEncryption, 1.2.840.113549.1.1.1
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, start of content, end of content) of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise KeyFormatError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise KeyFormatError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise KeyFormatError("truncated DER")
    return tag, pos, pos + length


def _der_sequence(data: bytes, item: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The items inside the SEQUENCE ``item``."""
    tag, pos, end = item
    if tag != 0x30:
        raise KeyFormatError("expected a DER SEQUENCE")
    items = []
    while pos < end:
        child = _der_item(data, pos)
        if child[2] > end:
            raise KeyFormatError("truncated DER")
        items.append(child)
        pos = child[2]
    return items


class RsaPrivateKey:
    """An RSA private key read from PKCS#8 or PKCS#1 PEM, able to sign RS256."""

    __slots__ = ("n", "e", "d", "p", "q", "dp", "dq", "qinv", "size", "primes_checked")

    # Google issues 2048-bit keys; a larger bound would let a crafted key burn seconds of
    # CPU per signature (the cost grows 8x per doubling).
    MIN_BITS, MAX_BITS = 2048, 4096

    @classmethod
    def from_pem(cls, pem: str) -> RsaPrivateKey:
        import base64
        import binascii

        if not isinstance(pem, str):
            raise KeyFormatError("it is not a string")
        label, der = "", b""
        for kind in ("PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
            begin, end = f"-----BEGIN {kind}-----", f"-----END {kind}-----"
            if begin in pem:
                if end not in pem:
                    raise KeyFormatError(f"no {end} line")
                body = pem.split(begin, 1)[1].split(end, 1)[0]
                label = kind
                try:
                    der = base64.b64decode("".join(body.split()), validate=True)
                except (binascii.Error, ValueError):
                    raise KeyFormatError("the PEM body is not base64") from None
                break
        if not label:
            raise KeyFormatError("no -----BEGIN PRIVATE KEY----- line")
        if label == "ENCRYPTED PRIVATE KEY":
            raise KeyFormatError("it is encrypted; Google key files hold an unencrypted key")
        if label == "PRIVATE KEY":
            der = cls._unwrap_pkcs8(der)
        return cls._from_pkcs1(der)

    @staticmethod
    def _unwrap_pkcs8(der: bytes) -> bytes:
        items = _der_sequence(der, _der_item(der, 0))
        if len(items) < 3 or items[1][0] != 0x30 or items[2][0] != 0x04:
            raise KeyFormatError("not a PKCS#8 PrivateKeyInfo")
        algorithm = _der_sequence(der, items[1])
        if not algorithm or der[algorithm[0][1] : algorithm[0][2]] != _RSA_OID:
            raise KeyFormatError("not an RSA key")
        return der[items[2][1] : items[2][2]]

    @classmethod
    def _from_pkcs1(cls, der: bytes) -> RsaPrivateKey:
        items = _der_sequence(der, _der_item(der, 0))
        if len(items) < 9 or any(tag != 0x02 for tag, _, _ in items[:9]):
            raise KeyFormatError("not a PKCS#1 RSAPrivateKey")
        numbers = [int.from_bytes(der[start:end], "big") for _, start, end in items[1:9]]
        key = cls()
        key.n, key.e, key.d, key.p, key.q, key.dp, key.dq, key.qinv = numbers
        bits = key.n.bit_length()
        if not cls.MIN_BITS <= bits <= cls.MAX_BITS:  # before any arithmetic on the numbers
            raise KeyFormatError(
                f"it is a {bits}-bit key; only {cls.MIN_BITS} to {cls.MAX_BITS} bits are accepted"
            )
        if not key._consistent():
            raise KeyFormatError("its numbers do not form a consistent RSA key")
        key.size = (bits + 7) // 8
        key.primes_checked = False
        return key

    def _consistent(self) -> bool:
        """Cheap checks (no modular exponentiation) that the eight numbers belong together."""
        import math

        n, e, p, q = self.n, self.e, self.p, self.q
        half = n.bit_length() // 2
        if not (
            3 <= e < 1 << 256  # FIPS 186 bounds e; a huge e would make each check slow
            and e % 2 == 1
            and half - 8 <= min(p, q).bit_length() <= max(p, q).bit_length() <= half + 8
            and p * q == n  # two primes of about half the size each
            and 0 < self.d < n
            and 0 < self.dp < p
            and 0 < self.dq < q
            and 0 < self.qinv < p
        ):
            return False
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        return (
            e * self.d % lam == 1  # d may be reduced mod lcm(p-1, q-1) or mod phi
            and e * self.dp % (p - 1) == 1
            and e * self.dq % (q - 1) == 1
            and self.qinv * q % p == 1
        )

    def _check_primes(self) -> None:
        """Fermat's test on p and q, before the first signature: composite factors are a forgery."""
        if not (pow(2, self.p - 1, self.p) == 1 and pow(2, self.q - 1, self.q) == 1):
            raise KeyFormatError("its factors p and q are not prime")
        self.primes_checked = True

    def sign_rs256(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 8.2.1), blinded, CRT, fault-checked."""
        import hashlib
        import secrets

        if not self.primes_checked:  # here, not at load: a cached token needs no signature
            self._check_primes()
        digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        padding = b"\xff" * (self.size - len(digest_info) - 3)
        m = int.from_bytes(b"\x00\x01" + padding + b"\x00" + digest_info, "big")
        # Blinding keeps the private-key operation's timing independent of the message.
        r = secrets.randbelow(self.n - 2) + 2
        blinded = (m * pow(r, self.e, self.n)) % self.n
        m1 = pow(blinded, self.dp, self.p)
        m2 = pow(blinded, self.dq, self.q)
        s = (m2 + ((self.qinv * (m1 - m2)) % self.p) * self.q) * pow(r, -1, self.n) % self.n
        if pow(s, self.e, self.n) != m:  # a faulty CRT result would leak the key
            raise KeyFormatError("signature self-check failed")
        return s.to_bytes(self.size, "big")


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_text(value: object) -> str:
    return _json_compact(value).decode("utf-8")


def _json_compact(value: object) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def make_jwt(key: RsaPrivateKey, claims: dict, key_id: str | None = None) -> str:
    """A compact RS256 JWT (RFC 7519) of ``claims``."""
    header = {"typ": "JWT", "alg": "RS256"}
    if key_id:
        header["kid"] = key_id
    signing_input = f"{_b64url(_json_compact(header))}.{_b64url(_json_compact(claims))}"
    signature = key.sign_rs256(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"


# --- AWS Signature Version 4 (for federation from AWS) ------------------------------------


def aws_sigv4_headers(
    method: str,
    url: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    session_token: str,
    now: float,
) -> dict:
    """Headers of an AWS Signature Version 4 signed request with an empty body, in order."""
    import hashlib
    import hmac
    import posixpath
    from urllib.parse import parse_qs, quote, urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    service = host.split(".")[0]
    if service.endswith("-fips"):
        service = service[: -len("-fips")]
    stamp = time.gmtime(now)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", stamp)
    date = amz_date[:8]
    path = posixpath.normpath(parts.path) if parts.path else "/"
    query = parse_qs(parts.query)
    canonical_query = "&".join(
        f"{quote(key, safe='-_.~')}={value}"
        for key in sorted(query, key=lambda k: quote(k, safe="-_.~"))
        for value in sorted(quote(v, safe="-_.~") for v in query[key])
    )
    signed = {"host": host, "x-amz-date": amz_date}
    if session_token:
        signed["x-amz-security-token"] = session_token
    names = sorted(signed)
    canonical_request = "\n".join(
        [
            method,
            path,
            canonical_query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(_sendable(canonical_request, "the AWS request")).hexdigest(),
        ]
    )
    key = _sendable("AWS4" + secret_access_key, "the AWS secret access key")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    headers = {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}",
        "host": host,
        "x-amz-date": amz_date,
    }
    if session_token:
        headers["x-amz-security-token"] = session_token
    return headers


# --- logging: imported only when something is to be said ----------------------------------


_LOGGER_NAME = "artifactregistry_gauth"


def _debug_env() -> bool:
    return os.environ.get("ARTIFACTREGISTRY_GAUTH_DEBUG", "") not in ("", "0")


def _debug_enabled() -> bool:
    if _debug_env():
        return True
    if "logging" not in sys.modules:  # nobody configured logging, so nobody wants our debug
        return False
    import logging

    return logging.getLogger(_LOGGER_NAME).isEnabledFor(logging.DEBUG)


def _logger():
    import logging

    logger = logging.getLogger(_LOGGER_NAME)
    if _debug_env() and not any(getattr(h, "_gauth", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))  # each message names us
        handler._gauth = True
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def _debug(msg: str, *args: object) -> None:
    if _debug_enabled():
        _logger().debug("artifactregistry-gauth: " + msg, *args)


# --- local files: bounded reads, private writes -------------------------------------------


def read_local_file(
    path: str, limit: int = MAX_LOCAL_FILE_BYTES, owned: bool = False, private: bool = False
) -> bytes:
    """The bytes of a regular file, opened without blocking and read up to ``limit``.

    Raises OSError whose ``strerror`` says why: missing, unreadable, not a regular file
    (a FIFO would block forever, ``/dev/zero`` never ends) or larger than ``limit``.
    ``owned``: also unless the file is ours and nobody else can write it, so nobody else
    could have planted what it says (an executable's output file). ``private``: a file we
    wrote ourselves (cache, verdicts): owned, nobody else can read it either, and a
    symbolic link is not followed. Both are checked on what was opened: no race.
    """
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_BINARY", 0)  # Windows: no CR LF to LF, no end at Ctrl-Z
    if private:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        # Windows will not open a directory as a file (EACCES): say what it is, as fstat
        # says it on POSIX, rather than "Permission denied".
        if os.path.isdir(path):
            raise OSError(0, "not a regular file", path) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file", path)
        reason = (owned or private) and _not_ours(info, private)
        if reason:
            raise OSError(0, reason, path)
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(0, f"larger than {limit // 1024} KiB", path)
    return b"".join(chunks)


def _not_ours(info: os.stat_result, private: bool) -> str:
    """Why a file is not ours alone ("" if it is): owner, then who else may write (or read)."""
    if not hasattr(os, "getuid"):
        return ""  # Windows: the user's profile directories carry the protection
    if info.st_uid != os.getuid():
        return "owned by another user"
    if info.st_mode & (0o077 if private else 0o022):
        return "open to other users" if private else "writable by other users"
    return ""


def read_local_text(path: str, limit: int = MAX_LOCAL_FILE_BYTES, owned: bool = False) -> str:
    """A regular file's UTF-8 text (BOM allowed); OSError as read_local_file, or if not UTF-8.

    Line ends are read as Python's text mode reads them (CR LF and CR become LF), as
    google-auth, gcloud and pip read the files this reads after them, on every OS.
    """
    data = read_local_file(path, limit, owned)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise OSError(0, "not UTF-8 text", path) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _system_text(path: str, limit: int) -> str:
    """The first ``limit`` characters of a kernel-provided file, stripped; "" if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return ""


# How long Windows may refuse to replace a file that something has open (a reader such as
# pip or curl, another run's realpath, a virus scanner): pip waits as long for its files.
REPLACE_WAIT = 1.0


def _replace(source: str, target: str) -> None:
    """os.replace; on Windows tried again for up to REPLACE_WAIT while the target is open."""
    deadline = _monotonic() + REPLACE_WAIT
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt" or _monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _write_private_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600, replacing whatever was there."""
    import secrets

    temporary = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _same_path(one: str, other: str) -> bool:
    return os.path.normcase(os.path.abspath(one)) == os.path.normcase(os.path.abspath(other))


# --- subprocesses: found on PATH only, output capped, killed as a group --------------------


def _find_executable(name: str) -> str | None:
    """The program ``name`` in a PATH directory, like shutil.which but safe on Windows.

    Windows' search (and shutil.which there) tries the working directory first, so a
    checkout holding ``gcloud.cmd`` would run its code: only absolute PATH entries count.
    """
    names = [name]
    if os.name == "nt":
        extensions = [e for e in os.environ.get("PATHEXT", ".COM;.EXE;.BAT;.CMD").split(";") if e]
        if not any(name.lower().endswith(e.lower()) for e in extensions):
            names = [name + e for e in extensions]
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not directory or not os.path.isabs(directory):
            continue
        for candidate in names:
            path = os.path.join(directory, candidate)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


# How long a timed-out command may take to end once killed (taskkill, the wait, its pipes).
KILL_GRACE = 2.0
# How long a command's pipes may stay open once it has exited: what it wrote before its
# exit is already in them; later writes come from something it left running (gcloud's
# background tasks), whose pipes would otherwise hold us until the timeout.
EXIT_GRACE = 1.0


def _run_capped(
    argv: list,
    env: dict | None,
    timeout: float,
    limit: int = MAX_RESPONSE_BYTES,
    answered=None,
):
    """Run a command as subprocess.run(capture_output=True) would, stdin closed, output capped.

    Returns a CompletedProcess (stdout, stderr as bytes). Raises OSError if the command
    cannot start, subprocess.TimeoutExpired if it still runs (or its pipes are still open)
    at ``timeout``, and _OutputTooLargeError ("printed more than 1 MiB on stdout") once
    it prints more than ``limit`` bytes on stdout or stderr; the command is then killed
    and reaped. Pipes that something it started still holds end the wait EXIT_GRACE after
    its exit, or at once when ``answered`` (a test of stdout) passes what it printed.
    """
    import subprocess
    import threading

    deadline = _monotonic() + timeout
    pipe = subprocess.PIPE
    group = os.name != "nt"  # its own process group, so a kill also ends what it started
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
            env=env,
            start_new_session=group,
        )
    except ValueError:  # a NUL, or a lone surrogate the file system encoding refuses
        raise OSError(
            0, "its command line or environment holds a NUL or a character that cannot be passed"
        ) from None
    job = _WindowsJob.holding(process.pid) if os.name == "nt" else None
    outputs: dict = {"stdout": bytearray(), "stderr": bytearray()}
    too_large: list = []
    closed: list = []  # the pipes that reached their end
    progress = threading.Semaphore(0)  # released at each chunk, each pipe's end, the exit

    def drain(name: str) -> None:
        stream, kept = getattr(process, name), outputs[name]
        try:
            with stream:
                while len(kept) <= limit:
                    chunk = stream.read1(65536)
                    if not chunk:
                        return
                    kept += chunk
                    progress.release()
                too_large.append(name)
                _kill(process, group)  # before the release: the caller's thread waits for it
        finally:
            closed.append(name)
            progress.release()

    def reap() -> None:
        process.wait()
        progress.release()

    for target, args in [(drain, ("stdout",)), (drain, ("stderr",)), (reap, ())]:
        threading.Thread(
            target=target, args=args, name="artifactregistry-gauth", daemon=True
        ).start()

    def done() -> bool:
        if too_large or len(closed) == len(outputs):
            return True
        # Exited with a whole answer: what comes later is from something it left running.
        return (
            answered is not None
            and process.returncode is not None
            and answered(bytes(outputs["stdout"]))
        )

    end = deadline
    while not done():
        if process.returncode is not None:  # exited: the pipes get EXIT_GRACE to close
            end = min(end, _monotonic() + EXIT_GRACE)
        if not progress.acquire(timeout=max(end - _monotonic(), 0.0)):
            break
    try:
        if too_large:
            size = f"{limit >> 20} MiB" if limit & 0xFFFFF == 0 else f"{limit} bytes"
            raise _OutputTooLargeError(f"printed more than {size} on {too_large[0]}")
        if not done() and process.returncode is None:  # it runs on
            raise subprocess.TimeoutExpired(argv, timeout)
        returncode = process.wait(max(deadline - _monotonic(), 0.0))
    except (_OutputTooLargeError, subprocess.TimeoutExpired):
        # Every wait from here on shares KILL_GRACE: a kill that fails or is ignored must not
        # hold the lookup (taskkill can be denied; the process is then left to itself).
        grace_end = _monotonic() + KILL_GRACE
        _kill(process, group, KILL_GRACE)
        try:
            process.wait(max(grace_end - _monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _debug("process %d did not end when killed: left running", process.pid)
        # The pipes close once every process holding them is gone: wait for that, briefly.
        stop = grace_end
        while len(closed) < len(outputs) and progress.acquire(timeout=max(stop - _monotonic(), 0)):
            pass
        if job:
            job.close()
        raise
    if len(closed) < len(outputs) and group:
        _kill(process, group)  # what it left holding the pipes; its threads end with them
    elif len(closed) < len(outputs) and job:
        job.end()  # the same on Windows: taskkill /T finds no tree once its root has exited
    if job:
        job.close()
    return subprocess.CompletedProcess(
        argv, returncode, bytes(outputs["stdout"]), bytes(outputs["stderr"])
    )


class _WindowsJob:
    """A Windows job object holding a process and all it goes on to start, to end them all."""

    def __init__(self, kernel32, handle) -> None:
        self.kernel32 = kernel32
        self.handle = handle

    @classmethod
    def holding(cls, pid: int):
        """A job holding process ``pid``, or None where one cannot be made or joined."""
        try:
            import ctypes
            from ctypes import wintypes as w

            kernel32 = ctypes.WinDLL("kernel32")
            for name, restype, argtypes in (
                ("CreateJobObjectW", w.HANDLE, (ctypes.c_void_p, w.LPCWSTR)),
                ("OpenProcess", w.HANDLE, (w.DWORD, w.BOOL, w.DWORD)),
                ("AssignProcessToJobObject", w.BOOL, (w.HANDLE, w.HANDLE)),
                ("TerminateJobObject", w.BOOL, (w.HANDLE, w.UINT)),
                ("CloseHandle", w.BOOL, (w.HANDLE,)),
            ):
                function = getattr(kernel32, name)
                function.restype, function.argtypes = restype, argtypes
        except (ImportError, OSError, AttributeError) as exc:  # a Python without ctypes
            _debug("no job object for process %d: %s", pid, exc)
            return None
        job = cls(kernel32, kernel32.CreateJobObjectW(None, None))
        process = kernel32.OpenProcess(0x0101, False, pid)  # SET_QUOTA | TERMINATE
        joined = bool(
            job.handle and process and kernel32.AssignProcessToJobObject(job.handle, process)
        )
        if process:
            kernel32.CloseHandle(process)
        if not joined:
            job.close()
            return None
        return job

    def end(self) -> None:
        if self.handle and not self.kernel32.TerminateJobObject(self.handle, 1):
            _debug("cannot end the job object of what the command started")

    def close(self) -> None:
        if self.handle:
            self.kernel32.CloseHandle(self.handle)
            self.handle = None


def _kill(process, group: bool, timeout: float = KILL_GRACE) -> None:
    """Kill the process and what it started (gcloud.cmd runs Python as a child on Windows).

    taskkill gets at most `timeout`; when it fails (exit status other than 0, or 128 for a
    process already gone), at least the process itself is ended.
    """
    import signal
    import subprocess

    try:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
            return
        if os.name == "nt":
            system = os.environ.get("SystemRoot", "C:\\Windows")  # not PATH: planted copies
            taskkill = os.path.join(system, "System32", "taskkill.exe")
            done = subprocess.run(
                [taskkill, "/F", "/T", "/PID", str(process.pid)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
            if done.returncode in (0, 128):
                return
            _debug("taskkill /T of process %d failed (exit %d)", process.pid, done.returncode)
    except (OSError, subprocess.SubprocessError) as exc:
        _debug("cannot end the process tree of %d: %s", process.pid, exc)
    try:
        process.kill()  # the tree could not be ended: at least the process itself
    except OSError:
        pass  # gone already, or not ours to end: the caller's waits are bounded


# --- HTTP: timeouts, retries, proxies, no redirects ---------------------------------------


class Response:
    """Status, headers (lower-case names) and body of one HTTP exchange."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> object:
        return _json_loads(self.body)


def _json_loads(data: bytes | str) -> object:
    """Parse JSON; any malformed input (bad UTF-8, too deep, not JSON) is a ValueError."""
    import json

    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# Host names and addresses: one rule each, which the host policy, the metadata server,
# the token endpoints and the command line all call.
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _is_host_name(host: str) -> bool:
    """True for a DNS name of letter-digit-hyphen labels (lower case), nothing else."""
    return bool(host) and all(
        label and label[0] != "-" and label[-1] != "-" and _LABEL_CHARS.issuperset(label)
        for label in host.split(".")
    )


def _authority_host(authority: str, userinfo: bool) -> str | None:
    """The host of ``[user@]host[:port]``, lower case without a final dot, if plain.

    HTTP stacks disagree on a backslash, ``%``, non-ASCII, a password or a second ``@``:
    None for those, and for any userinfo unless ``userinfo`` allows a user name.
    """
    if not authority.isascii() or "\\" in authority or "%" in authority:
        return None
    user, at, hostport = authority.rpartition("@")
    if at and (not userinfo or ":" in user or "@" in user):
        return None  # a password or a second @: readers disagree on where the host starts
    host, colon, port = hostport.partition(":")
    if colon and port and not port.isdigit():
        return None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    return host if _is_host_name(host) else None


def _is_token_destination(host: str) -> bool:
    """True for a host a URL may take a token to: under pkg.dev, or one we are told of."""
    return host.endswith(".pkg.dev") or _is_extra_host(host)


def _is_extra_host(host: str, wildcards: bool = True) -> bool:
    """True for a host ARTIFACTREGISTRY_GAUTH_HOSTS names, exactly or under a ``*.`` entry."""
    for entry in os.environ.get("ARTIFACTREGISTRY_GAUTH_HOSTS", "").split(","):
        pattern = entry.strip().lower().rstrip(".")
        if wildcards and pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if pattern and host == pattern:
            return True
    return False


# Artifact Registry's own host names are LOCATION-FORMAT.pkg.dev, as gcloud builds them
# (googlecloudsdk/command_lib/artifacts/endpoint_util.py, ArtifactRegistryDomainEndpoint).
# LOCATION is a multi-region or a region (`gcloud artifacts locations list`); Google names
# regions CONTINENT-DIRECTION and a number (https://cloud.google.com/about/locations):
# us-central1, europe-west12, northamerica-northeast1, me-central2, africa-south1. FORMAT
# is a value of the Artifact Registry API's Repository.Format in lower case, or pypi, the
# host of Python repositories in Artifact Registry's alpha.
_MULTI_REGIONS = frozenset({"us", "europe", "asia"})
_CONTINENTS = _MULTI_REGIONS | {"australia", "northamerica", "southamerica", "me", "africa"}
_DIRECTIONS = frozenset(
    {"north", "south", "east", "west", "central", "northeast", "northwest", "southeast"}
    | {"southwest"}
)
_REPOSITORY_FORMATS = frozenset(
    {"apt", "docker", "generic", "go", "kfp", "maven", "npm", "python", "pypi", "ruby", "yum"}
)


def _is_registry_host(host: str) -> bool:
    """True for Artifact Registry's own host names, ``LOCATION-FORMAT.pkg.dev``."""
    name, _, domain = host.partition(".")
    location, _, repository_format = name.rpartition("-")
    return (
        domain == "pkg.dev"
        and repository_format in _REPOSITORY_FORMATS
        and (location in _MULTI_REGIONS or _is_region(location))
    )


def _is_region(location: str) -> bool:
    """True for a region's name: a continent, a direction, a number from 1 to 99."""
    continent, _, area = location.partition("-")
    direction = area.rstrip("0123456789")
    number = area[len(direction) :]
    return (
        continent in _CONTINENTS
        and direction in _DIRECTIONS
        and 0 < len(number) < 3
        and number[0] != "0"
    )


def _ip_literal(host: str):
    """The address an IP literal (``[v6]`` or bare) names, IPv4-mapped unwrapped; else None.

    Only literals: a name such as 127.evil.example resolves wherever its owner likes, and
    inet_aton shorthands (127.1, 0x7f000001) are not literals to every stack.
    """
    import ipaddress

    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None
    # ::ffff:127.0.0.1 reaches 127.0.0.1; Python 3.13 says so itself, older ones do not.
    return getattr(address, "ipv4_mapped", None) or address


def _is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and IP literals in 127.0.0.0/8 or ``::1``, never for a name."""
    address = _ip_literal(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


def _is_local_address(host: str) -> bool:
    """Loopback or link-local: metadata services that a proxy must never see."""
    address = _ip_literal(host)
    return _is_loopback_host(host) or (address is not None and address.is_link_local)


def _host_and_port(authority: str) -> tuple[str, int] | None:
    """("host", port) of ``host[:port]`` or ``[IPv6][:port]`` (port 80 if none); else None."""
    import re

    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?", authority)
    if match is None or int(match.group(2) or 80) > 65535:
        return None
    return match.group(1), int(match.group(2) or 80)


def _ip_and_port(authority: str) -> tuple[str, int]:
    """("host", port) of "IP[:port]", "[IPv6][:port]" or "localhost[:port]", else ("", 0)."""
    host, port = _host_and_port(authority) or ("", 0)
    if (host == "localhost" or _ip_literal(host) is not None) and port > 0:
        return host.strip("[]"), port
    return "", 0


def _scheme_and_host(url: str) -> tuple[str, str]:
    """A URL's scheme and host; empty for what urlsplit refuses (an unclosed [IPv6 host)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "", ""
    return parts.scheme, parts.hostname or ""


def _url_host(url: str) -> str:
    return _scheme_and_host(url)[1]


def _quoted_url(url: str) -> str:
    """A URL as our messages and logs quote it: no query or fragment (they carry tokens),
    a userinfo password as ``***``; never an exception, whatever the text."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:].split("?", 1)[0].split("#", 1)[0]
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if len(user) > 40:  # a long "user name" is likely a token itself
            user = "***"
        authority = f"{user}{':***' if colon else ''}@{hostport}"
    shown = f"{scheme}{sep}{authority}{path}"
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _check_endpoint(url: str, what: str) -> None:
    """Refuse to send credentials anywhere but https, or http on this machine."""
    scheme, host = _scheme_and_host(url)
    if scheme == "https" and host:
        return
    if scheme == "http" and host and _is_loopback_host(host):
        return
    raise CredentialError(
        f"refusing to send credentials to {what} {_quoted_url(url)!r}: it must be an https URL"
    )


_HEADER_NAME_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _check_sendable(url: str, headers: dict) -> None:
    """CredentialError unless http.client can send this URL and these headers as they are.

    It sends the request line as ASCII and header values as Latin-1, and refuses line
    breaks; text from a file would otherwise fail inside it as a traceback (or, for a
    header, quote the value). Nothing of a header's value is quoted here.
    """
    from urllib.parse import urlsplit

    if not (url.isascii() and url.isprintable()) or " " in url:
        raise CredentialError(
            f"the URL {_quoted_url(url)} holds characters that cannot be sent (non-ASCII, "
            "spaces or control characters); percent-encode them"
        )
    if "@" in urlsplit(url).netloc:
        # urllib would take "user:password@host" for the host name and look it up in DNS.
        raise CredentialError(
            f"the URL {_quoted_url(url)} has a user name or password, which is never sent; "
            "remove it (credentials belong in headers)"
        )
    for name, value in headers.items():
        if not (name and _HEADER_NAME_CHARS.issuperset(name) and _is_header_value(value)):
            raise CredentialError(
                f"the {name!r} header for {_quoted_url(url)} holds characters HTTP headers cannot "
                "carry (a line break, a control character, text beyond Latin-1 or a lone surrogate)"
            )


def _is_header_value(value: str) -> bool:
    return all(c == "\t" or " " <= c <= "~" or "\xa0" <= c <= "\xff" for c in value)


class Transport:
    """Sends the HTTP requests of one lookup, all within one deadline."""

    def __init__(self) -> None:
        self.budget = LOOKUP_BUDGET
        self.deadline = _monotonic() + self.budget

    def remaining(self) -> float:
        left = self.deadline - _monotonic()
        if left <= 0:
            raise CredentialError(f"gave up after {self.budget:g} s: Google did not answer in time")
        return left

    def own_budget(self, budget: float | None) -> _OwnBudget:
        """Inside, requests have ``budget`` seconds; the time spent is not charged to the lookup."""
        return _OwnBudget(self, budget)

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict | None = None,
        direct: bool = False,
        timeout: float = REQUEST_TIMEOUT,
        attempts: int = MAX_ATTEMPTS,
        tls: tuple | None = None,
    ) -> Response:
        """Send one request; retry transient failures with backoff inside the deadline.

        ``direct`` bypasses any proxy (the metadata server must never be proxied); ``tls``
        is an (SSL context, description of its trust) for https instead of the usual one.
        """
        _check_sendable(url, headers or {})
        last_error = None
        # A proxy would carry a loopback request (and its plain-http secrets) off the machine.
        direct = direct or _is_loopback_host(_url_host(url))
        for attempt in range(1, attempts + 1):
            try:
                response = self._send(method, url, body, headers or {}, direct, timeout, tls)
            except _TransientError as exc:
                last_error = f"could not reach {_quoted_url(url)}: {exc}"
                wait = 0.0
            else:
                if not _worth_retrying(response) or attempt == attempts:
                    return response
                last_error = f"{_quoted_url(url)} answered HTTP {response.status}"
                wait = _retry_after(response, self.deadline - _monotonic())
            if attempt == attempts:
                break
            import random

            backoff = min(0.5 * 2 ** (attempt - 1), MAX_BACKOFF)
            wait = max(wait, backoff * random.uniform(0.9, 1.1))  # noqa: S311
            if wait >= self.deadline - _monotonic():
                break
            _debug("%s; retrying in %.1f s", last_error, wait)
            time.sleep(wait)
        raise CredentialError(last_error)

    def _send(self, method, url, body, headers, direct, timeout, tls=None) -> Response:
        """One exchange, bounded as a whole: socket timeouts alone let a slow drip go on."""
        import threading

        timeout = min(timeout, self.remaining())
        outcome: list = []

        def exchange() -> None:
            try:
                outcome.append(self._exchange(method, url, body, headers, direct, timeout, tls))
            except BaseException as exc:  # handed to the caller's thread below
                outcome.append(exc)

        worker = threading.Thread(target=exchange, name="artifactregistry-gauth", daemon=True)
        worker.start()
        worker.join(timeout)
        if not outcome:  # abandoned: the daemon thread ends with its socket's timeout
            raise _TransientError("timed out")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _exchange(self, method, url, body, headers, direct, timeout, tls=None) -> Response:
        import http.client
        import urllib.error
        import urllib.request

        handlers = [_no_redirect_handler()]
        if direct:
            handlers.append(urllib.request.ProxyHandler({}))
        store = ""
        if url.startswith("https:"):
            if tls:
                context, store = tls
            else:
                context, stores = _tls_context()
                store = describe_trust(stores)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with opener.open(request, timeout=timeout) as reply:
                return Response(reply.status, _lower(reply.headers), _read(reply))
        except urllib.error.HTTPError as reply:
            with reply:
                return Response(reply.code, _lower(reply.headers), _read(reply))
        except urllib.error.URLError as exc:
            reason = exc.reason
            if _is_certificate_error(reason):
                raise CredentialError(
                    f"the TLS certificate of {_url_host(url)} is not trusted ({reason}; "
                    f"verified against {store}); behind a TLS-inspecting proxy, point "
                    "SSL_CERT_FILE or REQUESTS_CA_BUNDLE at its CA bundle"
                ) from None
            raise _TransientError(_describe_os_error(reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _TransientError(_describe_os_error(exc)) from None


class _OwnBudget:
    """A stretch of a lookup with a budget of its own (None: the lookup's)."""

    def __init__(self, transport: Transport, budget: float | None) -> None:
        self.transport = transport
        self.budget = budget
        self.saved = (transport.budget, transport.deadline)
        self.started = 0.0

    def __enter__(self) -> None:
        if self.budget is not None:
            self.started = _monotonic()
            self.saved = (self.transport.budget, self.transport.deadline)
            self.transport.budget = self.budget
            self.transport.deadline = self.started + self.budget

    def __exit__(self, *exc_info: object) -> None:
        if self.budget is not None:
            budget, deadline = self.saved
            self.transport.budget = budget
            self.transport.deadline = deadline + (_monotonic() - self.started)


def _is_certificate_error(reason: object) -> bool:
    import ssl

    return isinstance(reason, ssl.SSLCertVerificationError)


def _describe_os_error(exc: object) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__ == "timeout":
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _lower(headers) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def _read(reply) -> bytes:
    return reply.read(MAX_RESPONSE_BYTES)


# OAuth errors that mean "try again", whatever the HTTP status (docs/protocols.md#token-endpoint).
_RETRY_OAUTH_ERRORS = frozenset({"internal_failure", "server_error", "temporarily_unavailable"})


def _worth_retrying(response: Response) -> bool:
    if response.status in RETRY_STATUSES:
        return True
    if response.status < 400:
        return False
    try:
        data = response.json()
    except ValueError:
        return False
    return isinstance(data, dict) and any(
        data.get(field) in _RETRY_OAUTH_ERRORS
        for field in ("error", "error_description")
        if isinstance(data.get(field), str)
    )


def _retry_after(response: Response, limit: float) -> float:
    """The wait a Retry-After header asks for, at most ``limit``; 0 when absent or unusable.

    Only delta-seconds count (``nan``, ``-5`` or ``1.5`` would otherwise reach time.sleep);
    an HTTP-date is ignored rather than trusted to a clock we do not share.
    """
    text = str(response.headers.get("retry-after", "")).strip()
    if not (text.isascii() and text.isdigit()):
        return 0.0
    return max(min(float(text), limit), 0.0)


def _no_redirect_handler():
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """Token endpoints never redirect; following one could send credentials elsewhere."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    return NoRedirect()


# --- pip's configuration: its files in pip's order, an option read as pip reads it --------

# pip 26.3's system-wide folders besides the XDG ones (pip/_internal/utils/appdirs.py,
# site_config_dirs): Unix adds /etc, macOS has Apple's shared folder (and Homebrew's).
PIP_UNIX_SYSTEM_DIR = "/etc"
PIP_UNIX_XDG_DIR = "/etc/xdg"
PIP_MACOS_SYSTEM_DIR = "/Library/Application Support"
# A framework Python installed by Homebrew: its prefix holds a share/pip of its own.
_HOMEBREW_PYTHON = r"(.+)/opt/python[^/]*/Frameworks/Python\.framework/Versions/[^/]+"


def pip_config_files() -> list:
    """pip's configuration files in the order pip 26.3 loads them: a later file wins.

    From pip/_internal/configuration.py: the system-wide files, the user's (the legacy one
    first), the environment's (``sys.prefix``), then ``PIP_CONFIG_FILE``. The user's are
    skipped when ``PIP_CONFIG_FILE`` names a file that exists, and all of them when it is
    os.devnull.
    """
    named = os.environ.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    windows = sys.platform == "win32"
    directories = _pip_system_dirs()
    if not (named and os.path.exists(named)):
        legacy = os.path.join(os.path.expanduser("~"), "pip" if windows else ".pip")
        directories += [legacy, _pip_user_dir()]
    directories.append(sys.prefix)
    files = [os.path.join(d, "pip.ini" if windows else "pip.conf") for d in directories]
    return [*files, named] if named else files


def _pip_system_dirs() -> list:
    """platformdirs' site config folders as pip asks for them, each with pip's own name."""
    if sys.platform == "win32":
        # CSIDL_COMMON_APPDATA (C:\ProgramData), which %ALLUSERSPROFILE% names.
        common = os.environ.get("ALLUSERSPROFILE") or os.environ.get("PROGRAMDATA")
        return [os.path.join(common or "C:\\ProgramData", "pip")]
    if sys.platform == "darwin":
        found = _xdg_dirs("XDG_DATA_DIRS")
        if not found:
            prefix = _homebrew_prefix()
            found = [os.path.join(prefix, "share")] if prefix else []
            found.append(PIP_MACOS_SYSTEM_DIR)
        return [os.path.join(d, "pip") for d in found]
    found = _xdg_dirs("XDG_CONFIG_DIRS") or [PIP_UNIX_XDG_DIR]
    return [os.path.join(d, "pip") for d in found] + [PIP_UNIX_SYSTEM_DIR]


def _pip_user_dir() -> str:
    home = os.path.expanduser("~")
    if sys.platform == "win32":  # CSIDL_APPDATA, the roaming profile
        return os.path.join(
            os.environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming"), "pip"
        )
    if sys.platform == "darwin":
        # pip takes Application Support only where that folder exists, else ~/.config/pip.
        data = _xdg_dirs("XDG_DATA_HOME")
        preferred = os.path.join(*data or [home, "Library", "Application Support"], "pip")
        return preferred if os.path.isdir(preferred) else os.path.join(home, ".config", "pip")
    return os.path.join(*_xdg_dirs("XDG_CONFIG_HOME") or [home, ".config"], "pip")


def _xdg_dirs(variable: str) -> list:
    """The absolute paths in an XDG variable; relative ones are ignored, as the spec says."""
    parts = (part.strip() for part in os.environ.get(variable, "").split(os.pathsep))
    return [part for part in parts if part.startswith("/")]


def _homebrew_prefix() -> str:
    import re

    match = re.fullmatch(_HOMEBREW_PYTHON, sys.base_prefix)
    return match.group(1) if match else ""


def pip_option(name: str) -> tuple:
    """(value, where it is set) of a ``pip install`` option; ("", "") when unset.

    As pip's ConfigOptionParser reads it: ``PIP_<NAME>`` wins, then ``[install]``, then
    ``[global]``, each from the last file that sets it; an empty value counts as unset.
    """
    variable = "PIP_" + name.upper().replace("-", "_")
    if os.environ.get(variable):
        return os.environ[variable], f"${variable}"
    found: dict = {}
    for path in pip_config_files():
        for section, value in _pip_file_options(path, name).items():
            found[section] = (value, f"{section}.{name} in {path}")
    return found.get("install") or found.get("global") or ("", "")


def _pip_file_options(path: str, name: str) -> dict:
    """``{"global": value, "install": value}`` for one option in one of pip's files."""
    import configparser

    try:
        text = read_local_text(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _debug("cannot read pip's configuration file %s: %s", path, exc.strerror)
        return {}
    parser = configparser.RawConfigParser()  # as pip reads it: no interpolation
    parser.optionxform = _pip_option_name
    try:
        parser.read_string(text, path)
    except configparser.Error as exc:
        _debug("pip cannot parse its configuration file %s: %s", path, " ".join(str(exc).split()))
        return {}
    sections = ("global", "install")
    return {
        s: parser.get(s, name)
        for s in sections
        if parser.has_section(s) and parser.get(s, name, fallback="")
    }


def _pip_option_name(name: str) -> str:
    """pip's spelling of an option in its files: lower case, dashes, no leading ``--``."""
    name = name.lower().replace("_", "-")
    return name[2:] if name.startswith("--") else name


# --- TLS: which certificates to trust -----------------------------------------------------

# Variables that name a CA bundle or directory, each read by some tool: OpenSSL (Python's
# ssl, uv, curl) reads the first two, requests (twine, google-auth) the third, curl the last.
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# A long-lived process that changes one of these gets a new context.
_TLS_ENVIRONMENT = (
    *_CA_VARIABLES,
    "PIP_CERT",
    "PIP_CONFIG_FILE",
    "CLOUDSDK_CONFIG",
    "CLOUDSDK_ACTIVE_CONFIG_NAME",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
)
# Roots exported from the macOS keychains are exported again after this long.
MACOS_ROOTS_LIFE = 24 * 3600
MACOS_KEYCHAINS = (
    "/System/Library/Keychains/SystemRootCertificates.keychain",
    "/Library/Keychains/System.keychain",  # CAs an administrator added, corporate ones
)
MAX_MACOS_ROOTS_BYTES = 8 << 20
_TLS_CONTEXTS: dict = {}


def _tls_context():
    """The SSL context for https and the stores it trusts, built once per process and setting.

    Built on the first network call only: a token from the cache never needs it.
    """
    key = tuple(os.environ.get(name, "") for name in _TLS_ENVIRONMENT)
    found = _TLS_CONTEXTS.get(key)
    if found is None:
        found = _TLS_CONTEXTS[key] = _new_tls_context()
        _debug("verifying TLS certificates against %s", describe_trust(found[1]))
    return found


def _new_tls_context():
    """A context trusting the union of what the user's tools trust, as pip 26.3 does.

    The OS store (through truststore where importable), OpenSSL's defaults, every bundle or
    directory named for any tool, certifi, and without truststore on macOS the keychains.
    A named store that cannot be loaded is reported, never fatal: the others may suffice.
    Returns the context and the stores, each a dict: store, path, from, and any problem.
    """
    import ssl

    context, stores = _os_trust_context()
    # Machines often name the system bundle in several variables: each file is loaded once.
    default = ssl.get_default_verify_paths().cafile  # SSL_CERT_FILE, if it names a file
    usable = not any("problem" in store for store in stores)
    loaded = {os.path.realpath(default)} if default and usable else set()
    for name, path, origin in _named_ca_stores():
        stores.append(_add_ca_store(context, name, path, origin, loaded))
    for name in ("certifi", "pip._vendor.certifi"):  # pip trusts its own copy of certifi
        certifi = _optional_module(name)
        if certifi is not None:
            where = certifi.where()
            stores.append(_add_ca_store(context, "certifi's CA bundle", where, name, loaded))
            break
    if sys.platform == "darwin" and not stores[0]["from"].endswith("truststore"):
        # truststore asks the keychains itself; without it, their export is the OS store.
        stores.append(_add_macos_keychains(context))
    return context, stores


def _os_trust_context():
    """A context on the OS store: truststore's where importable (its platforms, Python 3.10+)."""
    import ssl

    for name in ("truststore", "pip._vendor.truststore"):
        truststore = _optional_module(name)
        if truststore is not None:
            context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_default_certs()  # OpenSSL's defaults join the OS store
            os_store = {"store": f"the OS trust store via {name}", "from": name}
            return context, [os_store, _default_store(context)]
    context = ssl.create_default_context()
    return context, [_default_store(context)]


def _default_store(context) -> dict:
    """What ssl's load_default_certs gave: Windows' system stores, else OpenSSL's paths."""
    import ssl

    if sys.platform == "win32":
        stores = "the Windows system certificate stores (ROOT and CA)"
        return {"store": stores, "from": "ssl.SSLContext.load_default_certs"}
    paths = ssl.get_default_verify_paths()
    where = " and ".join(p for p in (paths.cafile, paths.capath) if p)
    store = {
        "store": "OpenSSL's default CA paths",
        "path": where,
        "from": "ssl.get_default_verify_paths",
    }
    if not _has_default_roots(context):
        store["problem"] = "they hold no certificates"
    return store


def _has_default_roots(context) -> bool:
    """True if OpenSSL's default paths hold certificates."""
    import ssl

    try:
        if context.get_ca_certs():
            return True
    except NotImplementedError:  # truststore's context counts nothing: look at the files
        cafile = ssl.get_default_verify_paths().cafile
        if cafile and os.path.isfile(cafile) and os.path.getsize(cafile):
            return True
    # A CA directory is read lazily, one file per lookup: nothing is counted until then.
    capath = ssl.get_default_verify_paths().capath
    if not capath:
        return False
    try:
        with os.scandir(capath) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _named_ca_stores() -> list:
    """(name, path, where it is set) for each CA bundle or directory named for a tool."""
    named = [(n, os.environ[n], f"${n}") for n in _CA_VARIABLES if os.environ.get(n)]
    cert, where = pip_option("cert")
    if cert:
        named.append(("pip's cert", os.path.expanduser(cert), where))
    try:
        settings = GcloudSettings.read(_find_executable("gcloud"))
    except CredentialError as exc:  # gcloud's own files are broken: gcloud fails too
        _debug("not reading gcloud's %s: %s", GCLOUD_CA_PROPERTY, exc)
    else:
        path = settings.get(GCLOUD_CA_PROPERTY)
        if path:
            named.append(
                (f"gcloud's {GCLOUD_CA_PROPERTY}", path, settings.named_by(GCLOUD_CA_PROPERTY))
            )
    return named


def _add_ca_store(context, name: str, path: str, origin: str, loaded: set) -> dict:
    """Load a bundle (a file) or a CA directory into ``context`` unless ``loaded`` has it.

    A problem is reported back in the store, never raised.
    """
    import stat

    store = {"store": name, "path": path, "from": origin}
    real = os.path.realpath(path)
    if real in loaded:
        return store
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode) and _os_verifies(context):
            _load_ca_directory_at_once(context, path)
        elif stat.S_ISDIR(mode):
            context.load_verify_locations(capath=path)
        elif stat.S_ISREG(mode):  # never a FIFO or a device: loading it could block
            context.load_verify_locations(cafile=path)
        else:
            raise OSError(0, "not a regular file")
    except OSError as exc:  # ssl.SSLError is an OSError too
        problem = exc.strerror or getattr(exc, "reason", None) or exc
        store["problem"] = f"cannot load CA certificates from it ({problem})"
        _debug("%s %s (%s): %s", name, path, origin, store["problem"])
    else:
        loaded.add(real)
    return store


def _os_verifies(context) -> bool:
    """Whether truststore has macOS or Windows verify: they see only loaded certificates.

    OpenSSL reads a CA directory lazily, during a handshake; the OS would never see it.
    """
    import ssl

    return type(context) is not ssl.SSLContext and sys.platform in ("darwin", "win32")


def _load_ca_directory_at_once(context, path: str) -> None:
    """Every certificate file of a CA directory (hashed names or not); OSError if none."""
    count = 0
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.is_file():  # a hash link counts as the file it names
                    context.load_verify_locations(cafile=entry.path)
                    count += 1
            except OSError:  # ssl.SSLError too: not every file in such a folder is a CA
                continue
    if not count:
        raise OSError(0, "no certificate file in it")


def _optional_module(name: str):
    """An optional module (truststore, certifi), or None where it is absent or unsupported."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:  # absent, or a Python older than it supports
        return None


def describe_trust(stores: list) -> str:
    """The stores in one line, for errors and the debug log: the loaded, then the failed."""

    def label(store: dict) -> str:
        path = store.get("path")
        if not path:
            return store["store"]
        named = store["from"] == f"${store['store']}"  # SSL_CERT_FILE=/its/path
        return f"{store['store']}={path}" if named else f"{store['store']} {path}"

    used = ", ".join(label(s) for s in stores if "problem" not in s)
    failed = "; ".join(f"{label(s)}: {s['problem']}" for s in stores if "problem" in s)
    return f"{used or 'nothing'}" + (f"; not used: {failed}" if failed else "")


def _add_macos_keychains(context) -> dict:
    """The macOS system roots and admin-added CAs, as the keychains hold them."""
    import ssl

    store = {"store": "the macOS system keychains", "from": "security find-certificate"}
    pem = _macos_roots()
    if not pem:
        store["problem"] = "no certificates exported"
        return store
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        store["problem"] = f"cannot use the exported certificates ({exc.reason or exc})"
        _debug("%s", store["problem"])
    return store


def _macos_roots() -> str:
    """PEM certificates from the system keychains, kept in the cache for MACOS_ROOTS_LIFE."""
    directory = cache_dir(create=True)
    path = os.path.join(directory, "macos-roots.pem") if directory else ""
    pem = _fresh_private_text(path, MACOS_ROOTS_LIFE) if path else ""
    if pem:
        return pem
    pem = _export_macos_roots()
    if pem and path:
        try:
            _write_private_file(path, pem.encode("ascii"))
        except OSError as exc:
            _debug("cannot keep the macOS roots in %s: %s", path, exc.strerror or exc)
    return pem


def _fresh_private_text(path: str, life: float) -> str:
    """The text of a private file of ours younger than ``life`` seconds, else ""."""
    try:
        if _now() - os.stat(path, follow_symlinks=False).st_mtime > life:
            return ""
        return read_local_file(path, MAX_MACOS_ROOTS_BYTES, private=True).decode("ascii", "replace")
    except OSError:
        return ""


def _export_macos_roots() -> str:
    import subprocess

    security = _find_executable("security")  # on PATH, never the working directory
    if not security:
        return ""
    argv = [security, "find-certificate", "-a", "-p", *MACOS_KEYCHAINS]
    try:
        done = _run_capped(argv, None, 10.0, MAX_MACOS_ROOTS_BYTES)
    except (OSError, subprocess.TimeoutExpired, _OutputTooLargeError) as exc:
        _debug("cannot export the macOS roots with security: %s", exc)
        return ""
    # A missing keychain makes security fail, yet it still prints the other one.
    pem = done.stdout.decode("ascii", "replace")
    return pem if "-----BEGIN CERTIFICATE-----" in pem else ""


# --- hashing ------------------------------------------------------------------------------


def _short_hash(data: bytes | str) -> str:
    return _sha256(_hashable(data)).hexdigest()[:16]


def _hashable(data: bytes | str) -> bytes:
    """Text as bytes to hash: a lone surrogate (a JSON escape, a non-UTF-8 file name)
    hashes too, so that a source can say what is wrong instead of raising here."""
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data


def _sha256(data: bytes):
    """SHA-256 from Python's own implementation when it has one: on the warm path, loading
    OpenSSL for hashlib costs more (about 3 ms) than everything else a cached token needs."""
    try:
        from _sha2 import sha256  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.9 to 3.11
        except ImportError:  # built without them (some FIPS builds)
            from hashlib import sha256
    return sha256(data)


# ==========================================================================================


# The command line. Everything above serves a lookup and never uses a name below this line.


# ==========================================================================================


PROG = "artifactregistry-gauth"

_EPILOG = """\
examples:
  artifactregistry-gauth doctor
  artifactregistry-gauth token
  UV_INDEX_PRIVATE_PASSWORD=$(artifactregistry-gauth token) uv pip install mypkg
  artifactregistry-gauth get https://us-python.pkg.dev/PROJECT/REPO/simple/ oauth2accesstoken
  artifactregistry-gauth print-settings --location us --project PROJECT --repository REPO
  artifactregistry-gauth netrc us-python.pkg.dev --output ~/.netrc
  artifactregistry-gauth credential-helper get < request.json      # Bazel's protocol
  ln -s "$(command -v artifactregistry-gauth)" ~/.local/bin/keyring   # a keyring for pip/uv

`get` takes keyring's arguments, so a link to this program named `keyring` serves pip's
and uv's --keyring-provider subprocess without the keyring package.
"""


def _parser(command: str | None = None):
    """The command line; with ``command``, only that subcommand's parser is built."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Google access tokens for Artifact Registry Python repositories.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, add_subcommand in SUBCOMMANDS.items():
        if command in (None, name):
            add_subcommand(commands)
    return parser


# What each command's exit status means, for its --help.
EXIT_STATUS = {
    "token": ("the token is printed", "no credentials", "a usage error, or --url is not ours"),
    "get": ("answered", "not ours to answer, or no credentials", "a usage error"),
    "doctor": (
        "a token, and nothing found that will make a configured tool fail",
        "no token, or a setting that will make a tool fail (its fix is printed)",
        "a usage error",
    ),
    "print-settings": ("printed", "", "a usage error"),
    "netrc": ("written", "no credentials, or the file cannot be written", "a bad host or usage"),
    "credential-helper": (
        "answered (an empty {} for a URI that is not ours)",
        "no credentials",
        "a bad request or usage",
    ),
}


def _exit_status(command: str) -> str:
    """The epilog of a command's --help: what each exit code means."""
    meanings = EXIT_STATUS[command]
    return "exit status:\n" + "".join(
        f"  {code}  {meaning}\n" for code, meaning in enumerate(meanings) if meaning
    )


def _add_command(commands, name: str, summary: str, description: str = "", **kwargs):
    """A subcommand's parser: --help says what it does and what its exits mean, and it takes
    -v after its name as well as before."""
    import argparse

    parser = commands.add_parser(
        name,
        help=summary,
        description=description or summary[:1].upper() + summary[1:] + ".",
        epilog=_exit_status(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    if kwargs.get("add_help", True):
        # SUPPRESS: without -v here, the -v given before the command word stands.
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
    return parser


def _add_token(commands) -> None:
    token = _add_command(
        commands,
        "token",
        "print an access token and nothing else",
        "Print a live access token for Artifact Registry (from the cache while it has 15 "
        "minutes left), for tools that take a password: "
        'UV_INDEX_PRIVATE_PASSWORD="$(artifactregistry-gauth token)".',
    )
    token.add_argument("--url", help="the repository URL the token is for (checked, optional)")
    token.add_argument(
        "--json", action="store_true", help='print {"token": ..., "expiry": RFC 3339 UTC or null}'
    )
    token.set_defaults(run=lambda args: _token_command(args.url, args.json))


def _add_get(commands) -> None:
    # Listed for --help only: main() hands `get` to keyring's own command line.
    _add_command(
        commands,
        "get",
        "keyring-compatible: get [--mode password|creds] [--output plain|json] SERVICE [USER]",
        add_help=False,
    )


def _add_doctor(commands) -> None:
    doctor = _add_command(
        commands,
        "doctor",
        "say where this machine stands, and what to fix",
        "Say which credentials answer, what the token cache, keyring and the `keyring` on PATH "
        "see, and what each Artifact Registry URL in pip, uv, twine, poetry, pdm and hatch "
        "configuration will do; print the fix for each problem.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(run=lambda args: _doctor_command(args.json))


def _add_print_settings(commands) -> None:
    tools = "\n".join(f"  {name:<15} {what}" for name, (what, _) in SETTINGS.items())
    settings = _add_command(
        commands,
        "print-settings",
        "print pip, uv, twine, poetry, pdm, hatch, tox, pipenv and pipx settings",
        "Print the settings each tool needs for one Artifact Registry repository, offline:\n"
        "a whole file or command list per tool, to paste as it is. --tool picks one:\n" + tools,
    )
    settings.add_argument(
        "--location", required=True, type=_settings_name("location"), help="e.g. us, europe-west1"
    )
    settings.add_argument(
        "--project", required=True, type=_settings_name("project"), help="Google Cloud project id"
    )
    settings.add_argument(
        "--repository",
        required=True,
        type=_settings_name("repository"),
        help="Artifact Registry repository id",
    )
    settings.add_argument(
        "--tool",
        choices=SETTINGS_TOOLS,
        default="all",
        metavar="TOOL",
        help="one of " + ", ".join(SETTINGS_TOOLS) + " (default: all, one after another)",
    )
    settings.set_defaults(run=_print_settings_command)


def _settings_name(what: str):
    """An argparse type that takes only an Artifact Registry name of this kind."""
    import argparse
    import re

    def checked(value: str) -> str:
        if what == "location":  # only hosts the backend answers for: a typo is no new host
            if not _is_registry_host(f"{value}-python.pkg.dev"):
                raise argparse.ArgumentTypeError(
                    "not an Artifact Registry location (us, europe, asia, or a region such as "
                    "europe-west1)"
                )
        elif not re.fullmatch(_SETTINGS_NAMES[what], value):
            raise argparse.ArgumentTypeError(
                f"not an Artifact Registry {what} id (lower-case letters, digits, hyphens)"
            )
        return value

    checked.__name__ = what
    return checked


def _print_settings_command(args) -> int:
    _write_out(print_settings(args.location, args.project, args.repository, args.tool))
    return 0


def _add_netrc(commands) -> None:
    netrc = _add_command(commands, "netrc", "netrc entries with a token, for tools without keyring")
    netrc.add_argument("hosts", nargs="*", metavar="HOST", help="default: the configured hosts")
    netrc.add_argument("--output", metavar="FILE", help="replace our entries in FILE (0600)")
    netrc.set_defaults(run=_netrc_command)


def _add_credential_helper(commands) -> None:
    import argparse

    helper = _add_command(
        commands,
        "credential-helper",
        "Bazel's credential helper: get",
        "Bazel's credential-helper protocol: `credential-helper get` reads "
        '{"uri": "https://..."} on stdin and prints the Authorization header for it.',
    )
    helper.add_argument("operation", nargs=argparse.REMAINDER, help="get (a JSON request on stdin)")
    helper.set_defaults(run=lambda args: _credential_helper_command(args.operation))


# One function per subcommand adds its parser and sets `run(args) -> exit code`; the
# order here is the order of --help. Only the subcommand asked for is built: argparse
# costs more than a warm `token` itself.
SUBCOMMANDS = {
    "token": _add_token,
    "get": _add_get,
    "doctor": _add_doctor,
    "print-settings": _add_print_settings,
    "netrc": _add_netrc,
    "credential-helper": _add_credential_helper,
}


def _keyring_parser(prog: str):
    """keyring's own command line (keyring/cli.py), of which we serve `get`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} get [--mode password|creds] [--output plain|json] SERVICE [USER]\n"
        f"       {prog} --list-backends",
        description="keyring's `get`: print the token (--mode password, USER oauth2accesstoken)\n"
        "or the username and the token (--mode creds) for an Artifact Registry SERVICE.",
        epilog=_exit_status("get"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-p", "--keyring-path", dest="keyring_path")
    parser.add_argument("-b", "--keyring-backend", dest="keyring_backend")
    parser.add_argument("--list-backends", action="store_true")
    parser.add_argument("--disable", action="store_true")
    parser.add_argument("--mode", choices=("password", "creds"), default="password")
    parser.add_argument("--output", choices=("plain", "json"), default="plain")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("operation", choices=("get", "set", "del", "diagnose"), nargs="?")
    parser.add_argument("service", nargs="?")
    parser.add_argument("username", nargs="?")
    return parser


def main(argv: list | None = None) -> int:
    """The ``artifactregistry-gauth`` command (and ``keyring get`` when named keyring)."""
    if argv is None:
        argv = sys.argv[1:]
    invoked_as = os.path.splitext(os.path.basename(sys.argv[0] or ""))[0]
    if invoked_as == "keyring":
        return _keyring_main(argv, "keyring")
    if _first_word(argv) == "get":
        return _keyring_main(argv, PROG)
    word = _command_word(argv)
    if word == "token" and len(argv) == 1:  # the hot path: nothing for argparse to do
        return _token_command(None, False)
    args = _parser(word).parse_args(argv)
    if args.verbose:
        os.environ["ARTIFACTREGISTRY_GAUTH_DEBUG"] = "1"
    return args.run(args)


def _command_word(argv: list) -> str | None:
    """The subcommand, when nothing before it could ask for the full --help."""
    for arg in argv:
        if arg in SUBCOMMANDS:
            return arg
        if arg not in ("-v", "--verbose"):
            return None
    return None


def _first_word(argv: list) -> str | None:
    """The first argument that is not an option (nor an option's value)."""
    takes_value = {"-p", "--keyring-path", "-b", "--keyring-backend", "--mode", "--output"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _stdout_encodes(text: str) -> bool:
    """Whether stdout can carry ``text``: a Windows console redirected to a file is cp1252,
    and PYTHONIOENCODING=ascii or an old Python's C locale make it ASCII."""
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _write_out(text: str) -> None:
    """Print ``text``; what stdout cannot encode is written as an escape, never a traceback."""
    if not _stdout_encodes(text):
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    sys.stdout.write(text)


def _token_command(url: str | None, as_json: bool) -> int:
    if url is not None and not is_registry_service(url):
        sys.stderr.write(
            f"{PROG}: {_quoted_url(url)} is not an Artifact Registry URL (https://*.pkg.dev/...); "
            "add its host to ARTIFACTREGISTRY_GAUTH_HOSTS if it fronts one\n"
        )
        return 2
    try:
        token = lookup()
    except CredentialError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    if as_json:
        expiry = None if token.expiry is None else _rfc3339(token.expiry)
        sys.stdout.write(_json_text({"token": token.value, "expiry": expiry}) + "\n")
    else:
        sys.stdout.write(token.value + "\n")
    return 0


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _keyring_main(argv: list, prog: str) -> int:
    """Answer keyring's `get` exactly as `keyring get` with this backend would."""
    question = _plain_keyring_get(argv)
    if question is None:
        question = _parse_keyring_command(argv, prog)
        if isinstance(question, int):
            return question
    mode, output, service, username = question
    if not answers_for(service, username):
        return 1
    try:
        token = get_token()
    except CredentialError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    if mode == "creds":
        fields = {"username": USERNAME, "password": token}
    else:
        fields = {"password": token}
    if output == "json":
        import json

        sys.stdout.write(json.dumps(fields) + "\n")
    else:
        sys.stdout.write("".join(value + "\n" for value in fields.values()))
    return 0


def _plain_keyring_get(argv: list) -> tuple | None:
    """(mode, output, service, username) of a plain keyring `get SERVICE [USER]`.

    The forms pip and uv send (``--mode``/``--output``, spelled with a space or ``=``,
    before, between or after the words), read without argparse: it costs more than the answer.
    None for anything else, which keyring's own parser then reads.
    """
    options = {"--mode": "password", "--output": "plain"}
    choices = {"--mode": ("password", "creds"), "--output": ("plain", "json")}
    words: list = []
    arguments = iter(argv)
    for arg in arguments:
        name, equals, value = arg.partition("=")
        if name in options:
            if not equals:
                value = next(arguments, None)
            if value not in choices[name]:
                return None
            options[name] = value
        elif arg.startswith("-"):
            return None
        else:
            words.append(arg)
    mode = options["--mode"]
    if not 2 <= len(words) <= 3 or words[0] != "get" or (mode == "password" and len(words) < 3):
        return None
    return mode, options["--output"], words[1], words[2] if len(words) == 3 else None


def _parse_keyring_command(argv: list, prog: str) -> tuple | int:
    """keyring's command line read by argparse: the question, or an exit code."""
    parser = _keyring_parser(prog)
    # Intermixed: `get --mode creds SERVICE` as well as `--mode creds get SERVICE`.
    args = parser.parse_intermixed_args(argv)
    if args.verbose:
        os.environ["ARTIFACTREGISTRY_GAUTH_DEBUG"] = "1"
    if args.list_backends:
        sys.stdout.write("artifactregistry_gauth.GooglePyPIAuth (priority: 9)\n")
        return 0
    if args.disable or args.operation != "get":
        what = "--disable" if args.disable else args.operation or "no operation"
        parser.error(
            f"only get (and --list-backends) is supported by {PROG}, not {what}; "
            "install the keyring package for the others"
        )
    if args.service is None or (args.mode == "password" and args.username is None):
        required = "service" if args.mode == "creds" else "service and username"
        parser.error(f"get requires {required}")
    return args.mode, args.output, args.service, args.username


# --- print-settings -----------------------------------------------------------------------


# Each tool's settings for one repository, as a file or a command list to paste whole:
# `print-settings` prints them and docs/tools.md shows them (a test keeps the two equal, and
# runs each through its tool). Placeholders: {index}, {user_index} (with the username),
# {upload}, {repository}, {user}; {{ }} are literal braces.
_ONLY_INDEX = """\
# Make {repository} the only index, a virtual repository with PyPI as its upstream: with an
# extra index beside PyPI, a package on PyPI with a private package's name and a higher
# version wins (dependency confusion).
"""
_KEYRING_ON_PATH = """\
# It runs the `keyring` on PATH: keyring 25.2.1+ with artifactregistry-gauth injected
# (pipx install keyring; pipx inject keyring /path/to/artifactregistry-gauth, a clone,
# until it is on PyPI), or a link named keyring to the artifactregistry-gauth command.
"""
SETTINGS = {
    "pip": (
        "pip.conf, keyring imported by pip",
        """\
# pip.conf (pip config edit --user, or PIP_CONFIG_FILE): pip imports keyring, with
# artifactregistry-gauth installed beside pip.
"""
        + _ONLY_INDEX
        + """\
[global]
index-url = {index}
keyring-provider = import
""",
    ),
    "pip-subprocess": (
        "pip.conf, keyring run by pip",
        """\
# pip.conf (pip config edit --user, or PIP_CONFIG_FILE) for pip's subprocess provider.
"""
        + _KEYRING_ON_PATH
        + """\
# The username in the URL lets pip before 26.2 ask keyring too.
"""
        + _ONLY_INDEX
        + """\
[global]
index-url = {user_index}
keyring-provider = subprocess
""",
    ),
    "uv": (
        "uv.toml",
        """\
# uv.toml (~/.config/uv/uv.toml, or beside pyproject.toml). uv asks keyring with
# authenticate = "always" (or a username) and keyring-provider = "subprocess".
"""
        + _KEYRING_ON_PATH
        + _ONLY_INDEX
        + """\
# In a project, pin the private packages instead: see print-settings --tool uv-pyproject.
# Publish: uv publish --index {repository} --username {user}
keyring-provider = "subprocess"

[[index]]
name = "{repository}"
url = "{index}"
publish-url = "{upload}"
default = true
authenticate = "always"
""",
    ),
    "uv-pyproject": (
        "pyproject.toml for uv",
        """\
# pyproject.toml, added to your project's. uv asks keyring with authenticate = "always".
"""
        + _KEYRING_ON_PATH
        + """\
# explicit = true: only the packages named in [tool.uv.sources] come from {repository},
# and PyPI can never serve a package in their place (no dependency confusion).
# Publish: uv publish --index {repository} --username {user}
[tool.uv]
keyring-provider = "subprocess"

[[tool.uv.index]]
name = "{repository}"
url = "{index}"
publish-url = "{upload}"
explicit = true
authenticate = "always"

[tool.uv.sources]
# one line for each private package:
# mypackage = {{ index = "{repository}" }}
""",
    ),
    "twine": (
        "~/.pypirc",
        """\
# ~/.pypirc: twine upload -r {repository} dist/*. twine asks keyring for the password, with
# artifactregistry-gauth installed beside twine (pipx inject twine
# /path/to/artifactregistry-gauth, a clone, until it is on PyPI).
[distutils]
index-servers =
    {repository}

[{repository}]
repository = {upload}
username = {user}
""",
    ),
    "poetry": (
        "poetry commands",
        """\
# poetry, in your project. artifactregistry-gauth goes into poetry's own environment:
# poetry self add /path/to/artifactregistry-gauth (a clone, until it is on PyPI).
# No http-basic setting: poetry asks keyring for the source's URL, and the backend
# answers the username and the token (`poetry config http-basic.{repository} {user}`
# without a password would make poetry prompt for one).
# --priority=primary replaces PyPI: make {repository} a virtual repository with PyPI as its
# upstream, or add it with --priority=explicit and name it in each private dependency.
poetry source add --priority=primary {repository} {index}
poetry config repositories.{repository} {upload}
# Then: poetry install; poetry publish --repository {repository}
""",
    ),
    "pdm": (
        "pyproject.toml for pdm",
        """\
# pyproject.toml, added to your project's. pdm asks keyring, with keyring and
# artifactregistry-gauth in pdm's own environment (pdm self add keyring
# /path/to/artifactregistry-gauth, a clone, until it is on PyPI).
# pdm keeps PyPI beside this source: to avoid dependency confusion, list your private
# packages in include_packages = ["mypackage"], or name the source "pypi" to replace PyPI
# (a virtual repository with PyPI as its upstream).
# Publish: pdm publish -r {upload} -u {user}
[[tool.pdm.source]]
name = "{repository}"
url = "{index}"
""",
    ),
    "hatch": (
        "hatch config.toml",
        """\
# hatch's config.toml (hatch config find): hatch publish -r {repository}. hatch asks
# keyring for the password, with artifactregistry-gauth beside hatch (pipx inject hatch
# /path/to/artifactregistry-gauth, a clone, until it is on PyPI).
[publish.index.repos.{repository}]
url = "{upload}"
user = "{user}"
""",
    ),
    "tox": (
        "tox.ini",
        """\
# tox.ini: pip in each test environment uses its subprocess provider.
"""
        + _KEYRING_ON_PATH
        + """\
# Once artifactregistry-gauth is on PyPI, tox can provision it: requires = artifactregistry-gauth
"""
        + _ONLY_INDEX
        + """\
[testenv]
set_env =
    PIP_INDEX_URL = {user_index}
    PIP_KEYRING_PROVIDER = subprocess
pass_env = GOOGLE_APPLICATION_CREDENTIALS
""",
    ),
    "pipenv": (
        "Pipfile",
        """\
# Pipfile: pipenv runs its own pip, whose subprocess provider needs
# export PIP_KEYRING_PROVIDER=subprocess
"""
        + _KEYRING_ON_PATH
        + _ONLY_INDEX
        + """\
[[source]]
name = "{repository}"
url = "{index}"
verify_ssl = true

[packages]
# mypackage = "*"
""",
    ),
    "pipx": (
        "pipx commands",
        """\
# pipx runs pip with its subprocess provider.
"""
        + _KEYRING_ON_PATH
        + """\
# {repository} must serve pip too (pipx installs it from the index): a virtual repository
# with PyPI as its upstream. The username in the URL serves the older pip pipx runs first.
export PIP_INDEX_URL={user_index}
# Then: pipx install mypackage
""",
    ),
}
SETTINGS_TOOLS = (*SETTINGS, "all")
# Artifact Registry's names: a project id (optionally domain-scoped) and a repository id;
# anything else would be pasted into a configuration file as it is. A location is taken
# only where the host policy answers for its host (_is_registry_host).
_SETTINGS_NAMES = {
    "project": r"([a-z][a-z0-9.-]{0,62}:)?[a-z]([a-z0-9-]{0,61}[a-z0-9])?",
    "repository": r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?",
}


def print_settings(location: str, project: str, repository: str, tool: str = "all") -> str:
    """Configuration for one repository, offline (no API call): one tool's, or every tool's."""
    host = f"{location}-python.pkg.dev"
    upload = f"https://{host}/{project}/{repository}/"
    values = {
        "index": f"{upload}simple/",
        "user_index": f"https://{USERNAME}@{host}/{project}/{repository}/simple/",
        "upload": upload,
        "repository": repository,
        "user": USERNAME,
    }
    if tool != "all":
        return SETTINGS[tool][1].format(**values)
    # One file after another, each under a line that says which it is.
    return "\n".join(
        f"# ===== {name}: {what} =====\n" + text.format(**values)
        for name, (what, text) in SETTINGS.items()
    )


# --- doctor -------------------------------------------------------------------------------


def _doctor_command(as_json: bool) -> int:
    report = diagnose()
    if as_json:
        import json

        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _write_out(_format_report(report))
    return 0 if report["token"]["ok"] and not report["problems"] else 1


def diagnose() -> dict:
    """Everything `doctor` says, as data: never a token or another secret."""
    steps: list = []
    token_info: dict = {"ok": False}
    try:
        token = lookup(report=steps)
    except CredentialError as exc:
        token_info["error"] = str(exc)
    else:
        left = token.seconds_left()
        token_info.update(
            ok=True,
            source=token.source,
            expires_in_minutes=None if left is None else int(left // 60),
        )
    answered = {step["source"] for step in steps}
    for label, _ in DISCOVERY:
        if label not in answered:
            steps.append(
                {"source": label, "status": "not consulted", "detail": "an earlier source decided"}
            )
    for step in steps:
        step.pop("token", None)
    report = {
        "version": __version__,
        "python": sys.version.split()[0],
        "sources": steps,
        "token": token_info,
        "cache": _cache_report(),
        "tls": [dict(store) for store in _tls_context()[1]],
        "keyring": _keyring_report(),
        "keyring_executable": _keyring_executable_report(),
        "index_urls": _index_url_report(),
    }
    report["warnings"] = _warnings(report)
    report["problems"] = _problems(report)
    return report


def _problems(report: dict) -> list:
    """What will make a configured tool fail, each with its fix: doctor then exits 1."""
    found = [
        f"{entry['url']} ({entry['where']}): {entry['verdict']}"
        for entry in report["index_urls"]
        if entry.get("fails")
    ]
    for what, where in (("keyring", "in"), ("keyring_executable", "behind `keyring` at")):
        place = report[what].get("python" if what == "keyring" else "path")
        for rival in report[what].get("rivals", []):
            when = {
                "before": "before artifactregistry-gauth",
                "after": "after artifactregistry-gauth (for any host ours does not answer)",
                "either": "before or after artifactregistry-gauth, in an order that changes "
                "from one process to the next (the same priority)",
            }[rival["asked"]]
            found.append(
                f"{rival['backend']} ({where} {place}) also answers for *.pkg.dev and keyring "
                f"asks it {when}: when it finds no credentials it raises, and keyring gives "
                "up; remove it: " + rival["fix"]
            )
    return found


def _cache_report() -> dict:
    if os.environ.get("ARTIFACTREGISTRY_GAUTH_NO_CACHE", "") not in ("", "0"):
        return {"state": "off (ARTIFACTREGISTRY_GAUTH_NO_CACHE)"}
    directory = os.environ.get("ARTIFACTREGISTRY_GAUTH_CACHE_DIR") or _default_cache_dir()
    usable = cache_dir()
    if usable is None:
        state = "absent" if not os.path.exists(directory) else "unusable (not a directory of ours)"
        return {"directory": directory, "state": state}
    entries = [name for name in os.listdir(usable) if name.endswith(TOKEN_FILE_SUFFIX)]
    return {"directory": directory, "state": "on", "entries": len(entries)}


def _keyring_report() -> dict:
    try:
        import keyring
        import keyring.backend
    except ImportError:
        return {"importable": False, "detail": "keyring is not installed in this Python"}
    try:
        backends = [str(b) for b in keyring.backend.get_all_keyring()]
        chosen = keyring.get_keyring()
        # The chainer asks its backends in this order; a backend chosen alone is asked alone.
        asked = [str(b) for b in getattr(chosen, "backends", [chosen])]
    except Exception as exc:  # keyringrc.cfg can make keyring raise anything at all
        return {"importable": True, "lists_backend": False, "error": f"keyring fails: {exc}"}
    listed = any(b.startswith(_OUR_BACKEND + " ") for b in backends)
    return {
        "importable": True,
        "version": getattr(keyring, "__version__", "") or _distribution_version("keyring"),
        "lists_backend": listed,
        "chosen": str(chosen),
        "python": sys.executable,
        "rivals": _rivals(asked, sys.executable),
    }


_OUR_BACKEND = "artifactregistry_gauth.GooglePyPIAuth"
OFFICIAL_PLUGIN = "keyrings.google-artifactregistry-auth"


def _rivals(listed: list, python: str) -> list:
    """Other backends that answer for *.pkg.dev, each with when keyring asks it (before
    ours, after, or either) and how to remove it.

    ``listed`` holds keyring's "module.Class (priority: N)" lines. keyring asks the highest
    priority first; backends of equal priority come out of a set of classes (keyring.backend,
    KeyringBackend._classes), so their order changes from one process to the next. The
    official plugin raises when it finds no credentials, and keyring's chainer does not
    catch it: asked before ours, it fails the lookup; after, it fails every other host's.
    """
    import re

    found = {}
    for line in listed:
        match = re.fullmatch(r"(\S+) \(priority: (-?[0-9.]+(?:e-?[0-9]+)?)\)", line.strip())
        if match and not match.group(1).endswith("ChainerBackend"):
            found[match.group(1)] = float(match.group(2))
    ours = found.get(_OUR_BACKEND, float("-inf"))  # not listed: never asked
    return [
        {
            "backend": name,
            "asked": "before" if priority > ours else "after" if priority < ours else "either",
            "fix": _rival_fix(name, python),
        }
        for name, priority in found.items()
        if name != _OUR_BACKEND
        and (name.startswith("keyrings.gauth.") or "artifactregistry" in name.lower())
    ]


def _rival_fix(backend: str, python: str) -> str:
    """The command that removes a rival backend from the environment of ``python``."""
    if not backend.startswith("keyrings.gauth."):
        return f"uninstall the package that provides {backend} from {python}'s environment"
    if f"{os.sep}pipx{os.sep}" in python:
        return f"pipx uninject keyring {OFFICIAL_PLUGIN}"
    return f"{python} -m pip uninstall {OFFICIAL_PLUGIN}"


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _keyring_executable_report() -> dict:
    """The `keyring` that pip's and uv's subprocess providers would run, and what it sees."""
    import subprocess

    executable = _find_executable("keyring")
    if executable is None:
        return {"path": None, "detail": "no keyring on PATH: subprocess providers are off"}
    try:
        done = subprocess.run(
            [executable, "--list-backends"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"path": executable, "sees_backend": False, "detail": f"cannot run it ({exc})"}
    sees = b"GooglePyPIAuth" in done.stdout
    real = os.path.realpath(executable)
    python = os.path.join(os.path.dirname(real), "python.exe" if os.name == "nt" else "python")
    listed = done.stdout.decode("utf-8", "replace").splitlines()
    # pip's subprocess provider skips a keyring in its own environment's scripts folder.
    here = os.path.dirname(os.path.abspath(executable)) == os.path.dirname(sys.executable)
    return {
        "path": executable,
        "sees_backend": sees,
        "in_this_environment": here,
        "version": _keyring_version_beside(executable),
        "in_scripts_of_pip": _pip_sharing_scripts_with(executable),
        "rivals": _rivals(listed, python),
    }


def _keyring_version_beside(executable: str) -> str:
    """The keyring version installed in the environment of a `keyring` script ("" if none)."""
    import glob

    real = os.path.realpath(executable)
    if os.path.splitext(os.path.basename(real))[0] != "keyring":
        return ""  # a link to another program (ours) answers in its own way
    root = os.path.dirname(os.path.dirname(real))
    patterns = ("lib/python*/site-packages", "Lib/site-packages", "lib/site-packages")
    for pattern in patterns:
        for found in glob.glob(os.path.join(glob.escape(root), pattern, "keyring-*.dist-info")):
            return os.path.basename(found)[len("keyring-") : -len(".dist-info")]
    return ""


def _pip_sharing_scripts_with(executable: str) -> str:
    """A pip whose scripts directory holds this `keyring`: its subprocess provider skips it."""
    import shutil

    folder = os.path.dirname(os.path.abspath(executable))
    pips = [
        shutil.which("pip"),
        shutil.which("pip3"),
        os.path.join(os.path.dirname(sys.executable), "pip"),
    ]
    for pip in pips:
        try:
            if pip and os.path.samefile(os.path.dirname(pip), folder):
                return pip
        except OSError:
            continue
    return ""


def _same_directory(pip: str) -> bool:
    """Whether this pip is the one of the Python running doctor."""
    try:
        return os.path.samefile(os.path.dirname(pip), os.path.dirname(sys.executable))
    except OSError:
        return False


def _warnings(report: dict) -> list:
    """Settings that keep a tool from asking keyring, or make keyring fail."""
    found = []
    for what, where in (("keyring", "python"), ("keyring_executable", "path")):
        if report[what].get("version") == "25.4.0":
            found.append(
                f"keyring 25.4.0 ({report[what][where]}): its command line fails with "
                '"Anonymous credential has no username"; upgrade: pip install -U keyring'
            )
    pip = report["keyring_executable"].get("in_scripts_of_pip")
    # This environment's pip imports the keyring beside it, unless told to run it instead.
    imports = bool(pip) and report["keyring"].get("lists_backend") and _same_directory(pip)
    if pip and (not imports or _pip_setting("keyring-provider", "auto") == "subprocess"):
        found.append(
            f"`keyring` ({report['keyring_executable']['path']}) sits in the scripts directory "
            f"of {pip}, whose subprocess provider skips it: install it elsewhere on PATH "
            "(pipx install keyring && pipx inject keyring artifactregistry-gauth)"
        )
    for entry in report["index_urls"]:
        if entry.get("extra_index"):
            found.append(
                f"{entry['url']} ({entry['where']}) is an extra index beside PyPI: a package on "
                "PyPI with a private package's name and a higher version wins (dependency "
                "confusion); make the repository a virtual repository with PyPI as its upstream "
                "and use it as the index-url, or with uv pin private packages to an index with "
                "explicit = true and [tool.uv.sources]"
            )
    if _pip_setting("no-input", "") and _pip_setting("keyring-provider", "auto") == "auto":
        found.append(
            "pip's no-input (PIP_NO_INPUT or pip.conf) with the default keyring provider "
            "`auto` never asks keyring: set PIP_KEYRING_PROVIDER=import (keyring beside pip) "
            "or subprocess"
        )
    return found


_TRUE = ("1", "y", "yes", "t", "true", "on")


def _pip_setting(name: str, default: str) -> str:
    """A pip option from PIP_* or pip's configuration files, as pip reads it."""
    value = pip_option(name)[0].strip()
    if not value:
        return default
    if name == "no-input":
        return "yes" if value.lower() in _TRUE else ""
    return value.lower()


# A configuration file is read up to this size: a pyproject.toml may come from an untrusted
# checkout, and doctor must answer in bounded time whatever it holds.
MAX_CONFIG_BYTES = 1 << 20
MAX_REPORTED_URLS = 50
# Linear by construction: one character class under one star, and a lookahead of fixed
# length, so each character is looked at a bounded number of times; a URL ends where the
# next one starts (URLs are separated by a comma or nothing at all in some files).
_URL_PATTERN = r"https?://(?:(?!https?://)[^\s\"'<>\[\]{}|^`])*"
# Variables that hold URLs, the tool that reads them and the variable holding its username.
_URL_VARIABLES = (
    ("PIP_INDEX_URL", "pip", ""),
    ("PIP_EXTRA_INDEX_URL", "pip", ""),
    ("UV_INDEX_URL", "uv", ""),
    ("UV_EXTRA_INDEX_URL", "uv", ""),
    ("UV_DEFAULT_INDEX", "uv", ""),
    ("UV_INDEX", "uv", ""),
    ("UV_PUBLISH_URL", "uv publish", "UV_PUBLISH_USERNAME"),
    ("TWINE_REPOSITORY_URL", "twine", "TWINE_USERNAME"),
    ("HATCH_INDEX_REPO", "hatch", "HATCH_INDEX_USER"),
    ("PDM_PUBLISH_REPO", "pdm", "PDM_PUBLISH_USERNAME"),
)
# Tools that need the username typed: PyPI's habit (__token__) does not work here.
_USERNAME_FIX = (
    f"Artifact Registry takes only {USERNAME} with a Google token, and "
    "artifactregistry-gauth answers only for it"
)


def _urls_in(text: str) -> list:
    """Every http(s) URL in ``text``, in order, in time linear in its length."""
    import re

    return [m.group().rstrip(",;)") for m in re.finditer(_URL_PATTERN, text, re.IGNORECASE)]


def _registry_url_parts(url: str):
    """``urlsplit(url)`` if its host is Artifact Registry's (or ours to answer), else None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - a malformed port raises ValueError here
    except ValueError:
        return None
    if host and _is_token_destination(host):
        return parts
    return None


def _read_config(path: str) -> str | None:
    """A configuration file's text (regular, at most MAX_CONFIG_BYTES); None for anything else."""
    try:
        return read_local_file(path, MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None


def _setting_value(raw: str) -> str:
    """An INI or TOML value without its quotes and trailing comment."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        return raw[1:].split(raw[0], 1)[0]
    return raw.split(" #", 1)[0].strip()


def _config_sections(text: str) -> list:
    """Each [section] of an INI or TOML file: its name, `key = value` settings and URLs."""
    sections = [{"name": "", "settings": {}, "urls": []}]
    key = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("["):
            name = stripped.lstrip("[").split("]", 1)[0].strip().strip('"')
            sections.append({"name": name, "settings": {}, "urls": []})
            key = ""
            continue
        name, sep, value = stripped.partition("=")
        if sep and name.strip() and not name.lstrip().lower().startswith(("http:", "https:")):
            key = name.strip().strip("\"'").lower()
            sections[-1]["settings"][key] = _setting_value(value)
        sections[-1]["urls"].extend((key, url) for url in _urls_in(stripped))
    return sections


def _configured_urls():
    """(URL, where, tool, settings of its section, key) for every URL in the configuration."""
    for name, tool, user_variable in _URL_VARIABLES:
        value = os.environ.get(name, "")[:MAX_CONFIG_BYTES]
        settings = {}
        if user_variable:
            settings = {"username": os.environ.get(user_variable, ""), "variable": user_variable}
        for url in _urls_in(value):
            yield url, f"${name}", tool, settings, name.lower()
    for path, tool in _config_files():
        text = _read_config(path)
        if text is None:
            continue
        sections = _config_sections(text)
        # uv's keyring-provider sits at the top of uv.toml, or in [tool.uv] of pyproject.toml.
        provider = [
            section["settings"]["keyring-provider"]
            for section in sections
            if section["name"] in ("", "tool.uv") and "keyring-provider" in section["settings"]
        ]
        for section in sections:
            section_tool = _section_tool(tool, section["name"])
            settings = dict(section["settings"], section=section["name"])
            if provider:
                settings["uv keyring-provider"] = provider[-1]
            for key, url in section["urls"]:
                yield url, path, section_tool, settings, key


def _section_tool(tool: str, section: str) -> str:
    """Which tool reads a section of pyproject.toml (the file's own tool elsewhere)."""
    if tool != "pyproject":
        return tool
    for prefix, name in (("tool.uv", "uv"), ("tool.poetry", "poetry"), ("tool.pdm", "pdm")):
        if section.startswith(prefix):
            return name
    return "hatch" if section.startswith("tool.hatch") else "pyproject"


def _index_url_report() -> list:
    """Artifact Registry URLs in the tools' configuration, and whether keyring will be asked."""
    found = []
    any_host = bool(os.environ.get("ARTIFACTREGISTRY_GAUTH_HOSTS"))
    for url, where, tool, settings, key in _configured_urls():
        if not any_host and ".pkg.dev" not in url.lower():
            continue  # most URLs in a file are not ours: no need to split them
        parts = _registry_url_parts(url)
        if parts is not None:
            found.append(_judge_url(parts, url, where, tool, settings, key))
            if len(found) == MAX_REPORTED_URLS:
                break
    return found


def _config_files() -> list:
    home = os.path.expanduser("~")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    candidates = [(path, "pip") for path in pip_config_files()]
    candidates += [
        (os.path.join(config, "uv", "uv.toml"), "uv"),
        ("uv.toml", "uv"),
        ("pyproject.toml", "pyproject"),
        (os.path.join(home, ".pypirc"), "twine"),
        (os.path.join(config, "hatch", "config.toml"), "hatch"),
        (os.path.join(config, "pdm", "config.toml"), "pdm"),
    ]
    if os.name == "nt":
        appdata = os.environ.get("APPDATA", "")
        candidates.append((os.path.join(appdata, "uv", "uv.toml"), "uv"))
    return [(path, tool) for path, tool in candidates if path and os.path.isfile(path)]


def _judge_url(parts, url: str, where: str, tool: str, settings: dict, key: str) -> dict:
    """What the tool reading this Artifact Registry URL will do with it."""
    ok, verdict = _url_verdict(parts, url, tool, settings, key)
    return {
        "url": _quoted_url(parts.geturl()),
        "where": where,
        "tool": tool,
        "ok": ok,
        "verdict": verdict,
        # The tool will send this username and fail: doctor exits 1.
        "fails": not ok and _USERNAME_FIX in verdict,
        "extra_index": key.replace("_", "-").endswith("extra-index-url"),
    }


def _url_verdict(parts, url: str, tool: str, settings: dict, key: str) -> tuple:
    """(whether the tool will get a token, and the sentence saying so or what to change)."""
    user = parts.username
    configured_user = settings.get("username") or settings.get("user") or ""
    if parts.password is not None:
        return False, "carries its own credentials in the URL: keyring is never asked"
    if parts.scheme.lower() != "https" or not is_registry_service(url):
        return False, (
            "artifactregistry-gauth never answers for this URL: use https:// and a plain host "
            "(no backslash, percent sign, space or password in it)"
        )
    if user not in (None, USERNAME):
        hostport = parts.netloc.rpartition("@")[2]
        fixed = _quoted_url(parts._replace(netloc=f"{USERNAME}@{hostport}").geturl())
        return False, _wrong_username(user, f"write {fixed} instead")
    if configured_user not in ("", USERNAME):
        return False, _wrong_username(configured_user, _username_setting_fix(settings))
    if tool == "twine" and "password" in settings:
        return False, "a password is stored beside it: keyring is never asked"
    if tool == "uv":
        return _judge_uv_index(user, settings, key)
    return True, _tool_verdict(tool, user or configured_user)


def _wrong_username(user: str, fix: str) -> str:
    named = "__token__ (PyPI's)" if user == "__token__" else "not " + USERNAME
    return f"the username is {named}: {_USERNAME_FIX}; {fix}"


def _username_setting_fix(settings: dict) -> str:
    """Where to write the right username: the variable, or the file's own key."""
    if settings.get("variable"):
        return f"set {settings['variable']}={USERNAME}"
    key = "username" if settings.get("username") else "user"
    return f"set {key} to {USERNAME}"


def _judge_uv_index(user: str | None, settings: dict, key: str) -> tuple:
    """uv asks keyring only with a username, or with authenticate = "always"."""
    if key == "publish-url":
        return True, f"uv publish asks keyring with --username {USERNAME} (not __token__)"
    name = settings.get("name", "")
    variable = "UV_INDEX_" + "".join(c if c.isalnum() else "_" for c in name.upper())
    variable += "_USERNAME"
    env_user = os.environ.get(variable, "") if name else ""
    if env_user not in ("", USERNAME):
        return False, f"${variable}: {_wrong_username(env_user, f'set {variable}={USERNAME}')}"
    provider = _uv_provider_advice(settings)
    if user == USERNAME or env_user == USERNAME:
        return True, f"uv asks keyring (it knows the username){provider}"
    if settings.get("authenticate") == "always":
        return True, (
            'uv asks keyring without a username (authenticate = "always"): needs '
            f"keyring >= 25.2.1 or the keyring link{provider}"
        )
    hint = f"set {variable}={USERNAME}, or " if name else ""
    return False, (
        f'uv will not ask keyring: {hint}add authenticate = "always" to the index, or put '
        f"{USERNAME}@ in the URL{provider}"
    )


def _uv_provider_advice(settings: dict) -> str:
    """The keyring-provider advice uv needs, or nothing when it is already set."""
    provider = os.environ.get("UV_KEYRING_PROVIDER") or settings.get("uv keyring-provider")
    if (provider or "").strip().lower() == "subprocess":
        return ""
    return '; and set UV_KEYRING_PROVIDER=subprocess (or keyring-provider = "subprocess")'


def _tool_verdict(tool: str, user: str | None) -> str:
    if tool == "twine":
        return "twine asks keyring for the password (and the username if none is set)"
    if tool in ("hatch", "pdm", "uv publish"):
        return f"{tool} asks keyring; give the username {USERNAME}, not __token__"
    if tool == "poetry":
        return "poetry asks keyring (the backend must be in poetry's own environment)"
    if tool == "pyproject":
        return "found in pyproject.toml"
    if user == USERNAME:
        return "pip asks keyring (import or subprocess provider)"
    version = _distribution_version("pip")
    if version and _version_tuple(version) >= (26, 2):
        return f"pip {version} asks keyring (import provider, or subprocess with keyring 25.2.1+)"
    which = f"pip {version} here" if version else "pip before 26.2"
    return (
        "pip asks keyring with --keyring-provider import (or auto); for its subprocess "
        f"provider, {which} needs {USERNAME}@ in the URL"
    )


def _version_tuple(version: str) -> tuple:
    """(26, 2) from "26.2.1" or "26.2rc1": the numbers a comparison needs."""
    import re

    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


_REPORT_MARKS = {"answered": "✔", "failed": "✘", "skipped": "-", "not consulted": " "}
_ASCII_MARKS = {"answered": "+", "failed": "x", "skipped": "-", "not consulted": " "}


def _format_report(report: dict) -> str:
    lines = [f"{PROG} {report['version']} on Python {report['python']}", "", "Credentials:"]
    marks = _REPORT_MARKS if _stdout_encodes("".join(_REPORT_MARKS.values())) else _ASCII_MARKS
    for step in report["sources"]:
        mark = marks.get(step["status"], "?")
        lines.append(f"  {mark} {step['source']}: {step['status']}: {step['detail']}")
        if step.get("how") and step["source"] != "GOOGLE_OAUTH_ACCESS_TOKEN":  # given, not fetched
            lines[-1] += f" ({'from the cache' if step['how'] == 'cache' else 'fetched now'})"
    token = report["token"]
    if token["ok"]:
        left = token["expires_in_minutes"]
        life = "unknown expiry" if left is None else f"expires in {left} min"
        lines.append(f"  token: OK from {token['source']}, {life}")
    else:
        lines.append(f"  token: NONE: {token['error']}")
    cache = report["cache"]
    lines += [
        "",
        f"Token cache: {cache['state']}"
        + (f" in {cache['directory']}" if cache.get("directory") else ""),
    ]
    if "entries" in cache:
        lines[-1] += f" ({cache['entries']} token{'' if cache['entries'] == 1 else 's'})"
    lines += _format_tls(report["tls"], marks["answered"])
    ring = report["keyring"]
    lines += ["", "keyring:"]
    if not ring["importable"]:
        lines.append(f"  not importable from {sys.executable}: pip's import provider is off")
    else:
        seen = "lists GooglePyPIAuth" if ring["lists_backend"] else "does NOT list GooglePyPIAuth"
        if "error" in ring:
            lines.append(f"  {ring['error']}")
        else:
            lines.append(f"  keyring {ring['version']} in {ring['python']}: {seen}")
            lines.append(f"  it would use: {ring['chosen']}")
    exe = report["keyring_executable"]
    if exe["path"] is None:
        lines.append(f"  {exe['detail']}")
    else:
        sees = "sees GooglePyPIAuth" if exe.get("sees_backend") else "does NOT see GooglePyPIAuth"
        lines.append(f"  `keyring` on PATH (pip/uv subprocess providers): {exe['path']}: {sees}")
    lines += ["", "Artifact Registry URLs in configuration:"]
    for entry in report["index_urls"] or []:
        mark = marks["answered"] if entry["ok"] else "!"
        lines.append(f"  {mark} {entry['url']} ({entry['where']}): {entry['verdict']}")
    if not report["index_urls"]:
        lines.append(
            "  none found (pip.conf, PIP_*/UV_*/TWINE_* variables, uv.toml, pyproject.toml, "
            ".pypirc, hatch and pdm config.toml)"
        )
    if report["warnings"]:
        lines += ["", "Warnings:"] + [f"  ! {warning}" for warning in report["warnings"]]
    if report["problems"]:
        lines += ["", "Will fail:"] + [f"  {marks['failed']} {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"


def _format_tls(stores: list, mark: str) -> list:
    """doctor's lines for the TLS stores: each one, where it came from, and why it is unused."""
    lines = ["", "TLS trusts the union of:"]
    for store in stores:
        path = f" {store['path']}" if store.get("path") else ""
        problem = f": NOT USED: {store['problem']}" if "problem" in store else ""
        lines.append(
            f"  {'!' if problem else mark} {store['store']}{path} ({store['from']}){problem}"
        )
    return lines


# --- netrc --------------------------------------------------------------------------------


# A netrc file larger than this is refused rather than rewritten.
MAX_NETRC_BYTES = 1 << 20
# curl reads a netrc line into 4096 bytes and skips a longer line whole.
MAX_NETRC_LINE = 4000
# How long a netrc run waits for another one writing the same file.
NETRC_LOCK_WAIT = 10.0
# Google tokens are base64url-like text; whatever would split or quote a netrc token is refused.
_NETRC_SAFE = r"[A-Za-z0-9_.~+/=-]+"


class _CommandError(Exception):
    """A command refused or failed: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _netrc_command(args) -> int:
    """`netrc [HOST...] [--output FILE]`: netrc entries with a live token."""
    try:
        hosts = _netrc_hosts(args.hosts)
        token = get_token()
        _check_netrc_token(token)
        entries = "".join(f"machine {h} login {USERNAME} password {token}\n" for h in hosts)
        if args.output is None:
            sys.stdout.write(entries)
            return 0
        _write_netrc(args.output, hosts, entries.encode("ascii"))
    except _CommandError as exc:
        sys.stderr.write(f"{PROG} netrc: {exc}\n")
        return exc.code
    except CredentialError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    sys.stderr.write(f"{PROG}: wrote {', '.join(hosts)} to {args.output}\n")
    return 0


def _netrc_hosts(given: list) -> list:
    """The hostnames to write: those given (each one we answer for), else the configured ones."""
    if not given:
        hosts = _configured_registry_hosts()
        if not hosts:
            raise _CommandError(
                "no host given and no Artifact Registry URL found in pip, uv, twine, hatch or "
                "pdm configuration: name the hosts, e.g. `netrc us-python.pkg.dev`",
                2,
            )
        return hosts
    hosts: list = []
    for item in given:
        host = _netrc_host(item)
        if host not in hosts:
            hosts.append(host)
    return hosts


def _netrc_host(item: str) -> str:
    """The hostname of a host, host:port or URL we answer for; never one we do not."""
    url = item if "://" in item else f"https://{item}"  # a machine is where the token goes
    host = service_host(url) if is_registry_service(url) else None
    if host is None:
        shown = repr(item) if "@" not in item and len(item) < 200 else "a host argument"
        raise _CommandError(
            f"{shown} is not an Artifact Registry host (*.pkg.dev, https): no token is "
            "written for it; add a proxy's host to ARTIFACTREGISTRY_GAUTH_HOSTS",
            2,
        )
    return host


def _configured_registry_hosts() -> list:
    """Hostnames of the Artifact Registry URLs that doctor finds, in order, once each."""
    hosts: list = []
    for url, *_ in _configured_urls():
        if _registry_url_parts(url) is not None and is_registry_service(url):
            host = service_host(url)
            if url.lower().startswith("https://") and host and host not in hosts:
                hosts.append(host)
    return hosts


def _check_netrc_token(token: str) -> None:
    import re

    if not re.fullmatch(_NETRC_SAFE, token):
        raise _CommandError("the access token holds characters a netrc file cannot carry")
    if len(token) > MAX_NETRC_LINE - 200:
        raise _CommandError("the access token is too long for a netrc line that curl reads")


def _write_netrc(path: str, hosts: list, entries: bytes) -> None:
    """Put our entries for ``hosts`` first in ``path`` (0600, atomically); keep every other byte.

    Other users must not be able to change the file or swap it (they could plant lines that
    hand our token to their host), and concurrent runs must not lose each other's entries.
    """
    _check_netrc_directory(path)
    with _netrc_lock(path) as lock:
        if lock.path is not None and lock.fd is None:
            raise _CommandError(
                f"{path}: cannot take the lock {lock.path} within {NETRC_LOCK_WAIT:.0f} s "
                "(another netrc run?): run the command again"
            )
        data = _netrc_with_entries(_read_own_netrc(path), hosts, entries, path)
        try:
            _write_private_file(path, data)
        except OSError as exc:
            raise _CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_netrc_directory(path: str) -> None:
    """Refuse a directory where other users could replace the file (unless it is sticky)."""
    import stat

    if not hasattr(os, "getuid"):  # Windows: ACLs, not mode bits, guard the directory
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(directory)
    except OSError:
        return  # the write says why
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise _CommandError(
            f"{directory}: other users can write this directory and it has no sticky bit, "
            "so they could replace the file: write the netrc elsewhere"
        )


def _netrc_lock(path: str) -> _FileLock:
    """One writer at a time for each netrc file, whatever name it is given by."""
    directory = cache_dir(create=True) or os.path.dirname(os.path.abspath(path))
    key = _file_key("netrc\0" + os.path.realpath(path))
    deadline = _monotonic() + NETRC_LOCK_WAIT + 1.0  # _FileLock gives up a second early
    return _FileLock(os.path.join(directory, f"netrc-{key}.lock"), deadline)


def _read_own_netrc(path: str) -> bytes:
    """The netrc at ``path`` (empty if absent): a regular file of ours that others cannot write."""
    import stat

    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise _CommandError(
                f"{path} is a symbolic link: refusing to replace it; give the file it points to"
            )
        return read_local_file(path, MAX_NETRC_BYTES, owned=True)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = "; remove their write access (chmod 600) first" if "writable" in reason else ""
        raise _CommandError(f"{path}: {reason}: refusing to rewrite it{fix}") from None


def _netrc_with_entries(data: bytes, hosts: list, entries: bytes, path: str) -> bytes:
    """``data`` with ``entries`` first and our old entries for ``hosts`` gone, other bytes kept.

    First, because then no earlier entry can take ours in (a dangling `login`, an open
    quote). And the rest must be read the same way by every reader, or it is refused.
    """
    ours = []
    for entry in _portable_netrc_entries(data, hosts, path):
        if entry["host"] in hosts:
            if entry["login"] not in (None, USERNAME.encode()):
                raise _CommandError(
                    f"{path} has an entry for {entry['host']} with another login: remove it, "
                    "or write to another file"
                )
            ours.append(_whole_lines(data, entry["start"], entry["end"]))
    for start, end in reversed(ours):
        data = data[:start] + data[end:]
    # Our lines end in LF even in a CR LF file: after a CR LF, uv reads a comment's words.
    data = entries + data
    _portable_netrc_entries(data, [], path)  # what we wrote is read the same way too
    return data


# The words every reader knows as keywords. curl takes them in any case, Python and uv only
# in lower case; Python and uv also know `user`, curl does not.
_NETRC_KEYWORDS = (b"machine", b"default", b"login", b"password", b"account", b"macdef")
_NETRC_FIELDS = (b"login", b"password", b"account")


def _portable_netrc_entries(data: bytes, ours: list, path: str) -> list:
    """Each entry's span, host and login, in a file that Python's netrc (3.9 and 3.10+),
    curl and uv all read alike; anything they read differently is refused with its line.

    Entries for ``ours`` (about to be replaced) may be incomplete or repeated.
    """
    import re

    def refuse(number: int, why: str) -> _CommandError:
        return _CommandError(f"{path}: line {number}: {why}; the file is left as it was")

    entries: list = []
    state = {"entry": None, "expect": None, "line": 0, "comment": False, "default": 0}
    state["seen"] = set()
    macro = 0  # the line of the macdef whose body is being skipped
    number = 0
    resume = 0  # where the readers' tokenizers stand: past the last word's terminator or line
    for number, start, text, line_end in _netrc_lines(data):
        next_line = start + len(text) + len(line_end)
        _check_netrc_line(number, text, refuse)
        if macro:  # Python and curl end a macro at an empty line only, uv at blanks too
            if not text:
                macro = 0
            elif not text.strip(b" \t"):
                raise refuse(number, "a macdef line of only blanks ends the macro for uv only")
            resume = next_line
            continue
        for match in re.finditer(rb"[^ \t]+", text):
            word, at, end = match.group(), start + match.start(), start + match.end()
            if b'"' in word or b"\\" in word:
                raise refuse(
                    number,
                    "a quote or backslash, which Python 3.9 reads as it is and Python 3.10+, "
                    "curl and uv as quoting",
                )
            if word.startswith(b"#") and state["expect"] is None:
                entry_open = state["entry"] is not None
                rest = text[match.end() :]
                skipped = _netrc_comment(word, rest, data[resume:at], entry_open, number, refuse)
                resume = next_line if skipped else end + 1
                state["comment"] = entry_open
                break
            resume = end + 1
            if state["expect"] is None:
                _netrc_keyword(state, entries, ours, word, at, number, refuse)
            elif _netrc_value(state, word, end, number, refuse) == b"macdef":
                if state["line"] != number:
                    raise refuse(
                        number,
                        "a macdef's name must be on its line (curl "
                        "takes that line for the macro's first)",
                    )
                if match.end() != len(text) or line_end != b"\n":
                    raise refuse(
                        number,
                        "a macdef's name must end its line, with LF only: "
                        "readers disagree on where the macro starts",
                    )
                macro = number
    if state["expect"] is not None:
        raise refuse(number, f"`{str(state['expect'], 'ascii')}` has no value")
    if macro:
        raise refuse(macro, "a macdef without the empty line that ends it (Python rejects it)")
    _finish_netrc_entry(state, ours, refuse)
    return entries


def _netrc_lines(data: bytes) -> list:
    """(number, start, text, line end) of each line; the end is LF, CR LF, or "" at the end."""
    lines, start = [], 0
    pieces = data.split(b"\n")
    for number, piece in enumerate(pieces, 1):
        if number == len(pieces):
            if piece:
                lines.append((number, start, piece, b""))
            break
        if piece.endswith(b"\r"):
            lines.append((number, start, piece[:-1], b"\r\n"))
        else:
            lines.append((number, start, piece, b"\n"))
        start += len(piece) + 1
    return lines


def _check_netrc_line(number: int, text: bytes, refuse) -> None:
    import re

    if re.search(rb"[^\t\x20-\x7e]", text):
        raise refuse(
            number,
            "a control character, lone CR or non-ASCII byte, which readers split differently",
        )
    if len(text) > MAX_NETRC_LINE:
        raise refuse(number, f"longer than {MAX_NETRC_LINE} bytes, which curl skips")


def _netrc_comment(word: bytes, rest: bytes, gap: bytes, entry_open: bool, number, refuse):
    """Check a comment that every reader skips alike; True if they skip the rest of its line.

    Python 3.10+ and uv skip the words after a `#` only when no line end came between the
    last word read and the `#` (an empty line, or the LF of a CR LF, can); Python 3.9 skips
    none after `#word`, and after a `#` that ends a line inside an entry, the next line.
    """
    words_after = rest.strip(b" \t")
    if word == b"#" and not rest and entry_open:
        raise refuse(
            number,
            "a # alone at a line end after an entry makes Python 3.9 "
            "skip the next line; write `# ` and a word",
        )
    if word != b"#" and words_after:
        raise refuse(
            number,
            "a comment that starts `#word` and goes on, which "
            "Python reads as words; write `# ` and the text",
        )
    if words_after and b"\n" in gap:
        raise refuse(
            number,
            "a comment whose words Python 3.10+ or uv read as keywords (it "
            "follows an empty line, or a line ending in CR LF)",
        )
    return b"\n" not in gap


def _netrc_value(state: dict, word: bytes, end: int, number: int, refuse) -> bytes:
    """Take ``word`` as the value of the keyword before it; return that keyword."""
    expected, state["expect"] = state["expect"], None
    if word.startswith(b"#"):
        raise refuse(
            number, f"`{str(expected, 'ascii')}` has no value (curl reads `#` as a comment)"
        )
    if word.lower() in (*_NETRC_KEYWORDS, b"user"):
        raise refuse(number, f"`{str(expected, 'ascii')}` has a keyword for its value")
    entry = state["entry"]
    if expected == b"machine":
        entry["host"] = str(word, "ascii").lower().rstrip(".")
    elif expected in _NETRC_FIELDS:
        entry[str(expected, "ascii")] = word
    if entry is not None:
        entry["end"] = end
    return expected


def _netrc_keyword(state: dict, entries: list, ours: list, word: bytes, at, number, refuse):
    """Take ``word`` where a keyword is due: it starts an entry or a macro, or names a field."""
    if word in (b"machine", b"default", b"macdef"):
        _finish_netrc_entry(state, ours, refuse)
        state["entry"], state["comment"], state["expect"] = None, False, word
        state["line"] = number
        if word == b"macdef":
            return
        if state["default"]:
            raise refuse(number, "an entry after `default`, where curl stops; put `default` last")
        entry = {"start": at, "end": at + len(word), "line": number, "host": None}
        entry.update(login=None, password=None, account=None)
        entries.append(entry)
        state["entry"] = entry
        if word == b"default":
            state["default"], state["expect"] = number, None
    elif word in _NETRC_FIELDS:
        if state["entry"] is None:
            raise refuse(number, f"`{str(word, 'ascii')}` outside an entry")
        if state["comment"]:
            raise refuse(number, "a comment inside an entry, where Python 3.9 ends the entry")
        if state["entry"][str(word, "ascii")] is not None:
            raise refuse(
                number,
                f"`{str(word, 'ascii')}` twice in one entry: curl takes the first, Python the last",
            )
        state["expect"] = word
    elif word.lower() in _NETRC_KEYWORDS:
        raise refuse(number, f"`{str(word, 'ascii')}`: only lower-case keywords are read by all")
    elif word == b"user":
        raise refuse(number, "`user`, which curl does not know: write `login`")
    else:
        raise refuse(
            number,
            "a word where a keyword (machine, default, login, password, account, macdef) should be",
        )


def _finish_netrc_entry(state: dict, ours: list, refuse) -> None:
    """Check the entry just ended: complete, and the only one for its machine."""
    entry = state["entry"]
    if entry is None or entry["host"] in ours:
        return
    if entry["password"] is None:
        raise refuse(entry["line"], "an entry without a password (Python 3.9 rejects the file)")
    if entry["login"] is None:
        raise refuse(entry["line"], "an entry without a login (curl reads on past it)")
    if entry["host"] is not None:
        if entry["host"] in state["seen"]:
            raise refuse(
                entry["line"],
                "a second entry for one machine: curl takes the first, Python the last",
            )
        state["seen"].add(entry["host"])


def _whole_lines(data: bytes, start: int, end: int) -> tuple:
    """Widen [start, end) to whole lines (CR LF included) when nothing else shares them."""
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", end)
    line_end = len(data) if line_end < 0 else line_end + 1
    if data[line_start:start].strip() or data[end:line_end].strip():
        return start, end
    return line_start, line_end


# --- Bazel credential helper --------------------------------------------------------------


# Bazel sends {"uri": ...}; anything longer is not a request.
MAX_HELPER_REQUEST = 64 * 1024


def _credential_helper_command(argv: list) -> int:
    """Bazel's credential-helper protocol: `get`, a JSON request on stdin, headers on stdout."""
    if not argv:
        sys.stderr.write(
            f"{PROG} credential-helper: needs an operation: `get`, with a JSON request on "
            'stdin ({"uri": "https://..."}), as Bazel runs it\n'
        )
        return 2
    if list(argv) != ["get"]:
        shown = " ".join(argv)[:80]
        sys.stderr.write(
            f"{PROG} credential-helper: unknown command {shown!r}: Bazel's protocol has `get`\n"
        )
        return 2
    try:
        uri = _helper_request_uri(sys.stdin.buffer.read(MAX_HELPER_REQUEST + 1))
    except ValueError as exc:
        sys.stderr.write(f"{PROG} credential-helper: {exc}\n")
        return 2
    if not (uri[:8].lower() == "https://" and is_registry_service(uri)):
        sys.stdout.write("{}\n")
        return 0
    try:
        token = lookup()
    except CredentialError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    sys.stdout.write(_json_text(_helper_response(token, _now())) + "\n")
    return 0


def _helper_request_uri(data: bytes) -> str:
    """The `uri` of a credential-helper request; ValueError with one line for anything else."""
    if len(data) > MAX_HELPER_REQUEST:
        raise ValueError("the request on stdin is larger than 64 KiB")
    try:
        request = _json_loads(data)
    except ValueError:
        raise ValueError(
            'the request on stdin is not JSON: Bazel sends {"uri": "https://..."}'
        ) from None
    if not isinstance(request, dict) or not isinstance(request.get("uri"), str):
        raise ValueError('the request on stdin has no "uri" string: {"uri": "https://..."}')
    return request["uri"]


def _helper_response(token: Token, now: float) -> dict:
    """Basic auth for Artifact Registry, to be asked again while the token has 15 min left."""
    import base64

    basic = base64.b64encode(f"{USERNAME}:{token.value}".encode()).decode("ascii")
    response: dict = {"headers": {"Authorization": [f"Basic {basic}"]}}
    if token.expiry is not None:
        refresh = max(token.expiry - MIN_TOKEN_LIFE, now)
        response["expires"] = _rfc3339(refresh)
    return response


if __name__ == "__main__":
    sys.exit(main())
