"""Metadata servers on loopback: Google's (GCE, GKE, Cloud Run) and AWS's instance metadata.

`FakeMetadata` insists on ``Metadata-Flavor: Google``; as a new GKE pod's server it resets
every connection for a while (`refuse_for`), as a black-holed address it accepts and never
answers (`black_hole`, or a bare `fakes.network.Listener`). As an emulator or a proxy it may
drop the flavor header from its data answers (`data_flavor`), answer its ping late
(`ping_delay`) or fail on ``instance/id`` (`instance_id_answer`).
"""

from __future__ import annotations

import secrets

from fakes import register_secret
from fakes.google import CLOUD_PLATFORM
from fakes.network import HANG, FakeService, reply

_SERVICE_ACCOUNTS = "/computeMetadata/v1/instance/service-accounts/"


class FakeMetadata(FakeService):
    """The GCE metadata server, insisting on Metadata-Flavor: Google."""

    server_header = "Metadata Server for VM"
    token_prefix = "metadata"

    def __init__(self):
        super().__init__()
        self.email = "vm-sa@proj.iam.gserviceaccount.com"
        self.project_id = "proj"
        self.instance_id = "1234567890123456789"
        self.no_service_account = False
        self.google_flavor = True
        self.data_flavor = True  # False: Metadata-Flavor on the ping's answer only
        self.ping_delay = 0.0  # seconds the ping's answer waits
        self.instance_id_answer = None  # a scripted reply for instance/id, e.g. (500, "x")
        self.black_hole = False  # accept connections and never answer

    @property
    def host(self):
        """The "127.0.0.1:<port>" value for GCE_METADATA_HOST."""
        return f"127.0.0.1:{self.port}"

    @property
    def response_headers(self):
        """Metadata-Flavor: Google on every response, unless posing as some other server."""
        return {"Metadata-Flavor": "Google"} if self.google_flavor and self.data_flavor else {}

    def respond(self, record):
        """Answer the handful of metadata paths credential code uses."""
        if self.black_hole:
            return HANG
        if "x-forwarded-for" in record.headers:
            return reply(403, "Request had an X-Forwarded-For header.")
        if record.headers.get("metadata-flavor") != "Google":
            return reply(403, "Missing Metadata-Flavor:Google header.")
        if record.method != "GET":
            return reply(405, f"{record.method} is not allowed")
        if record.route == "/":
            if self.ping_delay:
                self.released.wait(self.ping_delay)
            flavor = {"Metadata-Flavor": "Google"} if self.google_flavor else None
            return reply(200, "computeMetadata/\n", flavor)
        if record.route == "/computeMetadata/v1/project/project-id":
            return reply(200, self.project_id)
        if record.route == "/computeMetadata/v1/instance/id":
            if self.instance_id_answer is not None:
                return self._scripted(self.instance_id_answer)
            return reply(200, self.instance_id)
        if record.route.startswith(_SERVICE_ACCOUNTS) and not self.no_service_account:
            return self._service_account(record)
        return reply(404, f"fake metadata has nothing at {record.route}")

    def _service_account(self, record):
        account, _, leaf = record.route[len(_SERVICE_ACCOUNTS) :].partition("/")
        if account not in ("default", self.email):
            return reply(404, f"no service account {account!r}")
        if record.route.endswith("/") and not leaf:
            if record.query.get("recursive") == "true":
                info = {"aliases": ["default"], "email": self.email, "scopes": [CLOUD_PLATFORM]}
                return reply(200, info)
            return reply(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
        if leaf == "email":
            return reply(200, self.email)
        if leaf == "token":
            unexpected = sorted(set(record.query) - {"scopes"})
            if unexpected:
                return reply(400, f"unexpected query parameters {unexpected}")
            return self._issue(self.email, scopes=record.query.get("scopes"))
        return reply(404, f"fake metadata has nothing at {record.route}")


class FakeAwsMetadata(FakeService):
    """The EC2 instance metadata service (IMDSv2 sessions, region, role credentials)."""

    server_header = "EC2ws"

    def __init__(self):
        super().__init__()
        self.zone = "us-east-2b"
        self.role = "gauth-role"
        self.access_key_id = "ASIAIMDSFAKE" + secrets.token_hex(4).upper()
        self.secret_access_key = "imds-secret-" + secrets.token_hex(8)
        self.session_token = "imds-session-" + secrets.token_hex(8)
        register_secret(self.secret_access_key, self.session_token)
        self.require_session = True
        self.session_tokens: set[str] = set()

    @property
    def base_url(self):
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def credential_source(self, imdsv2=True):
        """An aws1 credential_source whose metadata URLs point at this fake."""
        source = {
            "environment_id": "aws1",
            "region_url": f"{self.base_url}/latest/meta-data/placement/availability-zone",
            "url": f"{self.base_url}/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": (
                "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            ),
        }
        if imdsv2:
            source["imdsv2_session_token_url"] = f"{self.base_url}/latest/api/token"
        return source

    def respond(self, record):
        """Answer the metadata paths federation uses."""
        if record.route == "/latest/api/token":
            if record.method != "PUT":
                return reply(405, "Method Not Allowed")
            ttl = record.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return reply(400, "Bad Request")
            token = "imds-v2-" + secrets.token_hex(8)
            with self._lock:
                self.session_tokens.add(token)
            return reply(200, token)
        if record.method != "GET":
            return reply(405, "Method Not Allowed")
        if self.require_session and (
            record.headers.get("x-aws-ec2-metadata-token") not in self.session_tokens
        ):
            return reply(401, "Unauthorized")
        prefix = "/latest/meta-data/iam/security-credentials"
        if record.route == "/latest/meta-data/placement/availability-zone":
            return reply(200, self.zone)
        if record.route in (prefix, prefix + "/"):
            return reply(200, self.role)
        if record.route == f"{prefix}/{self.role}":
            return reply(
                200,
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": self.access_key_id,
                    "SecretAccessKey": self.secret_access_key,
                    "Token": self.session_token,
                    "Expiration": "2099-01-01T00:00:00Z",
                },
            )
        return reply(404, "Not Found")
