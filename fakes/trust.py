"""Trust stores the module may find: a truststore package and macOS's `security` command.

`truststore_source(ca_file)` is the source of a fake ``truststore`` module whose contexts
trust one CA (the OS store, as far as a test is concerned); `FakeSecurity` puts a
`security` on PATH that prints a CA as the macOS keychains' roots and logs its calls.
"""

from __future__ import annotations

from fakes.programs import write_program


def truststore_source(ca_file) -> str:
    """A ``truststore`` module whose SSLContext trusts ``ca_file``; ``built`` lists each one."""
    return f"""
import ssl
built = []

class SSLContext(ssl.SSLContext):
    def __init__(self, protocol):
        super().__init__()
        built.append(protocol)
        self.load_verify_locations(cafile={str(ca_file)!r})
"""


_FAKE_SECURITY = """
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "security.calls"), "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
with open(os.path.join(here, "security.pem")) as pem:
    sys.stdout.write(pem.read())
sys.exit(int(os.environ.get("FAKE_SECURITY_EXIT", "0")))
"""


class FakeSecurity:
    """macOS's `security` command on PATH, printing the test CA as the keychains' roots."""

    def __init__(self, bin_dir, ca_file):
        self.bin_dir = bin_dir
        write_program(bin_dir / "security", _FAKE_SECURITY)
        (bin_dir / "security.pem").write_text(ca_file.read_text())

    @property
    def calls(self):
        log = self.bin_dir / "security.calls"
        return log.read_text().splitlines() if log.exists() else []
