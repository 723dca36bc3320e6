"""Art. 31 rule drafts and key rotation refuse values the database or the fixed-point maths
cannot hold, as 422 problems with stable codes and no row written (found by the API fuzzer,
``tests/app/test_api_fuzz.py``: these answered 500 or reached PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from app.runtime import Runtime
from tests.scenes.conftest import admin_headers, count, make_scene
from tests.scenes.test_rules import draft_body

YEAR_1 = "0001-01-01T00:00:00+14:00"
YEAR_9999 = "9999-12-31T23:59:59-12:00"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"grams_per_unit": "1E+999999999"}, "rules.factor_invalid"),  # decimal.Overflow
        ({"max_quantity_per_event": "1E+20"}, "rules.cap_invalid"),  # past BIGINT milli-units
        ({"valid_from": YEAR_1}, "request.invalid"),
        ({"valid_to": YEAR_9999}, "request.invalid"),
    ],
)
async def test_art31_reduction_draft_out_of_range_writes_nothing(
    client: httpx.AsyncClient, runtime: Runtime, change: dict[str, Any], code: str
) -> None:
    scene = await make_scene(runtime)
    before = await count(runtime, "reduction_rules")
    r = await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules",
                          json=draft_body(**change), headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await count(runtime, "reduction_rules") == before


async def test_art31_conversion_draft_and_patch_out_of_range(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    h = admin_headers()
    before = await count(runtime, "conversion_rules")
    r = await client.post("/v1/admin/conversion-rules", headers=h,
                          json={"grams_per_point": 10, "valid_from": YEAR_1})
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid"), r.text
    r = await client.patch(f"/v1/admin/conversion-rules/{uuid.uuid4()}", headers=h,
                           json={"valid_to": YEAR_9999})
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid"), r.text
    assert await count(runtime, "conversion_rules") == before


async def test_key_retirement_instant_is_bounded(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"/v1/admin/scenes/{uuid.uuid4()}/keys/{uuid.uuid4()}/retire",
        headers=admin_headers(), json={"at": YEAR_1})
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid"), r.text
