"""The batch API end to end: signed partner → checks → dedupe → bus → worker → ledger."""

from __future__ import annotations

import datetime as dt

import httpx

from app import clock
from app.runtime import Runtime
from tests.ingestion.conftest import Partner, balance, credited, drain, make_partner


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
