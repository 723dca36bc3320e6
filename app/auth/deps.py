"""Request dependencies for machine callers: signed scene partners and merchants.

``CurrentPartner`` demands a partner bearer token **and** an Ed25519 signature over the
request (timestamp window ±300 s, single-use nonce). ``CurrentMerchant`` accepts a merchant
API key (``X-Api-Key``) or a merchant bearer token. Both are re-exported by ``app.deps``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Annotated

from cryptography.exceptions import InvalidSignature
from fastapi import Depends, Request

from app import clock
from app.auth.apikeys import resolve_api_key
from app.auth.clients import cached_client_keys
from app.auth.principal import Principal
from app.auth.signing import (
    KEY_ID,
    NONCE,
    NONCE_MAX,
    NONCE_MIN,
    NONCE_TTL_S,
    SIGNATURE,
    TIMESTAMP,
    WINDOW_S,
    canonical_string,
)
from app.auth.tokens import decode_access_token
from app.errors import Forbidden, Unauthorized
from app.runtime import Runtime

API_KEY_HEADER = "X-Api-Key"


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def signed_path(request: Request) -> str:
    """The path as signed: URL path plus ``?query`` when there is one."""
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


async def signed_partner(request: Request) -> Principal:
    """A scene partner whose token and request signature both check out."""
    token = _bearer_token(request)
    if token is None:
        raise Unauthorized(
            "auth.missing", "A bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = decode_access_token(token)
    if principal.kind != "partner":
        raise Forbidden("auth.wrong_kind", "This route is for scene partners.")

    headers = request.headers
    ts_raw, nonce, sig_raw = headers.get(TIMESTAMP), headers.get(NONCE), headers.get(SIGNATURE)
    if not ts_raw or not nonce or not sig_raw:
        raise Unauthorized(
            "auth.signature_missing",
            f"Signed requests need {TIMESTAMP}, {NONCE} and {SIGNATURE}.",
        )
    if not ts_raw.isdigit() or len(ts_raw) > 12:
        raise Unauthorized("auth.timestamp_out_of_window", "The timestamp is not unix seconds.")
    now = clock.now()
    if abs(now.timestamp() - int(ts_raw)) > WINDOW_S:
        raise Unauthorized(
            "auth.timestamp_out_of_window",
            f"The timestamp is more than {WINDOW_S} s away from the server's clock.",
        )
    if not (NONCE_MIN <= len(nonce) <= NONCE_MAX) or not nonce.isascii() or not nonce.isprintable():
        raise Unauthorized(
            "auth.nonce_invalid", f"The nonce must be {NONCE_MIN}–{NONCE_MAX} ASCII characters."
        )
    try:
        signature = base64.b64decode(sig_raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized("auth.signature_invalid", "The signature is not base64.") from exc

    runtime = _runtime(request)
    keys = await cached_client_keys(runtime.db.sessions, principal.id)
    if keys is None or not keys.is_active:
        raise Unauthorized("auth.client_inactive", "This API client is suspended.")

    body = await request.body()  # Starlette caches it: the route reads it again for free
    message = canonical_string(request.method, signed_path(request), ts_raw, nonce, body)
    wanted = headers.get(KEY_ID)
    verified = False
    for key in keys.keys:
        if not key.valid_at(now) or (wanted is not None and str(key.id) != wanted):
            continue
        try:
            key.key.verify(signature, message)
        except InvalidSignature:
            continue
        verified = True
        break
    if not verified:
        raise Unauthorized("auth.signature_invalid", "The request signature does not verify.")

    # Checked after the signature, so that forged requests cannot burn a partner's nonces.
    fresh = await runtime.redis.set(
        runtime.key("auth", "nonce", principal.id, nonce), b"1", nx=True, ex=NONCE_TTL_S
    )
    if not fresh:
        raise Unauthorized("auth.nonce_reused", "This nonce has been used already.")
    request.state.principal = principal
    return principal


async def current_merchant(request: Request) -> Principal:
    """A merchant by API key (``X-Api-Key``), or by a merchant bearer token."""
    key = request.headers.get(API_KEY_HEADER)
    if key:
        async with _runtime(request).db.session() as session:
            resolved = await resolve_api_key(session, key)
        if resolved is None:
            raise Unauthorized("auth.api_key_invalid", "The API key is not valid.")
        key_id, merchant_id = resolved
        principal = Principal(kind="merchant", id=key_id, scope_id=merchant_id)
    else:
        token = _bearer_token(request)
        if token is None:
            raise Unauthorized("auth.api_key_invalid", f"An {API_KEY_HEADER} header is required.")
        principal = decode_access_token(token)
        if principal.kind != "merchant":
            raise Forbidden("auth.wrong_kind", "This route is for merchants.")
        if principal.scope_id is None:
            # A merchant token minted for the merchant itself: it acts for itself.
            principal = replace(principal, scope_id=principal.id)
    request.state.principal = principal
    return principal


CurrentPartner = Annotated[Principal, Depends(signed_partner)]
CurrentMerchant = Annotated[Principal, Depends(current_merchant)]
