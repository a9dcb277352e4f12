"""The test world's fakes, one module per thing imitated; standard library plus test extras.

- ``fakes.network``: the loopback HTTP(S) server every fake runs on, the one request
  record (`Recorded`), the routing CONNECT proxy, silent listeners, refused ports, the test CA.
- ``fakes.google``: Google's OAuth token endpoint (RS256 checked with ``cryptography``),
  STS, IAM credentials, a subject-token identity provider.
- ``fakes.metadata``: the GCE metadata server (also as a starting pod's), AWS IMDS.
- ``fakes.gcloud``: the fake ``gcloud`` executable in its SDK layout, and the real one isolated.
- ``fakes.registry``: Artifact Registry repositories, open mirrors, uploads and wheels.
- ``fakes.trust``: a truststore module and macOS's ``security``, for the TLS trust stores.

Every secret a fake hands out is registered here, so that the suite's guard
(conftest.py's ``secrets_never_leak``) can look for it in errors and logs.
"""

SECRETS: set = set()


def register_secret(*values):
    """Remember credential material the fakes hand out or the tests write into files."""
    SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= 8)
