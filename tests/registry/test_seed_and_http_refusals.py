"""Demo data, and refusals through HTTP that leave no partial state."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import func, select

from app.auth.tokens import issue_access_token
from app.runtime import Runtime
from registry.models import Project
from registry.reconcile import reconcile
from registry.seed import seed_demo
from tests.registry.factories import project_in, world


async def test_seed_demo_is_idempotent_and_consistent(runtime: Runtime) -> None:
    async with runtime.db.transaction() as s:
        first = await seed_demo(s)
    async with runtime.db.transaction() as s:
        again = await seed_demo(s)
        assert await reconcile(s) == []
    assert first["issued_tonnes"] == 10_000 and again == {"skipped": True}


async def test_refused_project_leaves_nothing_and_is_a_problem(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    """Art. 15: a refused application is problem+json with the rule's code; no row stays."""
    async with runtime.db.transaction() as s:
        w = await world(s)
        before = (await s.execute(select(func.count()).select_from(Project))).scalar_one()
    body = project_in(w.version_id, w.validator.id).model_dump(mode="json")
    body["operation_start"] = "2014-06-01"
    token = issue_access_token("org", uuid.uuid4(), scope_id=w.owner.id)
    r = await client.post("/v1/registry/projects", json=body,
                          headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422 and r.json()["code"] == "registry.operation_before_2014"
    assert r.headers["content-type"].startswith("application/problem+json")
    admin = issue_access_token("admin", uuid.uuid4(), roles={"registry_agency"})
    r = await client.post("/v1/registry/projects", json=body,
                          headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 403 and r.json()["code"] == "auth.wrong_kind"
    async with runtime.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Project))).scalar_one() == before


async def test_art36_disclosure_without_login_hides_drafts(
        runtime: Runtime, client: httpx.AsyncClient) -> None:
    async with runtime.db.transaction() as s:
        w = await world(s)
        from registry import projects
        from tests.registry.factories import ACTOR, at

        draft = await projects.create_project(s, w.owner.id, project_in(
            w.version_id, w.validator.id, title="草稿项目-不公开"), actor=ACTOR,
            now=at("2025-03-03"))
    r = await client.get("/public/registry/datasets/projects")
    assert r.status_code == 200
    assert draft.no not in {p["no"] for p in r.json()}
    r = await client.get("/public/registry/methodologies")
    assert r.status_code == 200 and all(m["status"] != "draft" for m in r.json())
    r = await client.get("/public/registry/datasets/issuances?format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.lstrip("\ufeff").startswith("project_no,instalment_no,vintage")
    r = await client.get("/public/registry/serials/not-a-serial")
    assert r.status_code == 422 and r.json()["code"] == "registry.serial_invalid"
