"""Reports of fraud (举报, Art. 41): anyone may report, without login; the registry agency
reads and closes them; bad input leaves nothing behind."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.auth.tokens import issue_access_token
from app.runtime import Runtime

URL = "/public/registry/reports"


@pytest.fixture
async def public(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client from its own address, so the per-address report limit starts empty."""
    host = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(host, 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def admin(*roles: str) -> dict[str, str]:
    token = issue_access_token("admin", uuid.uuid4(), roles=frozenset(roles))
    return {"Authorization": f"Bearer {token}"}


async def rows(runtime: Runtime) -> int:
    async with runtime.db.session() as s:
        return int((await s.execute(text("SELECT count(*) FROM registry_fraud_reports")))
                   .scalar_one())


async def test_art41_anyone_reports_fraud_and_the_registry_agency_closes_it(
        runtime: Runtime, public: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    """Art. 41: 任何单位和个人都有权举报 — no login; the contact is stored encrypted and shown
    only to the registry agency and the bureau; the agency closes the report once."""
    r = await public.post(URL, json={
        "subject": "project", "reference": "项目 12",
        "body": "监测数据与现场运行记录不一致，疑似篡改。",
        "reporter_name": "王先生", "contact": "13800000000"})
    assert r.status_code == 201, r.text
    receipt = r.json()
    assert receipt["status"] == "received" and receipt["subject"] == "project"
    anonymous = await public.post(URL, json={"subject": "trading",
                                             "body": "两个账户之间对倒成交，哄抬价格。"})
    assert anonymous.status_code == 201
    async with runtime.db.session() as s:
        stored = (await s.execute(text(
            "SELECT contact_enc FROM registry_fraud_reports WHERE id = :i"),
            {"i": receipt["id"]})).scalar_one()
        chain = (await s.execute(text(
            "SELECT data::text FROM audit_log WHERE entity_id = :i"),
            {"i": receipt["id"]})).scalars().all()
    assert stored is not None and b"13800000000" not in bytes(stored)
    assert chain and all("王先生" not in d and "13800000000" not in d for d in chain)

    for roles in ((), ("operator_admin",), ("exchange",), ("auditor",)):
        listed = await client.get("/v1/admin/registry/reports", headers=admin(*roles)
                                  if roles else {})
        assert listed.status_code in (401, 403), roles
    listed = await client.get("/v1/admin/registry/reports", params={"status": "received"},
                              headers=admin("registry_agency"))
    assert listed.status_code == 200
    mine = [x for x in listed.json() if x["id"] == receipt["id"]]
    assert [(x["contact"], x["reporter_name"], x["reference"]) for x in mine] == [
        ("13800000000", "王先生", "项目 12")]

    close = f"/v1/admin/registry/reports/{receipt['id']}/close"
    done = await client.post(close, json={"outcome": "已立案调查，撤销项目登记（第三十九条）"},
                             headers=admin("bureau"))
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "closed" and done.json()["closed_at"]
    again = await client.post(close, json={"outcome": "再次"}, headers=admin("bureau"))
    assert (again.status_code, again.json()["code"]) == (409, "registry.wrong_state")
    closed = await client.get("/v1/admin/registry/reports", params={"status": "closed"},
                              headers=admin("registry_agency"))
    assert receipt["id"] in [x["id"] for x in closed.json()]
    missing = await client.post(f"/v1/admin/registry/reports/{uuid.uuid4()}/close",
                                json={"outcome": "x"}, headers=admin("registry_agency"))
    assert (missing.status_code, missing.json()["code"]) == (404,
                                                             "registry.fraud_report_not_found")


@pytest.mark.parametrize("body", [
    {},
    {"subject": "project"},
    {"subject": "weather", "body": "这是一个足够长的举报内容。"},
    {"subject": "project", "body": "太短"},
    {"subject": "project", "body": "          "},
    {"subject": "project", "body": "x" * 5001},
    {"subject": "project", "body": "这是一个足够长的举报内容。", "reference": ""},
    {"subject": "project", "body": "这是一个足够长的举报内容。", "contact": "1"},
    {"subject": "project", "body": "这是一个足够长的举报内容。", "status": "closed"},
    {"subject": "project", "body": ["列表", "不是文本"]},
])
async def test_art41_bad_reports_are_problems_and_write_nothing(
        runtime: Runtime, public: httpx.AsyncClient, body: dict[str, Any]) -> None:
    before = await rows(runtime)
    r = await public.post(URL, json=body)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "request.invalid"
    assert await rows(runtime) == before


async def test_art41_reports_are_rate_limited_per_address(
        runtime: Runtime, public: httpx.AsyncClient) -> None:
    """The public surface stays open to everyone, so one address may file 5 a minute."""
    body = {"subject": "scene", "reference": "demo-bus", "body": "同一乘客一天上报上百次乘车。"}
    for _ in range(5):
        assert (await public.post(URL, json=body)).status_code == 201
    before = await rows(runtime)
    r = await public.post(URL, json=body)
    assert (r.status_code, r.json()["code"]) == (429, "public.rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert await rows(runtime) == before
