"""Scenes (Art. 32): registration after an agreement, categories as data, status transitions,
partner credentials and key rotation, behaviours; every admin write audited."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from app import clock
from app.runtime import Runtime
from scenes import service
from scenes.errors import SceneNotActive
from tests.scenes.conftest import (
    admin_headers,
    count,
    grant,
    make_partner,
    make_scene,
    new_citizen,
    new_code,
    public_key_b64,
    scene_body,
)


async def test_art32_register_scene_after_agreement(client: httpx.AsyncClient,
                                                    runtime: Runtime) -> None:
    """Art. 32: the operator registers a scene with its partner and agreement; it is audited."""
    body = scene_body(partner_credit_code="91500000MA5U000000")
    r = await client.post("/v1/admin/scenes", json=body, headers=admin_headers())
    assert r.status_code == 201, r.text
    scene = r.json()
    assert scene["code"] == body["code"] and scene["status"] == "active"
    assert scene["partner_name"] == "测试公交集团" and scene["category"] == "bus"
    assert scene["agreement_ref"] == "T-001" and scene["claim_window_days"] == 30
    assert await count(runtime, "audit_log", "action = 'scenes.register' AND entity_id = :i",
                       i=scene["id"]) == 1

    got = await client.get(f"/v1/admin/scenes/{scene['id']}",
                           headers=admin_headers("bureau"))
    assert got.status_code == 200 and got.json()["code"] == body["code"]
    listed = await client.get("/v1/admin/scenes?status=active", headers=admin_headers("auditor"))
    assert body["code"] in {s["code"] for s in listed.json()}


async def test_art32_bad_scene_input_writes_nothing(client: httpx.AsyncClient,
                                                    runtime: Runtime) -> None:
    before = await count(runtime, "scenes")
    audits = await count(runtime, "audit_log")
    cases = [
        (scene_body(category="hovercraft"), 422, "scene.category_unknown"),
        (scene_body(agreement_starts_on="2025-01-01", agreement_ends_on="2024-12-31"), 422,
         "scene.agreement_dates_invalid"),
        (scene_body(code="Bad Code!"), 422, "request.invalid"),
        (scene_body(claim_window_days=0), 422, "request.invalid"),
    ]
    for body, status, code in cases:
        r = await client.post("/v1/admin/scenes", json=body, headers=admin_headers())
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    taken = scene_body()
    assert (await client.post("/v1/admin/scenes", json=taken,
                              headers=admin_headers())).status_code == 201
    dup = await client.post("/v1/admin/scenes", json=taken | {"name_zh": "另一个"},
                            headers=admin_headers())
    assert (dup.status_code, dup.json()["code"]) == (409, "scene.code_taken")
    assert await count(runtime, "scenes") == before + 1
    assert await count(runtime, "audit_log") == audits + 1


async def test_art32_scene_admin_needs_permissions(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/admin/scenes", json=scene_body(), headers=admin_headers("bureau"))
    assert (r.status_code, r.json()["code"]) == (403, "auth.permission_denied")
    r = await client.get("/v1/admin/scenes", headers=admin_headers("vvb"))
    assert r.status_code == 403
    assert (await client.get("/v1/admin/scenes")).status_code == 401
    unknown = await client.get(f"/v1/admin/scenes/{uuid.uuid4()}", headers=admin_headers())
    assert (unknown.status_code, unknown.json()["code"]) == (404, "scene.unknown")


async def test_categories_are_data(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Scene categories live in a table: the operator adds one and a scene may use it."""
    listed = await client.get("/v1/admin/scene-categories", headers=admin_headers())
    codes = {c["code"] for c in listed.json()}
    assert {"bus", "metro", "shared_bicycle", "walking", "e_receipt", "second_hand"} <= codes
    code = "ferry_" + uuid.uuid4().hex[:6]
    r = await client.post("/v1/admin/scene-categories",
                          json={"code": code, "name_zh": "轮渡", "name_en": "Ferry"},
                          headers=admin_headers())
    assert r.status_code == 201
    again = await client.post("/v1/admin/scene-categories",
                              json={"code": code, "name_zh": "轮渡", "name_en": "Ferry"},
                              headers=admin_headers())
    assert (again.status_code, again.json()["code"]) == (409, "scene.category_taken")
    scene = await client.post("/v1/admin/scenes", json=scene_body(category=code),
                              headers=admin_headers())
    assert scene.status_code == 201 and scene.json()["category"] == code


async def test_art32_status_transitions(client: httpx.AsyncClient, runtime: Runtime) -> None:
    """Art. 32: active ⇄ suspended, either → ended, ended is final; each change audited."""
    scene = await make_scene(runtime)
    url = f"/v1/admin/scenes/{scene.id}"
    h = admin_headers()
    r = await client.patch(url, json={"status": "suspended"}, headers=h)
    assert r.json()["status"] == "suspended"
    r = await client.patch(url, json={"status": "active", "claim_window_days": 7}, headers=h)
    assert (r.json()["status"], r.json()["claim_window_days"]) == ("active", 7)
    r = await client.patch(url, json={"status": "ended"}, headers=h)
    assert r.json()["status"] == "ended"
    for target in ("active", "suspended"):
        bad = await client.patch(url, json={"status": target}, headers=h)
        assert (bad.status_code, bad.json()["code"]) == (409, "scene.status_transition")
    bad = await client.patch(url, json={"status": "paused"}, headers=h)
    assert bad.status_code == 422
    bad = await client.patch(url, json={"name_zh": None}, headers=h)
    assert (bad.status_code, bad.json()["code"]) == (422, "scene.field_required")
    assert await count(runtime, "audit_log", "action = 'scenes.update' AND entity_id = :i",
                       i=str(scene.id)) == 3


async def test_art32_suspended_scene_refused_at_once(client: httpx.AsyncClient,
                                                      runtime: Runtime) -> None:
    """Art. 32: suspending a scene is seen by ingestion's lookup on the next batch."""
    scene = await make_scene(runtime)
    async with runtime.db.transaction() as s:
        info, _ = await service.links_for_ingest(s, scene.id, [])
    assert info.accepting
    r = await client.patch(f"/v1/admin/scenes/{scene.id}", json={"status": "suspended"},
                           headers=admin_headers())
    assert r.status_code == 200
    with pytest.raises(SceneNotActive) as refused:  # what ingestion raises to the partner
        async with runtime.db.transaction() as s:
            await service.links_for_ingest(s, scene.id, [])
    assert refused.value.code == "scene.not_active"


async def test_art32_status_written_by_another_process_is_seen_by_the_next_batch(
        runtime: Runtime) -> None:
    """Another process's change (simulated by a direct write) is seen by the next lookup:
    the scene is read fresh for every batch."""
    scene = await make_scene(runtime)
    async with runtime.db.transaction() as s:
        await service.links_for_ingest(s, scene.id, [])
        await s.execute(text("UPDATE scenes SET status = 'suspended' WHERE id = :i"),
                        {"i": scene.id})
    with pytest.raises(SceneNotActive):
        async with runtime.db.transaction() as s:
            await service.links_for_ingest(s, scene.id, [])


async def test_art32_credentials_shown_once_and_keys_rotate(client: httpx.AsyncClient,
                                                           runtime: Runtime) -> None:
    """The partner's client secret is returned once; a new key overlaps the retiring one."""
    scene = await make_scene(runtime)
    h = admin_headers()
    r = await client.post(f"/v1/admin/scenes/{scene.id}/credentials", headers=h)
    assert r.status_code == 201
    creds = r.json()
    assert creds["client_secret"] and creds["client_id"]
    got = (await client.get(f"/v1/admin/scenes/{scene.id}", headers=h)).json()
    assert got["client_ids"] == [creds["client_id"]] and "client_secret" not in str(got)

    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    k1 = await client.post(f"/v1/admin/scenes/{scene.id}/keys",
                           json={"public_key": public_key_b64(old)}, headers=h)
    assert k1.status_code == 201, k1.text
    k2 = await client.post(f"/v1/admin/scenes/{scene.id}/keys",
                           json={"public_key": public_key_b64(new)}, headers=h)
    at = clock.now() + timedelta(days=7)
    retire = await client.post(f"/v1/admin/scenes/{scene.id}/keys/{k1.json()['key_id']}/retire",
                               json={"at": at.isoformat()}, headers=h)
    assert retire.status_code == 200, retire.text
    from app.auth import clients

    async with runtime.db.transaction() as s:
        view = await clients.get_client(s, creds["client_id"])
        keys = await clients.load_client_keys(s, view.id)
    assert keys is not None
    valid_now = {str(k.id) for k in keys.keys if k.valid_at(clock.now())}
    assert valid_now == {k1.json()["key_id"], k2.json()["key_id"]}  # the overlap
    valid_later = {str(k.id) for k in keys.keys if k.valid_at(at + timedelta(seconds=1))}
    assert valid_later == {k2.json()["key_id"]}
    bad = await client.post(f"/v1/admin/scenes/{scene.id}/keys",
                            json={"public_key": "not-a-key"}, headers=h)
    assert (bad.status_code, bad.json()["code"]) == (422, "auth.key_invalid")
    assert await count(runtime, "audit_log", "entity_id = :i AND action LIKE 'scenes.%'",
                       i=str(scene.id)) == 6  # register, behaviour, credentials, 2 keys, retire


async def test_keys_need_credentials_first(client: httpx.AsyncClient, runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    r = await client.post(f"/v1/admin/scenes/{scene.id}/keys",
                          json={"public_key": public_key_b64(Ed25519PrivateKey.generate())},
                          headers=admin_headers())
    assert (r.status_code, r.json()["code"]) == (422, "scene.no_credentials")
    assert await count(runtime, "scene_clients", "scene_id = :i", i=scene.id) == 0


async def test_art32_ending_a_scene_deactivates_its_partner(client: httpx.AsyncClient,
                                                            runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    partner = await make_partner(runtime, scene.id)
    ok = await partner.get(client, "/v1/partner/links/someone")
    assert ok.status_code == 200
    r = await client.patch(f"/v1/admin/scenes/{scene.id}", json={"status": "ended"},
                           headers=admin_headers())
    assert r.status_code == 200
    from app.auth import clients

    clients.invalidate_key_cache()
    refused = await partner.get(client, "/v1/partner/links/someone")
    assert (refused.status_code, refused.json()["code"]) == (401, "auth.client_inactive")
    creds = await client.post(f"/v1/admin/scenes/{scene.id}/credentials",
                              headers=admin_headers())
    assert (creds.status_code, creds.json()["code"]) == (409, "scene.not_active")


async def test_behaviours_per_scene(client: httpx.AsyncClient, runtime: Runtime) -> None:
    scene = await make_scene(runtime, behaviours=())
    h = admin_headers()
    url = f"/v1/admin/scenes/{scene.id}/behaviours"
    r = await client.post(url, json={"code": "ride_km", "name_zh": "乘车里程",
                                     "name_en": "Ride distance"}, headers=h)
    assert r.status_code == 201
    dup = await client.post(url, json={"code": "ride_km", "name_zh": "x", "name_en": "x"},
                            headers=h)
    assert (dup.status_code, dup.json()["code"]) == (409, "scene.behaviour_taken")
    bad = await client.post(url, json={"code": "Ride KM", "name_zh": "x", "name_en": "x"},
                            headers=h)
    assert bad.status_code == 422
    missing = await client.post(f"/v1/admin/scenes/{uuid.uuid4()}/behaviours",
                                json={"code": "walk", "name_zh": "x", "name_en": "x"},
                                headers=h)
    assert (missing.status_code, missing.json()["code"]) == (404, "scene.unknown")
    listed = await client.get(url, headers=admin_headers("auditor"))
    assert [b["code"] for b in listed.json()] == ["ride_km"]
    assert await count(runtime, "scene_behaviours", "scene_id = :i", i=scene.id) == 1
    async with runtime.db.transaction() as s:
        assert (await service.links_for_ingest(s, scene.id, []))[0].behaviours == {"ride_km"}


async def test_new_link_refused_for_suspended_scene(client: httpx.AsyncClient,
                                                    runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    citizen = await new_citizen(runtime)
    _, code = await grant(runtime, citizen, scene.code)
    partner = await make_partner(runtime, scene.id)
    await client.patch(f"/v1/admin/scenes/{scene.id}", json={"status": "suspended"},
                       headers=admin_headers())
    r = await partner.post(client, "/v1/partner/links",
                           {"link_code": code.code, "partner_user_ref": new_code("u")})
    assert (r.status_code, r.json()["code"]) == (409, "scene.not_active")
    assert await count(runtime, "partner_links", "scene_id = :i", i=scene.id) == 0
