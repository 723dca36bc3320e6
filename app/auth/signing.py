"""Request signatures of scene partners: the canonical string and the client-side signer.

A partner signs ``METHOD\\npath\\ntimestamp\\nnonce\\nsha256(body).hexdigest()`` with its
Ed25519 private key, where ``path`` is the URL path with the query string (``?a=b``) if any,
and sends the result in these headers beside its bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app import clock

TIMESTAMP = "X-Tanhui-Timestamp"
NONCE = "X-Tanhui-Nonce"
SIGNATURE = "X-Tanhui-Signature"
KEY_ID = "X-Tanhui-Key-Id"

WINDOW_S = 300  # accepted clock skew either way
NONCE_TTL_S = 600  # a nonce is remembered longer than the window it could be replayed in
NONCE_MIN, NONCE_MAX = 16, 64


def canonical_string(
    method: str, path: str, timestamp: str | int, nonce: str, body: bytes
) -> bytes:
    return (
        f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
    ).encode()


def sign_headers(
    private_key: Ed25519PrivateKey,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    key_id: UUID | str | None = None,
) -> dict[str, str]:
    """The signature headers for one request (used by partners, tests and benchmarks)."""
    ts = int(clock.now().timestamp()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_hex(16)
    signature = private_key.sign(canonical_string(method, path, ts, nonce, body))
    headers = {
        TIMESTAMP: str(ts),
        NONCE: nonce,
        SIGNATURE: base64.b64encode(signature).decode(),
    }
    if key_id is not None:
        headers[KEY_ID] = str(key_id)
    return headers
