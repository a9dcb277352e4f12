"""Federation material shared by the tests: an external_account file and a subject-token program."""

import base64
import json
import re
from urllib.parse import unquote

from fakes.google import AWS_TOKEN_TYPE
from fakes.programs import write_program

STS_URL = "https://sts.googleapis.com/v1/token"
WORKLOAD = (
    "//iam.googleapis.com/projects/123456/locations/global/"
    "workloadIdentityPools/pool/providers/provider"
)
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT = "eyJhbGciOiJSUzI1NiJ9.subject-token.sig"


def external(credential_source, audience=WORKLOAD, token_type=JWT_TYPE, **extra):
    """An external_account file like those `gcloud ... create-cred-config` writes."""
    info = {
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": audience,
        "subject_token_type": token_type,
        "token_url": STS_URL,
        "credential_source": credential_source,
    }
    info.update(extra)
    return {key: value for key, value in info.items() if value is not None}


_EXECUTABLE = r"""
import json, os, stat, sys, time

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "exe.config.json")) as f:
    cfg = json.load(f)
def stdin_is_devnull():
    zero = os.fstat(0)
    if os.name != "nt":
        return stat.S_ISCHR(zero.st_mode) and zero.st_rdev == os.stat(os.devnull).st_rdev
    # Windows: NUL is a character device that is not a console (no st_rdev to compare).
    import ctypes, msvcrt
    handle, mode = msvcrt.get_osfhandle(0), ctypes.c_uint32()
    kernel32 = ctypes.windll.kernel32
    is_char = kernel32.GetFileType(handle) == 2  # FILE_TYPE_CHAR
    return is_char and not kernel32.GetConsoleMode(handle, ctypes.byref(mode))

record = {
    "argv": sys.argv[1:],
    "env": {k: v for k, v in os.environ.items() if k.startswith("GOOGLE_EXTERNAL_ACCOUNT_")},
    "stdin_devnull": stdin_is_devnull(),
}
with open(os.path.join(here, "exe.calls.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
time.sleep(cfg.get("sleep", 0))
response = cfg.get("response")
if response == "fresh":
    response = {"version": 1, "success": True, "token_type": cfg.get("token_type"),
                "id_token": cfg.get("token"), "expiration_time": int(time.time()) + 3600}
text = response if isinstance(response, str) else json.dumps(response)
if cfg.get("to_output_file"):
    with open(os.environ["GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"], "w") as f:
        f.write(text)
else:
    sys.stdout.write(text)
sys.stderr.write(cfg.get("stderr", ""))
sys.exit(cfg.get("exit", 0))
"""


class Executable:
    """A subject-token command in bin_dir, configured per test, that records each run."""

    def __init__(self, bin_dir, token=SUBJECT):
        self.path = write_program(bin_dir / "subject-token-helper", _EXECUTABLE)
        self.token = token
        self.configure()

    def configure(self, response="fresh", token_type=ID_TOKEN_TYPE, **settings):
        config = {"response": response, "token_type": token_type, "token": self.token}
        (self.path.parent / "exe.config.json").write_text(json.dumps({**config, **settings}))

    @property
    def calls(self):
        log = self.path.parent / "exe.calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    # google-auth's shlex.split drops single backslashes: a Windows path for it is doubled.
    doubled_backslashes = False

    def source(self, output_file=None, timeout_millis=5000):
        path = str(self.path).replace("\\", "\\\\") if self.doubled_backslashes else self.path
        executable = {
            "command": f"{path} --flag 'two words'",
            "timeout_millis": timeout_millis,
        }
        if output_file:
            executable["output_file"] = str(output_file)
        return {"executable": executable}


def normalized_request(record, issuers):
    """A token request reduced to what must match between the two libraries."""
    headers = record.headers
    item = {
        "host": headers.get("host"),
        "method": record.method,
        "path": record.path,
        "content-type": headers.get("content-type", "").split(";")[0],
        "x-goog-user-project": headers.get("x-goog-user-project"),
    }
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme == "Bearer":  # a token issued during the run: compare whose it is
        owner = next(
            (
                f"{type(i).__name__}:{i.issued[credential]['identity']}"
                for i in issuers
                if credential in i.issued
            ),
            "unknown",
        )
        item["authorization"] = f"Bearer <{owner}>"
    else:
        item["authorization"] = headers.get("authorization")
    if record.form:
        form = dict(record.form)
        if form.get("subject_token_type") == AWS_TOKEN_TYPE:
            form["subject_token"] = normalized_aws_token(form["subject_token"])
        if "assertion" in form:
            form["assertion"] = normalized_jwt(form["assertion"])
        item["form"] = form  # a form's field order carries no meaning
    else:
        item["json"] = record.json
    return item


def normalized_aws_token(token):
    request = json.loads(unquote(token))
    for header in request["headers"]:
        if header["key"] == "x-amz-date":
            header["value"] = "<now>"
        if header["key"] == "Authorization":
            value = re.sub(r"/\d{8}/", "/<today>/", header["value"])
            header["value"] = re.sub(r"Signature=[0-9a-f]{64}$", "Signature=<hmac>", value)
    return request


def normalized_jwt(jwt):
    header, claims, _ = jwt.split(".")
    decoded = [json.loads(base64.urlsafe_b64decode(part + "==")) for part in (header, claims)]
    lifetime = decoded[1].pop("exp") - decoded[1].pop("iat")
    return {"header": decoded[0], "claims": decoded[1], "lifetime": lifetime}


def clear_requests(fed, *others):
    for fake in (fed.hosts, fed.sts, fed.iam, fed.google, *others):
        fake.requests.clear()


def token_requests(fed):
    """Each service's token requests of the run, in order (IAM's depend on STS's or OAuth's)."""
    issuers = [fed.sts, fed.iam, fed.google]
    return {
        type(fake).__name__: [normalized_request(r, issuers) for r in fake.requests]
        for fake in issuers
    }
