"""Consent and account linking (Art. 34: only behaviour data the citizen authorised; PIPL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app import clock
from app.runtime import Runtime
from scenes import service
from tests.scenes.conftest import (
    citizen_headers,
    count,
    grant,
    make_partner,
    make_scene,
    new_citizen,
    new_code,
)


async def test_art34_consent_link_and_partner_status(client: httpx.AsyncClient,
                                                     runtime: Runtime) -> None:
    """Art. 34: the citizen consents in the app, the partner links its own user reference
    with the one-time code, and events then resolve to the citizen — never by phone."""
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    citizen = await new_citizen(runtime)
    r = await client.post("/v1/me/consents", headers=citizen_headers(citizen), json={
        "scene_code": scene.code, "scope": "behaviour_data", "privacy_notice_version": "2024-09",
        "channel": "app"})
    assert r.status_code == 201, r.text
    granted = r.json()
    code = granted["link"]["link_code"]
    assert len(code.replace("-", "")) == 8
    assert granted["consent"]["active"] and granted["consent"]["scene_code"] == scene.code
    # Only a keyed hash of the code is stored.
    assert await count(runtime, "link_codes", "consent_id = :c AND position(:code in "
                       "encode(code_hash, 'escape')) = 0", c=granted["consent"]["id"],
                       code=code) == 1

    ref = new_code("u")
    before = await partner.get(client, f"/v1/partner/links/{ref}")
    assert before.json() == {"partner_user_ref": ref, "linked": False, "consenting": False,
                             "linked_at": None}
    linked = await partner.post(client, "/v1/partner/links",
                                {"link_code": code.lower(), "partner_user_ref": ref})
    assert linked.status_code == 201, linked.text
    assert linked.json()["linked"] and linked.json()["consenting"]
    status = await partner.get(client, f"/v1/partner/links/{ref}")
    assert status.json()["linked"] and status.json()["consenting"]

    async with runtime.db.transaction() as s:
        links = await service.resolve_links(s, scene.id, [ref, "nobody"])
    assert set(links) == {ref} and links[ref].citizen_id == citizen
    assert links[ref].consented_at(clock.now())


async def test_art34_revocation_is_immediate_and_regrant_keeps_history(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Art. 34: after revocation, behaviour is no longer authorised (events that occurred
    later are refused); a re-grant opens a new record; the history is kept."""
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    citizen = await new_citizen(runtime)
    h = citizen_headers(citizen)
    ref = new_code("u")
    t0 = clock.now() - timedelta(hours=3)
    first, code = await grant(runtime, citizen, scene.code, now=t0)
    async with runtime.db.transaction() as s:
        from scenes import consent

        await consent.redeem_link_code(s, scene.id, link_code=code.code, partner_user_ref=ref,
                                       now=t0 + timedelta(minutes=1))

    revoked = await client.delete(f"/v1/me/consents/{first.id}", headers=h)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    revoked_at = clock.now()
    status = await partner.get(client, f"/v1/partner/links/{ref}")
    assert status.json()["linked"] and not status.json()["consenting"]
    async with runtime.db.transaction() as s:
        link = (await service.resolve_links(s, scene.id, [ref]))[ref]
    assert link.consented_at(t0 + timedelta(hours=1))
    assert not link.consented_at(revoked_at + timedelta(seconds=1))
    assert not link.consented_at(t0 - timedelta(seconds=1))  # before the grant

    twice = await client.delete(f"/v1/me/consents/{first.id}", headers=h)
    assert (twice.status_code, twice.json()["code"]) == (409, "consent.already_revoked")

    again = await client.post("/v1/me/consents", headers=h, json={
        "scene_code": scene.code, "privacy_notice_version": "2025-01"})
    assert again.status_code == 201
    dup = await client.post("/v1/me/consents", headers=h, json={
        "scene_code": scene.code, "privacy_notice_version": "2025-01"})
    assert (dup.status_code, dup.json()["code"]) == (409, "consent.already_granted")

    async with runtime.db.transaction() as s:
        link = (await service.resolve_links(s, scene.id, [ref]))[ref]
    assert len(link.intervals) == 2 and link.consent_id == uuid.UUID(again.json()["consent"]["id"])
    assert link.consented_at(clock.now() + timedelta(seconds=1))
    assert link.consent_at(t0 + timedelta(hours=1)) == first.id

    mine = (await client.get("/v1/me/consents", headers=h)).json()["scenes"]
    assert len(mine) == 1 and mine[0]["consenting"] and mine[0]["linked"]
    assert [c["privacy_notice_version"] for c in mine[0]["history"]] == ["2025-01", "2024-09"]
    assert await count(runtime, "consents", "citizen_id = :c", c=citizen) == 2


async def test_art34_consent_records_are_never_deleted(runtime: Runtime) -> None:
    """Consent records are kept while the ledger may refer to them: no delete path, and the
    database refuses a DELETE or any change other than the revocation."""
    scene = await make_scene(runtime)
    citizen = await new_citizen(runtime)
    granted, _ = await grant(runtime, citizen, scene.code)
    for sql in ("DELETE FROM consents WHERE id = :i",
                "UPDATE consents SET scope = 'everything' WHERE id = :i"):
        with pytest.raises(DBAPIError):
            async with runtime.db.transaction() as s:
                await s.execute(text(sql), {"i": granted.id})
    assert await count(runtime, "consents", "id = :i AND scope = 'behaviour_data'",
                       i=granted.id) == 1


async def test_art34_link_code_failures_write_nothing(client: httpx.AsyncClient,
                                                      runtime: Runtime) -> None:
    """Expired, reused, other scene's, unknown codes: each a problem with its code; no link."""
    scene, other = await make_scene(runtime), await make_scene(runtime)
    partner, other_partner = await make_partner(runtime, scene.id), await make_partner(
        runtime, other.id)
    c1, c2, c3 = [await new_citizen(runtime) for _ in range(3)]
    # Expired: issued 11 minutes ago (a code lives 10 minutes).
    _, old = await grant(runtime, c1, scene.code, now=clock.now() - timedelta(minutes=11))
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": old.code, "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (422, "consent.link_code_expired")
    # Another scene's code.
    _, theirs = await grant(runtime, c2, other.code)
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": theirs.code, "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (403, "consent.link_code_wrong_scene")
    # Unknown.
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": "ZZZZ-ZZZZ", "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (404, "consent.link_code_unknown")
    # Bad input shape.
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": "ABCD-EFGH", "partner_user_ref": "has space"})
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    assert await count(runtime, "partner_links", "scene_id IN (:a, :b)",
                       a=scene.id, b=other.id) == 0
    # Reused.
    _, good = await grant(runtime, c3, scene.code)
    ref = new_code("u")
    ok = await partner.post(client, "/v1/partner/links",
                            {"link_code": good.code, "partner_user_ref": ref})
    assert ok.status_code == 201
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": good.code, "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (409, "consent.link_code_used")
    # The other scene's partner still redeems its own code.
    r = await other_partner.post(client, "/v1/partner/links",
                                 {"link_code": theirs.code, "partner_user_ref": ref})
    assert r.status_code == 201
    assert await count(runtime, "partner_links", "scene_id = :a", a=scene.id) == 1


async def test_art34_revoked_consent_code_and_taken_reference(client: httpx.AsyncClient,
                                                              runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    a, b = await new_citizen(runtime), await new_citizen(runtime)
    granted, code = await grant(runtime, a, scene.code)
    gone = await client.delete(f"/v1/me/consents/{granted.id}", headers=citizen_headers(a))
    assert gone.status_code == 200
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": code.code, "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (422, "consent.link_code_expired")

    ref = new_code("u")
    _, code_a = await grant(runtime, a, scene.code)
    assert (await partner.post(client, "/v1/partner/links",
                               {"link_code": code_a.code, "partner_user_ref": ref})
            ).status_code == 201
    _, code_b = await grant(runtime, b, scene.code)
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": code_b.code, "partner_user_ref": ref})
    assert (r.status_code, r.json()["code"]) == (409, "consent.partner_ref_taken")
    fresh = await client.post(f"/v1/me/consents/{granted.id}/link-code",
                              headers=citizen_headers(a))
    assert (fresh.status_code, fresh.json()["code"]) == (409, "consent.revoked")
    assert await count(runtime, "partner_links", "scene_id = :s", s=scene.id) == 1


async def test_new_link_code_retires_the_previous_one(client: httpx.AsyncClient,
                                                      runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    citizen = await new_citizen(runtime)
    granted, first = await grant(runtime, citizen, scene.code)
    r = await client.post(f"/v1/me/consents/{granted.id}/link-code",
                          headers=citizen_headers(citizen))
    assert r.status_code == 201
    stale = await partner.post(client, "/v1/partner/links",
                               {"link_code": first.code, "partner_user_ref": new_code("u")})
    assert stale.json()["code"] == "consent.link_code_expired"
    ok = await partner.post(client, "/v1/partner/links",
                            {"link_code": r.json()["link_code"],
                             "partner_user_ref": new_code("u")})
    assert ok.status_code == 201
    other = await client.post(f"/v1/me/consents/{granted.id}/link-code",
                              headers=citizen_headers(await new_citizen(runtime)))
    assert (other.status_code, other.json()["code"]) == (404, "consent.unknown")


async def test_art34_consent_bad_input(client: httpx.AsyncClient, runtime: Runtime) -> None:
    citizen = await new_citizen(runtime)
    h = citizen_headers(citizen)
    before = await count(runtime, "consents", "citizen_id = :c", c=citizen)
    r = await client.post("/v1/me/consents", headers=h, json={
        "scene_code": "no-such-scene", "privacy_notice_version": "1"})
    assert (r.status_code, r.json()["code"]) == (404, "scene.unknown")
    suspended = await make_scene(runtime)
    async with runtime.db.transaction() as s:
        from scenes.schemas import ScenePatch

        await service.update_scene(s, suspended.id, ScenePatch(status="suspended"), actor="t")
    r = await client.post("/v1/me/consents", headers=h, json={
        "scene_code": suspended.code, "privacy_notice_version": "1"})
    assert (r.status_code, r.json()["code"]) == (409, "scene.not_active")
    r = await client.post("/v1/me/consents", headers=h, json={"scene_code": suspended.code})
    assert (r.status_code, r.json()["code"]) == (422, "request.invalid")
    r = await client.delete(f"/v1/me/consents/{uuid.uuid4()}", headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "consent.unknown")
    r = await client.post("/v1/me/consents", json={"scene_code": suspended.code,
                                                    "privacy_notice_version": "1"})
    assert r.status_code == 401
    assert await count(runtime, "consents", "citizen_id = :c", c=citizen) == before
    assert await count(runtime, "link_codes", "citizen_id = :c", c=citizen) == 0


async def test_art34_same_code_redeemed_twice_at_once_links_once(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Concurrency: two simultaneous redemptions of one code → exactly one link."""
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    for _ in range(3):
        citizen = await new_citizen(runtime)
        _, code = await grant(runtime, citizen, scene.code)
        results = await asyncio.gather(*(
            partner.post(client, "/v1/partner/links",
                         {"link_code": code.code, "partner_user_ref": new_code("u")})
            for _ in range(2)))
        assert sorted(r.status_code for r in results) == [201, 409]
        assert {r.json().get("code") for r in results if r.status_code == 409} == {
            "consent.link_code_used"}
        assert await count(runtime, "partner_links", "citizen_id = :c", c=citizen) == 1


async def test_partner_must_sign_and_hold_a_scene(client: httpx.AsyncClient,
                                                  runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    unsigned = await client.get("/v1/partner/links/x",
                                headers={"Authorization": f"Bearer {partner.token}"})
    assert (unsigned.status_code, unsigned.json()["code"]) == (401, "auth.signature_missing")
    citizen_token = citizen_headers(await new_citizen(runtime))
    r = await client.get("/v1/partner/links/x", headers=citizen_token)
    assert r.status_code in (401, 403)
