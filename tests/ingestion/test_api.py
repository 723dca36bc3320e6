"""The batch API end to end: signed partner → checks → dedupe → bus → worker → ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from app import clock
from app.runtime import Runtime
from ingestion import service
from tests.ingestion.conftest import balance, credited, drain, make_partner


async def test_art34_batch_is_accepted_published_and_credited_once(
    bus_runtime: Runtime, bus_client: httpx.AsyncClient
) -> None:
    """Art. 34: authorised behaviour data is converted by the published rules and credited
    to the citizen's account, on either bus adapter."""
    partner = await make_partner(bus_runtime, citizens=2)
    refs = list(partner.citizens)
    events = [partner.event(refs[i % 2], quantity="2.5") for i in range(6)]
    r = await partner.post(bus_client, events)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (6, 0, 0)
    assert [x["event_id"] for x in body["results"]] == [e["event_id"] for e in events]
    await drain(bus_runtime)
    # 2.5 km × 100 g/km = 250 g = 25 points (10 g per point), 3 events each
    for ref in refs:
        assert await balance(bus_runtime, partner.citizens[ref]) == 75
    assert set((await credited(bus_runtime, partner.scene_id)).values()) == {1}


async def test_each_rejection_has_its_code_and_only_accepted_events_are_published(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A batch may be partly accepted: every event gets its own outcome and code; rejected
    events never reach the bus (Art. 34: only authorised data in the claim window counts)."""
    from tests.ingestion.conftest import published_count

    partner = await make_partner(runtime, citizens=1, claim_window_days=30)
    ref = next(iter(partner.citizens))
    now = clock.now()
    cases = [
        (partner.event(ref), "accepted", None),
        (partner.event(ref, behaviour="fly_km"), "rejected", "behaviour.unknown"),
        (partner.event(ref, unit="mile"), "rejected", "unit.mismatch"),
        (partner.event("nobody"), "rejected", "link.not_linked"),
        (partner.event(ref, at=partner.linked_at - dt.timedelta(hours=1)), "rejected",
         "consent.absent_at_occurred_at"),
        (partner.event(ref, at=now - dt.timedelta(days=31)), "rejected",
         "event.outside_claim_window"),
        (partner.event(ref, at=now + dt.timedelta(hours=1)), "rejected", "event.in_the_future"),
        (partner.event(ref, quantity="0"), "rejected", "quantity.out_of_range"),
        (partner.event(ref, quantity="-1"), "rejected", "quantity.out_of_range"),
        (partner.event(ref, quantity="1000.001"), "rejected", "quantity.out_of_range"),
        (partner.event(ref, quantity="1.2345"), "rejected", "quantity.too_precise"),
        # Huge or tiny exponents are judged by magnitude, never expanded into digits.
        (partner.event(ref, quantity="1E+9999999"), "rejected", "quantity.out_of_range"),
        (partner.event(ref, quantity="-1E+9999999"), "rejected", "quantity.out_of_range"),
        (partner.event(ref, quantity="1E-9999999"), "rejected", "quantity.too_precise"),
        (partner.event(ref, quantity="NaN"), "rejected", "quantity.too_precise"),
        # A signalling NaN cannot be hashed (the batch's quantities are cached by value).
        (partner.event(ref, quantity="sNaN"), "rejected", "quantity.too_precise"),
        (partner.event(ref, quantity="Infinity"), "rejected", "quantity.too_precise"),
        (partner.event(ref, quantity="2.5000"), "accepted", None),
        (partner.event(ref, quantity="2.5"), "accepted", None),  # the same value again
        (partner.event(ref, quantity=3), "accepted", None),
    ]
    before = await published_count(runtime)
    r = await partner.post(client, [c[0] for c in cases])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (4, 0, 16)
    for (event, status, code), result in zip(cases, body["results"], strict=True):
        assert result["event_id"] == event["event_id"]
        assert (result["status"], result.get("code")) == (status, code), result
    assert await published_count(runtime) == before + 1  # the accepted events: one bucket
    await drain(runtime)
    assert set(await credited(runtime, partner.scene_id)) == {
        event["event_id"] for event, status, _ in cases if status == "accepted"}


async def test_art34_revoked_consent_refuses_later_events_at_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """Art. 34 / PIPL: after a revocation, events that occurred later are refused on the very
    next batch; behaviour that occurred while consent was in force still counts."""
    from scenes import consent as consents

    partner = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(partner.citizens.items()))
    before = partner.event(ref, at=clock.now() - dt.timedelta(hours=2))
    r = await partner.post(client, [partner.event(ref)])
    assert r.json()["accepted"] == 1
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, citizen, partner.consents[ref],
                                      now=clock.now() - dt.timedelta(hours=1))
    after = partner.event(ref, at=clock.now() - dt.timedelta(minutes=1))
    r = await partner.post(client, [before, after])
    results = r.json()["results"]
    assert results[0]["status"] == "accepted"
    assert (results[1]["status"], results[1]["code"]) == ("rejected",
                                                           "consent.absent_at_occurred_at")


async def test_same_batch_twice_and_same_event_in_two_batches_are_credited_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    partner = await make_partner(runtime, citizens=2)
    refs = list(partner.citizens)
    events = [partner.event(refs[i % 2]) for i in range(4)]
    first = await partner.post(client, events)
    assert first.json()["accepted"] == 4
    again = await partner.post(client, events)
    assert again.status_code == 200
    assert [x["status"] for x in again.json()["results"]] == ["duplicate"] * 4
    fresh = partner.event(refs[0])
    mixed = await partner.post(client, [events[0], fresh, fresh])
    assert [x["status"] for x in mixed.json()["results"]] == ["duplicate", "accepted",
                                                              "duplicate"]
    await drain(runtime)
    counts = await credited(runtime, partner.scene_id)
    assert counts == {e["event_id"]: 1 for e in [*events, fresh]}
    assert await balance(runtime, partner.citizens[refs[0]]) == 75
    assert await balance(runtime, partner.citizens[refs[1]]) == 50


async def test_lost_dedupe_marks_still_credit_once_by_the_ledger_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """Redis is the fast path of the dedupe; the ledger's unique (scene, event_id) is final."""
    partner = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(partner.citizens.items()))
    events = [partner.event(ref) for _ in range(3)]
    await partner.post(client, events)
    await drain(runtime)
    buckets = [k async for k in runtime.redis.scan_iter(
        match=runtime.key("ingest", "seen", "{" + str(partner.scene_id) + "}", "*"))]
    assert sum([await runtime.redis.hlen(b) for b in buckets]) == 3  # one mark per event
    await runtime.redis.delete(*buckets)
    r = await partner.post(client, events)
    assert r.json()["accepted"] == 3  # the API cannot know any more...
    await drain(runtime)
    assert await credited(runtime, partner.scene_id) == {e["event_id"]: 1 for e in events}
    assert await balance(runtime, citizen) == 75  # ...but the ledger credits once


async def test_single_event_endpoint(runtime: Runtime, client: httpx.AsyncClient) -> None:
    import orjson

    from tests.ingestion.conftest import ONE_PATH

    partner = await make_partner(runtime, citizens=1)
    ref = next(iter(partner.citizens))
    event = orjson.dumps(partner.event(ref))
    r = await client.post(ONE_PATH, content=event, headers=partner.signed(event, ONE_PATH))
    assert (r.status_code, r.json()["status"]) == (202, "accepted")
    r = await client.post(ONE_PATH, content=event, headers=partner.signed(event, ONE_PATH))
    assert (r.status_code, r.json()["status"]) == (200, "duplicate")
    stranger = orjson.dumps(partner.event("stranger"))
    r = await client.post(ONE_PATH, content=stranger, headers=partner.signed(stranger, ONE_PATH))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "link.not_linked"


@settings(max_examples=300, deadline=None)
@given(st.decimals(allow_nan=True, allow_infinity=True, places=None)
       | st.decimals(min_value=-10**12, max_value=10**12, places=4))
def test_quantity_milli_is_exact(quantity: Decimal) -> None:
    """Quantities are whole milli-units or refused as too precise; never rounded."""
    milli = service.quantity_milli(quantity)
    if not quantity.is_finite():
        assert milli is None
        return
    exact = Fraction(quantity) * 1000
    if abs(exact) >= 10**13:  # out of range whatever its digits
        assert milli is not None and (milli > service.MAX_QUANTITY_MILLI or milli <= 0)
    elif exact.denominator != 1:
        assert milli is None
    else:
        assert milli == exact
