"""RFC 9457 problem+json for every error, with a stable machine ``code``.

Services raise :class:`DomainError` subclasses; one set of handlers maps them (and
validation errors, unknown routes, unavailable backends and unexpected faults) to
``application/problem+json``.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger()

PROBLEM = "application/problem+json"


class DomainError(Exception):
    """A refused request. Subclasses fix ``status``; every raise names a stable ``code``."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, code: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail
        self.extra = extra


class Invalid(DomainError):
    status, title = 422, "Unprocessable request"


class NotFound(DomainError):
    status, title = 404, "Not found"


class Conflict(DomainError):
    status, title = 409, "Conflict"


class Unauthorized(DomainError):
    status, title = 401, "Unauthorized"


class Forbidden(DomainError):
    status, title = 403, "Forbidden"


class TooManyRequests(DomainError):
    status, title = 429, "Too many requests"


class PayloadTooLarge(DomainError):
    status, title = 413, "Payload too large"


class Unavailable(DomainError):
    status, title = 503, "Service unavailable"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    request: Request | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://tanhui.cq/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
        rid = getattr(request.state, "request_id", None)
        if rid:
            body["request_id"] = rid
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _is_backend_down(exc: BaseException) -> bool:
    """Connection-level failures of PostgreSQL, Redis or the bus: answer 503, never hang."""
    import asyncpg
    import redis.exceptions as redis_exc
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    from app.bus import BusUnavailable

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        OperationalError
        | InterfaceError
        | ConnectionError
        | TimeoutError
        | OSError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.TooManyConnectionsError
        | redis_exc.ConnectionError
        | redis_exc.TimeoutError
        | BusUnavailable,
    )


# Values PostgreSQL cannot store as sent. The request is at fault (a U+0000 in text or JSON, a
# number or day past the column's type, a text longer than its column), not the server: 422,
# and the transaction has rolled back. Request models bound their fields so the database never
# sees such a value; this is the last line for a field that does not (and for NUL, everywhere).
_UNSTORABLE_SQLSTATES = {
    "22021": "request.invalid_character",  # character_not_in_repertoire: U+0000 in text
    "22P05": "request.invalid_character",  # untranslatable_character: \u0000 in jsonb
    "22001": "request.too_long",  # string_data_right_truncation: longer than varchar(n)
}
_UNSTORABLE_DETAILS = {
    "request.invalid_character": "Text may not contain the NUL character (U+0000).",
    "request.too_long": "A text is longer than can be stored.",
    "request.out_of_range": "A number or date is outside the range that can be stored.",
}


def unstorable_input(exc: BaseException) -> str | None:
    """The problem code when a database error was caused by an unstorable input value."""
    import asyncpg

    # Through SQLAlchemy the driver's error is ``exc.orig`` (its cause, client-side); code on
    # the raw asyncpg connection (the ledger's hot paths) raises the driver's error itself.
    orig = getattr(exc, "orig", None) or exc
    code = _UNSTORABLE_SQLSTATES.get(getattr(orig, "sqlstate", None) or "")
    if code is not None:
        return code
    cause = orig if isinstance(orig, asyncpg.exceptions.DataError) else orig.__cause__
    # asyncpg refuses to encode a bound value that does not fit its type ("value out of int32
    # range", "date value out of range").
    if isinstance(cause, asyncpg.exceptions.DataError):
        message = str(cause)
        if " out of " in message and message.endswith("range)"):
            return "request.out_of_range"
    return None


def install(app: FastAPI) -> None:
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        code = unstorable_input(exc)
        if code is None:
            raise exc  # the generic handler below answers (503 when the backend is down, or 500)
        log.warning("unstorable_input", code=code, path=request.url.path,
                    error=str(getattr(exc, "orig", exc))[:200])
        return problem(422, code, "Unprocessable request", _UNSTORABLE_DETAILS[code],
                       request=request)

    for database_error in (DBAPIError, asyncpg.PostgresError, asyncpg.exceptions.DataError):
        app.add_exception_handler(database_error, _database)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        headers = exc.extra.pop("headers", None)
        return problem(
            exc.status, exc.code, exc.title, exc.detail, request=request, headers=headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        return problem(
            422, "request.invalid", "Unprocessable request", "The request is not valid.",
            request=request, errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "auth.unauthorized", 403: "auth.forbidden", 404: "route.not_found",
            405: "route.method_not_allowed", 413: "request.too_large",
        }
        code = codes.get(exc.status_code, f"http.{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem(exc.status_code, code, detail or "Error", None, request=request,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _is_backend_down(exc):
            log.warning("backend_unavailable", error=type(exc).__name__)
            return problem(
                503, "service.unavailable", "Service unavailable",
                "A backing service is unreachable; retry later.", request=request,
                headers={"Retry-After": "1"},
            )
        log.exception("unexpected_error")
        return problem(500, "internal", "Internal server error", None, request=request)
