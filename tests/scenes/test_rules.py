"""Reduction and conversion rules (Art. 31): drafts, publication, immutability, windows
without overlaps or unintended gaps, fixed-point factors, the publishing role."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.errors import Conflict
from app.runtime import Runtime
from scenes import rules
from scenes.rules import Span, plan_publication
from scenes.schemas import ReductionRuleDraft
from tests.scenes.conftest import (
    T0,
    admin_headers,
    count,
    free_conversion_start,
    make_scene,
    publish_rule,
)

D = timedelta(days=1)


def draft_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "behaviour": "ride", "unit": "passenger_km", "grams_per_unit": "26.9",
        "max_quantity_per_event": "60", "cap_grams_per_event": 1500,
        "cap_grams_per_day": 3000, "cap_grams_per_year": 300000,
        "valid_from": "2030-01-01T00:00:00+08:00", "basis": "test factor",
    }
    body.update(extra)
    return body


async def test_art31_draft_edit_publish_reduction_rule(client: httpx.AsyncClient,
                                                       runtime: Runtime) -> None:
    """Art. 31: the operator drafts a rule in fixed point, edits it, then publishes it."""
    scene = await make_scene(runtime)
    h = admin_headers()
    r = await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules", json=draft_body(),
                          headers=h)
    assert r.status_code == 201, r.text
    draft = r.json()
    assert draft["status"] == "draft" and draft["version"] is None
    assert (draft["grams_per_unit"], draft["grams_per_unit_milli"]) == ("26.9", 26_900)
    assert draft["max_quantity_per_event"] == "60"
    edited = await client.patch(f"/v1/admin/reduction-rules/{draft['id']}",
                                json={"grams_per_unit": 27.05, "cap_grams_per_day": None},
                                headers=h)
    assert edited.status_code == 200, edited.text
    assert edited.json()["grams_per_unit_milli"] == 27_050
    assert edited.json()["cap_grams_per_day"] is None
    pub = await client.post(f"/v1/admin/reduction-rules/{draft['id']}/publish", json={},
                            headers=h)
    assert pub.status_code == 200, pub.text
    assert (pub.json()["status"], pub.json()["version"]) == ("published", 1)
    listed = await client.get(f"/v1/admin/scenes/{scene.id}/reduction-rules?behaviour=ride",
                              headers=admin_headers("bureau"))
    assert [x["version"] for x in listed.json()] == [1]
    actions = await count(runtime, "audit_log", "entity_id = :i", i=draft["id"])
    assert actions == 3  # draft, update, publish


async def test_art31_published_rule_is_immutable(client: httpx.AsyncClient,
                                                 runtime: Runtime) -> None:
    """Art. 31: editing a published version → 409; the database refuses it too."""
    scene = await make_scene(runtime)
    rule = await publish_rule(runtime, scene.id)
    r = await client.patch(f"/v1/admin/reduction-rules/{rule.id}",
                           json={"grams_per_unit": "1"}, headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (409, "rules.published_immutable")
    again = await client.post(f"/v1/admin/reduction-rules/{rule.id}/publish", json={},
                              headers=admin_headers())
    assert (again.status_code, again.json()["code"]) == (409, "rules.published_immutable")
    for sql in ("UPDATE reduction_rules SET grams_per_unit_milli = 1 WHERE id = :i",
                "DELETE FROM reduction_rules WHERE id = :i"):
        with pytest.raises(DBAPIError, match="immutable"):
            async with runtime.db.transaction() as s:
                await s.execute(text(sql), {"i": rule.id})
    async with runtime.db.session() as s:
        factor = await s.scalar(text("SELECT grams_per_unit_milli FROM reduction_rules "
                                     "WHERE id = :i"), {"i": rule.id})
    assert factor == 120_000


async def test_art31_publishing_needs_rules_publish(client: httpx.AsyncClient,
                                                    runtime: Runtime) -> None:
    """Operator staff may draft but not publish (rules.publish): 403, nothing published."""
    scene = await make_scene(runtime)
    staff = admin_headers("operator_staff")
    r = await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules", json=draft_body(),
                          headers=staff)
    assert r.status_code == 201
    pub = await client.post(f"/v1/admin/reduction-rules/{r.json()['id']}/publish", json={},
                            headers=staff)
    assert (pub.status_code, pub.json()["code"]) == (403, "auth.permission_denied")
    conv = await client.post("/v1/admin/conversion-rules",
                             json={"grams_per_point": 10, "valid_from": "2040-01-01T00:00:00Z"},
                             headers=staff)
    cpub = await client.post(f"/v1/admin/conversion-rules/{conv.json()['id']}/publish",
                             json={}, headers=staff)
    assert (cpub.status_code, cpub.json()["code"]) == (403, "auth.permission_denied")
    assert await count(runtime, "reduction_rules",
                       "scene_id = :i AND status = 'published'", i=scene.id) == 0
    assert await count(runtime, "conversion_rules",
                       "id = :i AND status = 'draft'", i=conv.json()["id"]) == 1


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"grams_per_unit": "0"}, 422, "rules.factor_invalid"),
        ({"grams_per_unit": "-26.9"}, 422, "rules.factor_invalid"),
        ({"grams_per_unit": "26.9001"}, 422, "rules.factor_invalid"),
        ({"grams_per_unit": "NaN"}, 422, "request.invalid"),
        ({"grams_per_unit": "2000000"}, 422, "rules.factor_invalid"),
        ({"cap_grams_per_day": 0}, 422, "rules.cap_invalid"),
        ({"max_quantity_per_event": "-1"}, 422, "rules.cap_invalid"),
        ({"max_quantity_per_event": "0.0001"}, 422, "rules.cap_invalid"),
        ({"valid_to": "2029-12-31T00:00:00+08:00"}, 422, "rules.window_invalid"),
        ({"valid_from": "2030-01-01T00:00:00"}, 422, "request.invalid"),
        ({"behaviour": "teleport"}, 404, "scene.behaviour_unknown"),
        ({"unit": "Passenger KM"}, 422, "request.invalid"),
    ],
)
async def test_art31_bad_rule_drafts_write_nothing(
    client: httpx.AsyncClient, runtime: Runtime, change: dict[str, Any], status: int, code: str
) -> None:
    scene = await make_scene(runtime)
    before = await count(runtime, "reduction_rules")
    audits = await count(runtime, "audit_log")
    r = await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules",
                          json=draft_body(**change), headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert await count(runtime, "reduction_rules") == before
    assert await count(runtime, "audit_log") == audits


async def test_rule_for_unknown_scene_or_rule(client: httpx.AsyncClient) -> None:
    h = admin_headers()
    r = await client.post(f"/v1/admin/scenes/{uuid.uuid4()}/reduction-rules",
                          json=draft_body(), headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "scene.unknown")
    for url in (f"/v1/admin/reduction-rules/{uuid.uuid4()}/publish",
                f"/v1/admin/conversion-rules/{uuid.uuid4()}/publish"):
        r = await client.post(url, json={}, headers=h)
        assert (r.status_code, r.json()["code"]) == (404, "rules.unknown")
    r = await client.patch(f"/v1/admin/reduction-rules/{uuid.uuid4()}",
                           json={"grams_per_unit": "1"}, headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "rules.unknown")


async def test_edit_of_draft_with_bad_values_leaves_it_unchanged(client: httpx.AsyncClient,
                                                                 runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    h = admin_headers()
    draft = (await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules",
                               json=draft_body(), headers=h)).json()
    for patch, code in (({"grams_per_unit": "-1"}, "rules.factor_invalid"),
                        ({"grams_per_unit": None}, "rules.field_required"),
                        ({"valid_to": "2020-01-01T00:00:00Z"}, "rules.window_invalid")):
        r = await client.patch(f"/v1/admin/reduction-rules/{draft['id']}", json=patch,
                               headers=h)
        assert (r.status_code, r.json()["code"]) == (422, code)
    same = await client.get(f"/v1/admin/reduction-rules/{draft['id']}", headers=h)
    assert same.json()["grams_per_unit_milli"] == 26_900 and same.json()["valid_to"] is None


async def _draft(client: httpx.AsyncClient, scene_id: uuid.UUID, start: datetime,
                 end: datetime | None = None, factor: str = "10") -> str:
    r = await client.post(
        f"/v1/admin/scenes/{scene_id}/reduction-rules",
        json=draft_body(grams_per_unit=factor, valid_from=start.isoformat(),
                        valid_to=end.isoformat() if end else None),
        headers=admin_headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _publish(client: httpx.AsyncClient, rule_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/admin/reduction-rules/{rule_id}/publish", json=body,
                             headers=admin_headers())


async def test_art31_versions_do_not_overlap_and_leave_no_gap(client: httpx.AsyncClient,
                                                              runtime: Runtime) -> None:
    """Art. 31: a new version starts where the previous one ends; overlaps → 409
    ``rules.overlap``; gaps → 409 ``rules.gap`` unless ``allow_gap``."""
    scene = await make_scene(runtime)
    base = datetime(2031, 1, 1, tzinfo=T0.tzinfo)
    v1 = await _draft(client, scene.id, base, base + 10 * D)
    assert (await _publish(client, v1)).json()["version"] == 1

    overlapping = await _draft(client, scene.id, base + 5 * D, base + 20 * D)
    r = await _publish(client, overlapping)
    assert (r.status_code, r.json()["code"]) == (409, "rules.overlap")

    gap = await _draft(client, scene.id, base + 11 * D, base + 20 * D)
    r = await _publish(client, gap)
    assert (r.status_code, r.json()["code"]) == (409, "rules.gap")

    before_gap = await _draft(client, scene.id, base - 10 * D, base - 2 * D)
    r = await _publish(client, before_gap)
    assert (r.status_code, r.json()["code"]) == (409, "rules.gap")

    adjacent = await _draft(client, scene.id, base + 10 * D, base + 20 * D)
    r = await _publish(client, adjacent)
    assert (r.status_code, r.json()["version"]) == (200, 2)

    intended_gap = await _draft(client, scene.id, base + 25 * D)
    r = await _publish(client, intended_gap, allow_gap=True)
    assert (r.status_code, r.json()["version"]) == (200, 3)

    assert await count(runtime, "reduction_rules", "scene_id = :i AND status = 'published'",
                       i=scene.id) == 3
    assert await count(runtime, "reduction_rules", "scene_id = :i AND status = 'draft'",
                       i=scene.id) == 3  # the refused drafts stay drafts


async def test_art31_successor_closes_the_open_version(client: httpx.AsyncClient,
                                                       runtime: Runtime) -> None:
    """An open-ended version is closed exactly at its successor's start, never in the past."""
    scene = await make_scene(runtime)
    start = datetime(2032, 1, 1, tzinfo=T0.tzinfo)
    v1 = await _draft(client, scene.id, start)
    assert (await _publish(client, v1)).status_code == 200

    successor = await _draft(client, scene.id, start + D)
    r = await _publish(client, successor)  # starts in the future: v1 is closed there
    assert (r.status_code, r.json()["version"]) == (200, 2), r.text
    v1_now = (await client.get(f"/v1/admin/reduction-rules/{v1}", headers=admin_headers()))
    assert v1_now.json()["valid_to"].startswith("2032-01-02")
    assert v1_now.json()["superseded_by"] == successor

    # A version in force since T0 cannot be cut back retroactively to T0 + 1 day.
    other = await make_scene(runtime)
    await publish_rule(runtime, other.id, valid_from=T0, now=T0)
    async with runtime.db.transaction() as s:
        draft = await rules.draft_reduction_rule(
            s, other.id, ReductionRuleDraft(behaviour="ride", unit="trip",
                                            grams_per_unit=Decimal(150), valid_from=T0 + D),
            actor="test")
    with pytest.raises(Conflict) as refused:
        async with runtime.db.transaction() as s:
            await rules.publish_reduction_rule(s, draft.id, actor="test", now=T0 + 2 * D)
    assert refused.value.code == "rules.retroactive"
    assert await count(runtime, "reduction_rules", "scene_id = :i AND status = 'published'",
                       i=other.id) == 1


async def test_art31_concurrent_overlapping_publications_one_wins(client: httpx.AsyncClient,
                                                                  runtime: Runtime) -> None:
    """Two publishers race with overlapping windows: exactly one version is published."""
    scene = await make_scene(runtime)
    start = datetime(2033, 1, 1, tzinfo=T0.tzinfo)
    a = await _draft(client, scene.id, start, start + 30 * D, factor="11")
    b = await _draft(client, scene.id, start + 10 * D, start + 40 * D, factor="12")
    results = await asyncio.gather(_publish(client, a), _publish(client, b))
    assert sorted(r.status_code for r in results) == [200, 409]
    assert await count(runtime, "reduction_rules", "scene_id = :i AND status = 'published'",
                       i=scene.id) == 1


async def test_art31_conversion_rules_are_versioned(client: httpx.AsyncClient,
                                                    runtime: Runtime) -> None:
    """The grams → points conversion is versioned, published, immutable, non-overlapping."""
    h = admin_headers()
    start = await free_conversion_start(runtime)
    bad = await client.post("/v1/admin/conversion-rules",
                            json={"grams_per_point": 0, "valid_from": start.isoformat()},
                            headers=h)
    assert (bad.status_code, bad.json()["code"]) == (422, "rules.factor_invalid")
    bad = await client.post("/v1/admin/conversion-rules",
                            json={"grams_per_point": -5, "valid_from": start.isoformat()},
                            headers=h)
    assert (bad.status_code, bad.json()["code"]) == (422, "rules.factor_invalid")
    c1 = await client.post("/v1/admin/conversion-rules",
                           json={"grams_per_point": 10, "valid_from": start.isoformat(),
                                 "valid_to": (start + 100 * D).isoformat()}, headers=h)
    assert c1.status_code == 201
    p1 = await client.post(f"/v1/admin/conversion-rules/{c1.json()['id']}/publish",
                           json={"allow_gap": True}, headers=h)
    assert p1.status_code == 200 and p1.json()["version"] >= 1
    edit = await client.patch(f"/v1/admin/conversion-rules/{c1.json()['id']}",
                              json={"grams_per_point": 9}, headers=h)
    assert (edit.status_code, edit.json()["code"]) == (409, "rules.published_immutable")
    c2 = await client.post("/v1/admin/conversion-rules",
                           json={"grams_per_point": 12,
                                 "valid_from": (start + 50 * D).isoformat(),
                                 "valid_to": (start + 200 * D).isoformat()}, headers=h)
    p2 = await client.post(f"/v1/admin/conversion-rules/{c2.json()['id']}/publish", json={},
                           headers=h)
    assert (p2.status_code, p2.json()["code"]) == (409, "rules.overlap")
    ok = await client.patch(f"/v1/admin/conversion-rules/{c2.json()['id']}",
                            json={"valid_from": (start + 100 * D).isoformat()}, headers=h)
    assert ok.status_code == 200
    # Other tests of this run publish conversion windows in other years: allow the gap.
    p2 = await client.post(f"/v1/admin/conversion-rules/{c2.json()['id']}/publish",
                           json={"allow_gap": True}, headers=h)
    assert p2.status_code == 200
    assert p2.json()["version"] == p1.json()["version"] + 1
    listed = (await client.get("/v1/admin/conversion-rules", headers=h)).json()
    assert {c1.json()["id"], c2.json()["id"]} <= {x["id"] for x in listed}
    with pytest.raises(DBAPIError, match="immutable"):
        async with runtime.db.transaction() as s:
            await s.execute(text("UPDATE conversion_rules SET grams_per_point = 1 "
                                 "WHERE id = :i"), {"i": c1.json()["id"]})


def test_art31_plan_publication_rules() -> None:
    """The pure series check: overlap, gap, supersession of the open version, retroactivity."""
    def span(v: int, a: int, b: int | None) -> Span:
        return Span(uuid.uuid4(), v, T0 + a * D, None if b is None else T0 + b * D)

    closed = [span(1, 0, 10), span(2, 10, 20)]
    assert plan_publication(closed, span(0, 20, 30), allow_gap=False, now=T0) is None
    with pytest.raises(Conflict, match="overlaps"):
        plan_publication(closed, span(0, 19, 30), allow_gap=False, now=T0)
    with pytest.raises(Conflict, match="gap"):
        plan_publication(closed, span(0, 21, 30), allow_gap=False, now=T0)
    assert plan_publication(closed, span(0, 21, 30), allow_gap=True, now=T0) is None
    with pytest.raises(Conflict, match="overlaps"):
        plan_publication(closed, span(0, -5, None), allow_gap=True, now=T0)
    assert plan_publication(closed, span(0, -5, 0), allow_gap=False, now=T0) is None
    open_ = [span(1, 0, None)]
    assert plan_publication(open_, span(0, 5, None), allow_gap=False, now=T0) is open_[0]
    with pytest.raises(Conflict, match="overlaps"):
        plan_publication(open_, span(0, -1, 3), allow_gap=False, now=T0)
    with pytest.raises(Conflict, match="now or later"):
        plan_publication(open_, span(0, 5, None), allow_gap=False, now=T0 + 6 * D)
