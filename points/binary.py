"""The credit batch's rows in PostgreSQL's binary COPY format, encoded here.

asyncpg's ``copy_records_to_table`` encodes every value by its type codec, and an aware
``datetime`` costs ~0.7 µs there (comparisons with infinity, ``astimezone``, a subtraction);
a credit has four timestamps, three of them the batch's constants. Here the constants are
encoded once per batch and a row is one ``struct.pack`` (the format is PostgreSQL's
documented ``COPY ... (FORMAT binary)``: a header, per row a field count and length-prefixed
fields in network byte order, a trailer). asyncpg still carries the bytes, as one CopyData
message (``copy_to_table(..., source=memoryview(<bytes>), format="binary")``: bytes would be
taken for a file name; an async iterable source costs a task per chunk).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def timestamptz(at: datetime) -> int:
    """An aware instant as PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC."""
    d = at - _PG_EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def uuid_field(value: Any) -> bytes:
    """A uuid field (length + 16 bytes) from a UUID, asyncpg's UUID, 16 bytes or UUID text."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = bytes.fromhex(value.replace("-", ""))
    else:
        raw = value.bytes
    if len(raw) != 16:
        raise ValueError(f"not a UUID: {value!r}")
    return struct.pack("!i16s", 16, raw)


def text_field(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(f"!i{len(raw)}s", len(raw), raw)


# An entry row: 13 fields (``sql.CREDIT_COLUMNS``). The batch's constants and its few
# distinct scenes, behaviours and rule ids are encoded once; a row is one pack of a struct
# cached by the widths of its two variable fields (event id, behaviour).
_KIND = text_field("credit")


@lru_cache(maxsize=1024)
def _entry_struct(event_len: int, behaviour_field_len: int) -> struct.Struct:
    return struct.Struct(
        f"!h iq i16s {len(_KIND)}s iq 12s 20s i{event_len}s {behaviour_field_len}s"
        " iq iq ii 40s")


def entry_rows(
    ids: Sequence[int], accounts: Sequence[bytes], points: Sequence[int], created_at: datetime,
    order: Sequence[int], scenes: Sequence[Any], event_ids: Sequence[str],
    behaviours: Sequence[str], occurred_us: Sequence[int], grams: Sequence[int],
    rates: Sequence[int], reduction_rules: Sequence[Any], conversion_rules: Sequence[Any],
) -> bytes:
    """The COPY data of credit entries: row ``j`` is credit ``order[j]`` of the source
    columns, with ``ids[j]``, ``accounts[j]`` (16 bytes) and ``points[j]``; ``occurred_us``
    are the instants as :func:`timestamptz` gives them."""
    created = struct.pack("!iq", 8, timestamptz(created_at))
    scene_fields: dict[Any, bytes] = {}
    behaviour_fields: dict[str, bytes] = {}
    rule_fields: dict[tuple[Any, Any], bytes] = {}
    parts = [HEADER]
    add = parts.append
    for j, k in enumerate(order):
        event = event_ids[k].encode()
        scene = scene_fields.get(scenes[k])
        if scene is None:
            scene = scene_fields[scenes[k]] = uuid_field(scenes[k])
        behaviour = behaviour_fields.get(behaviours[k])
        if behaviour is None:
            behaviour = behaviour_fields[behaviours[k]] = text_field(behaviours[k])
        pair = (reduction_rules[k], conversion_rules[k])
        rules = rule_fields.get(pair)
        if rules is None:
            rules = rule_fields[pair] = uuid_field(pair[0]) + uuid_field(pair[1])
        add(_entry_struct(len(event), len(behaviour)).pack(
            13, 8, ids[j], 16, accounts[j], _KIND, 8, points[j], created, scene,
            len(event), event, behaviour, 8, occurred_us[k], 8, grams[k],
            4, rates[k], rules))
    add(TRAILER)
    return b"".join(parts)


# A lot row: 6 fields (``sql.LOT_COLUMNS``), the two timestamps the batch's constants.
_LOT = struct.Struct("!h i16s iq iq iq 24s")


def lot_rows(accounts: Sequence[bytes], entry_ids: Sequence[int], points: Sequence[int],
             credited_at: datetime, expires_at: datetime) -> bytes:
    """The COPY data of the lots of credits with at least one point (row per credit ``j``
    with ``points[j] > 0``); a lot's id is its entry's id."""
    times = struct.pack("!iqiq", 8, timestamptz(credited_at), 8, timestamptz(expires_at))
    pack = _LOT.pack
    parts = [HEADER]
    parts.extend([pack(6, 16, accounts[j], 8, entry_ids[j], 8, p, 8, p, times)
                  for j, p in enumerate(points) if p > 0])
    parts.append(TRAILER)
    return b"".join(parts)
