"""Stable codes of ingestion: per-event rejections and whole-request problems."""

from __future__ import annotations

from app.errors import Invalid, TooManyRequests, Unavailable

# Per-event rejection codes (the ``code`` of a ``rejected`` result).
BEHAVIOUR_UNKNOWN = "behaviour.unknown"
UNIT_MISMATCH = "unit.mismatch"
NOT_LINKED = "link.not_linked"
CONSENT_ABSENT = "consent.absent_at_occurred_at"
OUTSIDE_CLAIM_WINDOW = "event.outside_claim_window"
IN_THE_FUTURE = "event.in_the_future"
QUANTITY_OUT_OF_RANGE = "quantity.out_of_range"
QUANTITY_PRECISION = "quantity.too_precise"
RULE_MISSING = "rule.missing_at_occurred_at"
DUPLICATE_IN_BATCH = "event.duplicate_in_batch"
# Retryable: another request holds the event's pending dedupe mark (its publish is under way);
# retry later — the event is then a duplicate (stored) or taken (the other publish failed).
IN_FLIGHT = "event.in_flight"

# Dead-letter reasons (worker side).
DL_DECODE = "message.undecodable"
DL_RULE_MISSING = "rule.missing_at_occurred_at"
DL_CONVERSION_MISSING = "conversion.missing_at_occurred_at"
DL_WORKER_ERROR = "worker.error"


class BatchInvalid(Invalid):
    """The body is not a valid batch (malformed JSON, wrong types, too many events)."""



class IngestRateLimited(TooManyRequests):
    pass


class BusDown(Unavailable):
    """The bus did not acknowledge: nothing was accepted."""
