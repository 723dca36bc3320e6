"""Personal-data protection: AES-256-GCM field encryption and keyed blind indexes.

Phone and ID numbers are stored only encrypted (个人信息加密存储, PIPL Art. 51) with a random
96-bit nonce and the field's *context* as associated data, so a ciphertext copied into another
column or row kind does not decrypt. Lookups go through a blind index: HMAC-SHA256 under a
separate key, so equality search works without the database ever seeing the plain value.
Never log a plain phone or ID number: use :func:`mask_phone`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import Invalid
from app.secrets import get_keys

# Ciphertext layout: version byte | 12-byte nonce | ciphertext with 16-byte tag.
# The version byte leaves room for key rotation without a data migration.
_VERSION = b"\x01"
_NONCE_BYTES = 12


@lru_cache(maxsize=4)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def encrypt(plaintext: str, *, context: str) -> bytes:
    """Encrypt ``plaintext`` under the PII key; ``context`` (e.g. ``"citizen.phone"``) is AAD."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = _aead(get_keys().pii_encryption_key).encrypt(
        nonce, plaintext.encode(), context.encode()
    )
    return _VERSION + nonce + sealed


def decrypt(blob: bytes, *, context: str) -> str:
    """Decrypt what :func:`encrypt` produced under the same ``context``; tampering raises."""
    blob = bytes(blob)
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
        raise ValueError("not a tanhui ciphertext")
    nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        plain = _aead(get_keys().pii_encryption_key).decrypt(nonce, sealed, context.encode())
    except InvalidTag as exc:
        raise ValueError("ciphertext does not authenticate under this key and context") from exc
    return plain.decode()


def blind_index(value: str, *, context: str) -> bytes:
    """A keyed, deterministic 32-byte digest of ``value`` for equality lookups (盲索引)."""
    msg = context.encode() + b"\x00" + value.encode()
    return hmac.new(get_keys().blind_index_key, msg, hashlib.sha256).digest()


_PHONE = re.compile(r"1[3-9]\d{9}")
_SEPARATORS = re.compile(r"[\s\-()]")


def normalize_phone(raw: str) -> str:
    """A mainland China mobile number as 11 digits; accepts ``+86``/``0086``/``86`` and spaces.

    Raises ``Invalid("auth.phone_invalid")`` (the message never repeats the number).
    """
    digits = _SEPARATORS.sub("", raw or "")
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if not _PHONE.fullmatch(digits):
        raise Invalid("auth.phone_invalid", "Not a mainland China mobile number.")
    return digits


def mask_phone(phone: str) -> str:
    """``13800000000`` → ``138****0000``: safe to log and to show."""
    if len(phone) < 7:
        return "*" * len(phone)
    return phone[:3] + "****" + phone[-4:]
