"""Request dependencies as ``Annotated`` aliases: the runtime, the database, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from app.auth.permissions import allowed
from app.auth.principal import Principal
from app.auth.tokens import decode_access_token
from app.db import Database
from app.errors import Forbidden, Unauthorized
from app.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # Dependencies are ``async def``: a plain ``def`` costs a worker-thread hop per request.
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_db(request: Request) -> Database:
    return request.app.state.runtime.db  # type: ignore[no-any-return]


async def get_redis(request: Request) -> Redis:
    return request.app.state.runtime.redis  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Db = Annotated[Database, Depends(get_db)]
RedisDep = Annotated[Redis, Depends(get_redis)]


def read_bearer(request: Request) -> Principal:
    """The caller of a bearer token (plain function, for hot paths that skip DI)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "auth.missing", "A bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = decode_access_token(token.strip())
    request.state.principal = principal
    return principal


def as_citizen(principal: Principal) -> Principal:
    if principal.kind != "citizen":
        raise Forbidden("auth.wrong_kind", "This route is for citizens.")
    return principal


def as_admin(principal: Principal) -> Principal:
    if principal.kind != "admin":
        raise Forbidden("auth.wrong_kind", "This route is for admin users.")
    return principal


async def bearer_principal(request: Request) -> Principal:
    return read_bearer(request)


async def current_citizen(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    return as_citizen(principal)


async def current_admin(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    return as_admin(principal)


CurrentCitizen = Annotated[Principal, Depends(current_citizen)]
CurrentAdmin = Annotated[Principal, Depends(current_admin)]


def require(permission: str) -> type[Principal]:
    """``admin: require("rules.publish")`` — an admin holding that permission, else 403."""

    async def check(admin: CurrentAdmin) -> Principal:
        if not allowed(admin.roles, permission):
            raise Forbidden("auth.permission_denied", f"Requires permission {permission}.")
        return admin

    check.__name__ = f"require_{permission.replace('.', '_')}"
    return Annotated[Principal, Depends(check)]  # type: ignore[return-value]



# Machine callers (scene partners, merchants) live in app.auth.deps; re-exported here so that
# every route imports its caller from one module.
from app.auth.deps import CurrentMerchant as CurrentMerchant  # noqa: E402
from app.auth.deps import CurrentPartner as CurrentPartner  # noqa: E402
