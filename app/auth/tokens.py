"""Short-lived JWT access tokens (HS256) for every kind of principal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import jwt

from app import clock
from app.auth.principal import Kind, Principal
from app.errors import Unauthorized
from app.secrets import get_keys
from app.settings import get_settings

ISSUER = "tanhui"
ALGORITHM = "HS256"


def issue_access_token(
    kind: Kind,
    subject: UUID,
    *,
    roles: frozenset[str] | set[str] = frozenset(),
    district: str | None = None,
    scope_id: UUID | None = None,
    ttl_s: int | None = None,
) -> str:
    now = clock.now()
    ttl = ttl_s if ttl_s is not None else get_settings().access_token_ttl_s
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": str(subject),
        "knd": kind,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl)).timestamp()),
    }
    if roles:
        claims["roles"] = sorted(roles)
    if district:
        claims["dst"] = district
    if scope_id:
        claims["scp"] = str(scope_id)
    return jwt.encode(claims, get_keys().jwt_signing_key, algorithm=ALGORITHM)


def decode_access_token(token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            get_keys().jwt_signing_key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            # Expiry is checked against app.clock below, so tests that move time stay exact.
            options={"require": ["exp", "sub", "iss"], "verify_iat": False, "verify_exp": False},
            leeway=0,
        )
        if claims["exp"] <= clock.now().timestamp():
            raise jwt.ExpiredSignatureError
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("auth.token_expired", "The access token has expired.") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("auth.token_invalid", "The access token is not valid.") from exc
    return Principal(
        kind=claims["knd"],
        id=UUID(claims["sub"]),
        roles=frozenset(claims.get("roles", ())),
        district=claims.get("dst"),
        scope_id=UUID(claims["scp"]) if claims.get("scp") else None,
    )
