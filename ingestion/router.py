"""HTTP routes of ingestion: scene partners push behaviour events (signed, batched).

``POST /v1/ingest/events:batch`` answers **200** with every event's outcome whenever the batch
itself was valid, also when only part of it (or none) was accepted: the per-event ``status``
(``accepted`` / ``duplicate`` / ``rejected`` + ``code``) is the answer; a problem (4xx/5xx)
means nothing of the request was taken. ``POST /v1/ingest/events`` takes one event: 202 when
accepted, 200 when it is a duplicate, 409 problem ``event.in_flight`` (with ``Retry-After``) while
another request is storing the same event, 422 problem with the rejection code otherwise.
A per-event ``event.in_flight`` rejection in a batch is retryable the same way.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.auth.deps import CurrentPartner
from app.auth.principal import Principal
from app.deps import RuntimeDep
from app.errors import Conflict, Invalid
from app.runtime import Runtime
from ingestion import errors as E
from ingestion import service
from ingestion.schemas import (
    BatchIn,
    BatchResult,
    EventIn,
    EventResult,
    json_encoder,
    openapi_schema,
)

router = APIRouter(prefix="/v1/ingest", tags=["ingestion"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def _body_doc(struct: type) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": openapi_schema(struct)}}}}


def _answer_doc(struct: type, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": openapi_schema(struct)}}}


async def _rate_limit(runtime: Runtime, partner: Principal) -> None:
    """Per partner, counted per request (one Redis check per batch of up to 1,000 events);
    ``TANHUI_INGEST_PARTNER_RATE_LIMIT`` (default 200/second)."""
    from app.ratelimit import Limit, limiter_for

    spec = runtime.settings.ingest_partner_rate_limit
    await limiter_for(runtime).hit(
        Limit("ingest.partner", spec), str(partner.id), code="ingest.rate_limited"
    )


def _scene(partner: Principal) -> Any:
    if partner.scope_id is None:
        raise Invalid("auth.partner_without_scene", "The partner token names no scene.")
    return partner.scope_id


@router.post(
    "/events:batch",
    summary="Push a batch of 1–1,000 behaviour events (低碳行为数据)",
    openapi_extra=_body_doc(BatchIn),
    responses={200: _answer_doc(BatchResult, "Every event's outcome, in request order"),
               401: _PROBLEM, 403: _PROBLEM, 413: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM,
               503: _PROBLEM},
)
async def ingest_batch(request: Request, partner: CurrentPartner, runtime: RuntimeDep) -> Response:
    scene_id = _scene(partner)
    limits = service.Limits.of(runtime.settings)
    events = service.decode_batch(await request.body(), limits=limits)
    await _rate_limit(runtime, partner)
    # Read-only lookups, each statement its own snapshot (as READ COMMITTED gives anyway).
    async with runtime.db.autocommit() as session:
        checked = await service.check_batch(session, scene_id, events, limits=limits)
    result = await service.publish_batch(runtime, checked, limits=limits)
    return Response(json_encoder.encode(result), media_type="application/json")


@router.post(
    "/events",
    summary="Push one behaviour event (small partners)",
    status_code=202,
    openapi_extra=_body_doc(EventIn),
    responses={202: _answer_doc(EventResult, "Accepted"),
               200: _answer_doc(EventResult, "Already received (duplicate)"),
               401: _PROBLEM, 403: _PROBLEM, 409: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM,
               503: _PROBLEM},
)
async def ingest_one(request: Request, partner: CurrentPartner, runtime: RuntimeDep) -> Response:
    scene_id = _scene(partner)
    event = service.decode_event(await request.body())
    await _rate_limit(runtime, partner)
    limits = service.Limits.of(runtime.settings)
    async with runtime.db.autocommit() as session:
        checked = await service.check_batch(session, scene_id, [event], limits=limits)
    result = (await service.publish_batch(runtime, checked, limits=limits)).results[0]
    if result.code == E.IN_FLIGHT:
        raise Conflict(E.IN_FLIGHT, result.detail, event_id=result.event_id,
                       headers={"Retry-After": "1"})
    if result.status == "rejected":
        raise Invalid(result.code or "event.rejected", result.detail, event_id=result.event_id)
    return Response(json_encoder.encode(result), media_type="application/json",
                    status_code=202 if result.status == "accepted" else 200)
