"""PII protection: AES-256-GCM field encryption, keyed blind indexes, phone handling."""

from __future__ import annotations

import pytest

from app.crypto import blind_index, decrypt, encrypt, mask_phone, normalize_phone
from app.errors import Invalid


def test_encrypt_round_trips_and_never_repeats_a_ciphertext() -> None:
    a = encrypt("13812345678", context="citizen.phone")
    b = encrypt("13812345678", context="citizen.phone")
    assert a != b  # random 96-bit nonce
    assert b"13812345678" not in a
    assert decrypt(a, context="citizen.phone") == "13812345678"
    assert decrypt(b, context="citizen.phone") == "13812345678"


def test_ciphertext_is_bound_to_its_context() -> None:
    blob = encrypt("500101199001011234", context="person.id_number")
    with pytest.raises(ValueError):
        decrypt(blob, context="citizen.phone")


def test_tampered_ciphertext_is_refused() -> None:
    blob = bytearray(encrypt("13812345678", context="citizen.phone"))
    blob[-1] ^= 0x01
    with pytest.raises(ValueError):
        decrypt(bytes(blob), context="citizen.phone")
    with pytest.raises(ValueError):
        decrypt(b"\x01short", context="citizen.phone")


def test_blind_index_is_deterministic_keyed_and_context_separated() -> None:
    a = blind_index("13812345678", context="citizen.phone")
    assert a == blind_index("13812345678", context="citizen.phone")
    assert len(a) == 32
    assert a != blind_index("13812345679", context="citizen.phone")
    assert a != blind_index("13812345678", context="merchant.phone")
    import hashlib

    assert a != hashlib.sha256(b"13812345678").digest()  # keyed, not a bare hash


@pytest.mark.parametrize(
    "raw", ["13812345678", "+86 138 1234 5678", "+8613812345678", "008613812345678",
            "8613812345678", "138-1234-5678"],
)
def test_normalize_phone_accepts_the_usual_spellings(raw: str) -> None:
    assert normalize_phone(raw) == "13812345678"


@pytest.mark.parametrize(
    "raw", ["", "1381234567", "138123456789", "12812345678", "02388888888", "+1 2025550100",
            "1381234567a"],
)
def test_normalize_phone_refuses_non_mainland_mobiles_without_echoing(raw: str) -> None:
    with pytest.raises(Invalid) as info:
        normalize_phone(raw)
    assert info.value.code == "auth.phone_invalid"
    if raw:
        assert raw not in str(info.value)


def test_mask_phone() -> None:
    assert mask_phone("13800000000") == "138****0000"
