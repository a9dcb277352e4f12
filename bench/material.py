"""Make the bench's key and certificates; runs in the tools venv (cryptography, trustme).

Usage: python material.py OUT_DIR HOST... writes key.json (PKCS#8 PEM and the public
numbers), ca.pem and server.pem (certificate chain and key for HOST...).
"""

import json
import sys
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def main(out: Path, hosts: list) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    numbers = key.public_key().public_numbers()
    (out / "key.json").write_text(json.dumps({"pem": pem, "n": numbers.n, "e": numbers.e}))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    ca.issue_cert(*hosts).private_key_and_cert_chain_pem.write_to_path(str(out / "server.pem"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
