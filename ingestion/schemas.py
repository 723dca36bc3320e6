"""Wire formats of ingestion: the partner's request (JSON), the answer, and the bus message.

The request body is decoded by msgspec in **one call** straight from the raw bytes into
typed structs (no dict, no ORM object per event). The bus message is MessagePack, an array
per event, so the worker decodes thousands of events per millisecond.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

MAX_EVENTS = 1000

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Aware = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One behaviour event (低碳行为数据) reported by a scene partner."""

    event_id: EventId
    partner_user_ref: Ref
    behaviour: Code
    quantity: Decimal
    unit: Code
    occurred_at: Aware
    district_code: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    attributes: dict[str, Any] | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``POST /v1/ingest/events:batch``: 1 to 1,000 events."""

    events: list[EventIn]


Outcome = Literal["accepted", "duplicate", "rejected"]


class EventResult(msgspec.Struct, omit_defaults=True, gc=False):
    event_id: str
    status: Outcome
    code: str | None = None
    detail: str | None = None


class BatchResult(msgspec.Struct, gc=False):
    """Every event's outcome, in request order; the counts sum to the batch size."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class BusEvent(msgspec.Struct, array_like=True, gc=False):
    """One accepted event on the bus (the worker's input). UUIDs travel as 16 bytes, times
    as MessagePack timestamps (decoded as UTC)."""

    scene_id: uuid.UUID
    event_id: str
    citizen_id: uuid.UUID
    behaviour: str
    quantity_milli: int
    occurred_at: dt.datetime
    received_at: dt.datetime
    district_code: str | None = None


class Envelope(msgspec.Struct, array_like=True, gc=False):
    """A bus message: the accepted events of one request that fall in one citizen bucket."""

    v: int
    events: list[BusEvent]


class RawBusEvent(msgspec.Struct, array_like=True, gc=False):
    """A :class:`BusEvent` with its UUIDs as 16 raw bytes: the same wire form. The API writes
    it and the points worker reads it (raw ids are hashed, compared and encoded in C; a UUID
    object is made only once per distinct value, where one is needed)."""

    scene_id: bytes
    event_id: str
    citizen_id: bytes
    behaviour: str
    quantity_milli: int
    occurred_at: dt.datetime  # UTC (MessagePack timestamps decode as UTC)
    received_at: dt.datetime
    district_code: str | None = None


class RawEnvelope(msgspec.Struct, array_like=True, gc=False):
    v: int
    events: list[RawBusEvent]


ENVELOPE_VERSION = 1

batch_decoder = msgspec.json.Decoder(BatchIn)
event_decoder = msgspec.json.Decoder(EventIn)
json_encoder = msgspec.json.Encoder()
bus_encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
bus_decoder = msgspec.msgpack.Decoder(Envelope)
bus_event_decoder = msgspec.msgpack.Decoder(BusEvent)
raw_bus_decoder = msgspec.msgpack.Decoder(RawEnvelope)

# A citizen's events always go to the same bucket, hence the same partition: one worker at a
# time sees a citizen (caps are computed without racing). A bus message carries one request's
# events of one bucket, so a batch of 1,000 events is at most BUCKETS messages.
BUCKETS = 64


def bucket_of(citizen_id: uuid.UUID) -> int:
    """The citizen's bucket (stable across processes and versions: CRC-32 of the UUID)."""
    return bucket_of_raw(citizen_id.bytes)


def bucket_of_raw(citizen_id: bytes) -> int:
    """:func:`bucket_of` of a citizen id given as its 16 bytes."""
    return zlib.crc32(citizen_id) % BUCKETS


def key_of_bucket(bucket: int) -> bytes:
    """The bus key of a bucket's messages."""
    return b"c%02d" % bucket


def bucket_of_key(key: bytes) -> int | None:
    """The bucket a bus key names (:func:`key_of_bucket`), None for another key."""
    if len(key) == 3 and key[:1] == b"c" and key[1:].isdigit():
        return int(key[1:])
    return None


def openapi_schema(struct: type) -> dict[str, Any]:
    """A struct's JSON schema for the OpenAPI document (refs inlined under ``$defs``)."""
    schema: dict[str, Any] = msgspec.json.schema(struct, ref_template="#/$defs/{name}")
    return schema
