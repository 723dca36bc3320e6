"""A citizen's hold (冻结) with an amount past BIGINT or a NUL in its reference is a 422
problem with the ledger's own code, and the ledger is untouched (found by the API fuzzer,
``tests/app/test_api_fuzz.py``: the raw driver answered 500)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.db import Database
from tests.points.factories import assert_reconciled, counts
from tests.points.test_api import auth, credit_points, register


@pytest.mark.parametrize(("body", "code"), [
    ({"points": 2**63, "reference": "counter"}, "points.amount_invalid"),
    ({"points": 10**12 + 1, "reference": "counter"}, "points.amount_invalid"),
    ({"points": 3, "reference": "coun\x00ter"}, "points.hold_invalid"),
])
async def test_art34_hold_out_of_range_changes_nothing(
    client: httpx.AsyncClient, db: Database, body: dict[str, Any], code: str
) -> None:
    """Art. 34: points leave an account only through the citizen's own valid hold."""
    citizen = await register(db)
    await credit_points(db, citizen, 12)
    before = await counts(db)
    r = await client.post("/v1/me/points/holds", json=body, headers=auth(citizen))
    assert (r.status_code, r.json()["code"]) == (422, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await counts(db) == before
    r = await client.get("/v1/me/points", headers=auth(citizen))
    assert r.json() == {"available": 12, "held": 0, "expiring_30d": 0}
    await assert_reconciled(db, citizen)
