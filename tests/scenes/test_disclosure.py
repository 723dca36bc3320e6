"""Disclosure (Art. 36): scenes and partners, rules in force and their history, conversion
rules, registered citizens — public, without authentication. Plus the OpenAPI and the seed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from app import clock
from app.runtime import Runtime
from scenes import rules
from scenes.seed import seed_demo
from tests.scenes.conftest import (
    admin_headers,
    count,
    free_conversion_start,
    grant,
    make_scene,
    new_citizen,
    publish_rule,
)

D = timedelta(days=1)


async def test_art36_public_scenes_list_partners(client: httpx.AsyncClient,
                                                 runtime: Runtime) -> None:
    """Art. 36: the operator publishes its scenes and their partners; no token needed."""
    scene = await make_scene(runtime, behaviours=("ride", "ride_km"))
    r = await client.get("/public/scenes")
    assert r.status_code == 200
    found = [s for s in r.json() if s["code"] == scene.code]
    assert len(found) == 1
    shown = found[0]
    assert shown["partner_name"] == "测试公交集团" and shown["status"] == "active"
    assert shown["category"]["code"] == "bus" and shown["category"]["name_zh"] == "公交出行"
    assert [b["code"] for b in shown["behaviours"]] == ["ride", "ride_km"]
    assert "agreement_ref" not in shown and "id" not in shown


async def test_art36_public_rules_in_force_and_history(client: httpx.AsyncClient,
                                                       runtime: Runtime) -> None:
    """Art. 36: published reduction rules with their history; drafts stay private."""
    scene = await make_scene(runtime)
    now = clock.now()
    old = await publish_rule(runtime, scene.id, factor="100", valid_from=now - 30 * D,
                             valid_to=now - D, now=now - 30 * D)
    current = await publish_rule(runtime, scene.id, factor="120", valid_from=now - D, now=now)
    draft = await client.post(f"/v1/admin/scenes/{scene.id}/reduction-rules", json={
        "behaviour": "ride", "unit": "trip", "grams_per_unit": "999",
        "valid_from": (now + 365 * D).isoformat()}, headers=admin_headers())
    assert draft.status_code == 201
    r = await client.get(f"/public/rules?scene={scene.code}")
    assert r.status_code == 200
    assert [(x["version"], x["grams_per_unit"], x["in_force"]) for x in r.json()] == [
        (old.version, "100", False), (current.version, "120", True)]
    r = await client.get(f"/public/rules?scene={scene.code}&in_force=true")
    assert [x["id"] for x in r.json()] == [str(current.id)]
    unknown = await client.get("/public/rules?scene=no-such-scene")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "scene.unknown")


async def test_art36_public_conversion_rules(client: httpx.AsyncClient,
                                             runtime: Runtime) -> None:
    start = await free_conversion_start(runtime)
    async with runtime.db.transaction() as s:
        pub = await rules.draft_conversion_rule(
            s, rules.ConversionRuleDraft(grams_per_point=25, valid_from=start,
                                         valid_to=start + D), actor="test")
        await rules.publish_conversion_rule(s, pub.id, allow_gap=True, actor="test")
        hidden = await rules.draft_conversion_rule(
            s, rules.ConversionRuleDraft(grams_per_point=26, valid_from=start + D),
            actor="test")
    r = await client.get("/public/conversion-rules")
    assert r.status_code == 200
    ids = {x["id"] for x in r.json()}
    assert str(pub.id) in ids and str(hidden.id) not in ids
    assert all(x["status"] == "published" for x in r.json())


async def test_art36_public_stats_count_registered_citizens(client: httpx.AsyncClient,
                                                            runtime: Runtime) -> None:
    """Art. 36: the number of registered citizens (注册人数) is public."""
    before = (await client.get("/public/stats")).json()
    citizen = await new_citizen(runtime)
    scene = await make_scene(runtime)
    await grant(runtime, citizen, scene.code)
    after = (await client.get("/public/stats")).json()
    assert after["registered_citizens"] == before["registered_citizens"] + 1
    assert after["registered_citizens"] == await count(runtime, "citizens",
                                                       "erased_at IS NULL")
    assert after["active_scenes"] == before["active_scenes"] + 1
    assert after["consenting_citizens"] == before["consenting_citizens"] + 1


async def test_openapi_shows_endpoints_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/admin/scenes", "post"), ("/v1/admin/scenes/{scene_id}", "patch"),
        ("/v1/admin/scenes/{scene_id}/reduction-rules", "post"),
        ("/v1/admin/reduction-rules/{rule_id}/publish", "post"),
        ("/v1/admin/conversion-rules", "post"), ("/v1/me/consents", "post"),
        ("/v1/me/consents/{consent_id}", "delete"), ("/v1/partner/links", "post"),
        ("/v1/partner/links/{partner_user_ref}", "get"), ("/public/scenes", "get"),
        ("/public/rules", "get"), ("/public/conversion-rules", "get"), ("/public/stats", "get"),
    ]:
        assert paths[path][method]["summary"], path
    schemas = spec["components"]["schemas"]
    for name in ("SceneCreate", "ReductionRuleDraft", "ConversionRuleDraft", "ConsentIn",
                 "LinkIn", "KeyIn", "BehaviourIn"):
        assert schemas[name]["examples"], name


async def test_seed_demo_is_idempotent_and_labelled(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        first = await seed_demo(s)
    async with runtime.db.transaction() as s:
        second = await seed_demo(s)
    assert first["demo"] and "demo-bus_client_secret" in first
    assert "demo-bus_client_secret" not in second
    assert await count(runtime, "scenes", "code IN ('demo-bus', 'demo-metro') AND is_demo "
                       "AND name_zh LIKE '【演示】%'") == 2
    assert await count(runtime, "reduction_rules r JOIN scenes s ON s.id = r.scene_id",
                       "s.code IN ('demo-bus', 'demo-metro') AND r.status = 'published'") == 3
    assert await count(runtime, "partner_links l JOIN scenes s ON s.id = l.scene_id",
                       "s.code IN ('demo-bus', 'demo-metro')") == 2
    assert await count(runtime, "conversion_rules", "status = 'published'") >= 1


def _invoke(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["scenes", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


async def test_cli_lists_scenes_and_rules(runtime: Runtime) -> None:
    scene = await make_scene(runtime)
    await publish_rule(runtime, scene.id, factor="26.9")
    code, out = await asyncio.to_thread(_invoke, "list")
    assert code == 0 and scene.code in out, out
    code, out = await asyncio.to_thread(_invoke, "rules", "--scene", scene.code)
    assert code == 0 and "26.9" in out and scene.code in out, out
    code, out = await asyncio.to_thread(_invoke, "rules", "--scene", "no-such-scene")
    assert code != 0
