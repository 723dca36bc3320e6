"""Neutrality (Art. 27), judicial purchase (Art. 24), public-good cancellation and donation
(Art. 27), certificates with a QR code to the public verification page, and Art. 29 across
trading and offsets."""

from __future__ import annotations

import re

import httpx
from sqlalchemy import func, select, text

from app.errors import Conflict
from app.runtime import Runtime
from offsets.certificates import qr_matrix
from offsets.models import Retirement
from registry import service as registry
from tests.offsets.factories import bureau, holder
from tests.trading.factories import exchange, held, ok, refused, trader
from trading import service as trading


def _pdf_objects_ok(pdf: bytes) -> None:
    """The PDF's cross-reference table points at each object, and it ends properly."""
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    start = int(re.search(rb"startxref\n(\d+)\n", pdf).group(1))  # type: ignore[union-attr]
    assert pdf[start:start + 4] == b"xref"
    offsets = re.findall(rb"(\d{10}) 00000 n ", pdf[start:])
    for n, off in enumerate(offsets, start=1):
        assert pdf[int(off):].startswith(f"{n} 0 obj".encode())


def _qr_in(pdf: bytes) -> list[list[bool]]:
    """Rebuild the QR modules from the squares drawn in the content stream."""
    rects = [(float(x), float(y), float(m)) for x, y, m in
             re.findall(rb"([\d.]+) ([\d.]+) ([\d.]+) \3 re", pdf)]
    m = rects[0][2]
    x0, top = 60.0, 60.0 + 120.0
    size = round(120 / m)
    grid = [[False] * size for _ in range(size)]
    for x, y, _ in rects:
        grid[round((top - y) / m) - 1][round((x - x0) / m)] = True
    return grid


async def test_art27_carbon_neutrality_with_certificate_and_public_verification(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 27: an event states its emissions and cancels at least as many tonnes; the
    certificate's QR code opens the public page listing the cancelled serial ranges."""
    async with runtime.db.transaction() as s:
        org = await holder(s, 40)
    refused(await client.post("/v1/offsets/neutrality", headers=org.headers,
                              json={"subject_kind": "event", "subject_name": "2025 重庆马拉松",
                                    "emission_tonnes": 12, "quantity": 11}),
            "offsets.below_emissions", 422)
    r = ok(await client.post("/v1/offsets/neutrality", headers=org.headers,
                             json={"subject_kind": "event", "subject_name": "2025 重庆马拉松",
                                   "emission_tonnes": 12}), 201)
    assert r["kind"] == "neutrality" and r["quantity"] == 12 and r["serials"]
    assert r["certificate_no"].startswith("NEU-2025-")
    async with runtime.db.transaction() as s:
        assert await held(s, org.account_id) == {"held": 28, "locked": 0, "cancelled": 12}
    pdf = await client.get(f"/v1/offsets/retirements/{r['id']}/certificate.pdf",
                           headers=org.headers)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    _pdf_objects_ok(pdf.content)
    assert r["certificate_url"] == f"http://test/public/offsets/certificates/{r['certificate_no']}"
    assert _qr_in(pdf.content) == qr_matrix(r["certificate_url"])
    assert "".join(f"{ord(c):04X}" for c in "碳中和证书").encode() in pdf.content
    page = await client.get(r["certificate_url"].removeprefix("http://test"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for serial in r["serials"]:
        assert serial in page.text
    verified = ok(await client.get(r["certificate_url"].removeprefix("http://test"),
                                   params={"format": "json"}))
    assert {x["state"] for x in verified["registry"]} == {"cancelled"}
    # another holder cannot download it
    async with runtime.db.transaction() as s:
        other = await holder(s, 1)
    refused(await client.get(f"/v1/offsets/retirements/{r['id']}/certificate.pdf",
                             headers=other.headers), "offsets.retirement_not_found", 404)


async def test_a_persons_neutrality_is_public_with_the_name_masked(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    async with runtime.db.transaction() as s:
        org = await holder(s, 5)
    r = ok(await client.post("/v1/offsets/neutrality", headers=org.headers,
                             json={"subject_kind": "person", "subject_name": "王小明",
                                   "emission_tonnes": 2, "quantity": 3}), 201)
    assert r["subject"] == "王**" and r["quantity"] == 3
    records = ok(await client.get("/public/offsets/records", params={"kind": "neutrality"}))
    assert any(x["id"] == r["id"] and x["subject"] == "王**" for x in records)
    async with runtime.db.transaction() as s:
        blob = (await s.execute(text("SELECT subject_enc FROM offsets_retirements WHERE id = :i"),
                                {"i": r["id"]})).scalar_one()
    assert "王小明".encode() not in bytes(blob)
    assert "王小明" not in str(ok(await client.get("/public/registry/datasets/cancellations")))


async def test_art24_judicial_purchase_takes_only_ecological_sink_credits(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 24: ecological-sink credits serve judicial purchase; others are refused."""
    async with runtime.db.transaction() as s:
        plain = await holder(s, 20, "engineering")
        sink = await holder(s, 20, "ecological_sink")
    case = {"case_no": "(2025)渝0112刑初123号", "court": "重庆市渝北区人民法院",
            "defendant": "赵某某", "ordered_tonnes": 8}
    async with runtime.db.transaction() as s:
        before = (await s.execute(select(func.count()).select_from(Retirement))).scalar_one()
    refused(await client.post("/v1/offsets/judicial", headers=plain.headers,
                              json={**case, "category": "engineering"}),
            "offsets.not_ecological_sink", 422)
    refused(await client.post("/v1/offsets/judicial", headers=plain.headers, json=case),
            "registry.insufficient_credits", 409)
    async with runtime.db.transaction() as s:
        assert (await s.execute(select(func.count()).select_from(Retirement))).scalar_one() \
            == before
        assert await held(s, plain.account_id) == {"held": 20, "locked": 0, "cancelled": 0}
    r = ok(await client.post("/v1/offsets/judicial", headers=sink.headers, json=case), 201)
    assert (r["kind"], r["quantity"], r["category"], r["case_no"]) == (
        "judicial", 8, "ecological_sink", case["case_no"])
    assert r["subject"] == "赵**"
    cancellations = ok(await client.get("/public/registry/datasets/cancellations"))
    mine = [c for c in cancellations if c["serials"] == " ".join(r["serials"])]
    assert mine[0]["purpose"] == "judicial" and case["case_no"] in mine[0]["beneficiary"]
    public = ok(await client.get("/public/offsets/records", params={"kind": "judicial"}))
    assert any(x["case_no"] == case["case_no"] and x["court"] == case["court"] for x in public)
    pdf = await client.get(f"/v1/offsets/retirements/{r['id']}/certificate.pdf",
                           headers=sink.headers)
    _pdf_objects_ok(pdf.content)
    assert "".join(f"{ord(c):04X}" for c in "司法认购证明").encode() in pdf.content


async def test_art27_public_good_cancellation_and_donation(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 27: owners may cancel credits for the public good or donate them."""
    async with runtime.db.transaction() as s:
        org = await holder(s, 30)
        charity = await holder(s, 1)
    good = ok(await client.post("/v1/offsets/public-good", headers=org.headers,
                                json={"quantity": 5, "beneficiary": "长江生态保护公益基金"}), 201)
    assert good["kind"] == "public_good"
    gift = ok(await client.post("/v1/offsets/donations", headers=org.headers,
                                json={"to_organisation_id": str(charity.org_id),
                                      "quantity": 7}), 201)
    assert gift["kind"] == "donation" and gift["beneficiary"] == charity.name
    async with runtime.db.transaction() as s:
        assert await held(s, org.account_id) == {"held": 18, "locked": 0, "cancelled": 5}
        assert await held(s, charity.account_id) == {"held": 8, "locked": 0, "cancelled": 0}
    verified = ok(await client.get(f"/public/offsets/certificates/{gift['certificate_no']}",
                                   params={"format": "json"}))
    assert {x["state"] for x in verified["registry"]} == {"held"}
    cancellations = ok(await client.get("/public/registry/datasets/cancellations"))
    assert any(c["purpose"] == "public_good" and c["serials"] == " ".join(good["serials"])
               for c in cancellations)
    refused(await client.post("/v1/offsets/donations", headers=org.headers,
                              json={"to_organisation_id": str(org.org_id), "quantity": 1}),
            "offsets.donation_to_self", 422)


async def test_art29_cancelled_credits_can_never_be_used_traded_or_cancelled_again(
        client: httpx.AsyncClient, runtime: Runtime, market: str) -> None:
    """Art. 29: credits cancelled for compliance or neutrality can never be used again, in
    trading or in offsets, and each cancellation is public."""
    async with runtime.db.transaction() as s:
        entity = await holder(s, 10, kind="covered_entity")
        acct = await trading.open_account(s, trading.AccountIn(organisation_id=entity.org_id),
                                          actor="test")
        buyer = await trader(s, funds=1_000_000)
    ok(await client.put("/v1/admin/offsets/caps/2025/engineering", json={"cap_bps": 10000},
                        headers=bureau()))
    ok(await client.put(f"/v1/admin/offsets/emissions/{entity.org_id}/2025",
                        json={"verified_tonnes": 100}, headers=bureau()))
    app = ok(await client.post("/v1/offsets/compliance", headers=entity.headers,
                               json={"year": 2025, "category": "engineering", "quantity": 4}),
             201)
    ok(await client.post(f"/v1/admin/offsets/compliance/{app['id']}/confirm", headers=bureau()))
    neutral = ok(await client.post("/v1/offsets/neutrality", headers=entity.headers,
                                   json={"subject_kind": "organisation",
                                         "subject_name": "本单位 2025 年运营",
                                         "emission_tonnes": 6}), 201)
    async with runtime.db.transaction() as s:
        assert await held(s, entity.account_id) == {"held": 0, "locked": 0, "cancelled": 10}
    h = entity.headers
    attempts = [
        ("/v1/trading/orders", {"product": market, "side": "sell", "price_fen": 5000,
                                "quantity": 1}),
        ("/v1/trading/deals", {"buyer_account_id": str(buyer.account_id),
                               "category": "engineering", "quantity": 1, "price_fen": 5000}),
        ("/v1/offsets/compliance", {"year": 2025, "category": "engineering", "quantity": 1}),
        ("/v1/offsets/neutrality", {"subject_kind": "event", "subject_name": "again",
                                    "emission_tonnes": 1}),
        ("/v1/offsets/public-good", {"quantity": 1, "beneficiary": "again"}),
        ("/v1/offsets/donations", {"to_organisation_id": str(buyer.org_id), "quantity": 1}),
        ("/v1/registry/cancellations", {"quantity": 1, "purpose": "voluntary",
                                        "beneficiary": "again"}),
    ]
    for path, body in attempts:
        refused(await client.post(path, json=body, headers=h), "registry.insufficient_credits",
                409)
    # nor can the registry's cancellation be repeated on its lock
    async with runtime.db.transaction() as s:
        lock_id = (await s.execute(text("SELECT lock_id FROM offsets_compliance WHERE id = :i"),
                                   {"i": app["id"]})).scalar_one()
    async with runtime.db.transaction() as s:
        try:
            await registry.cancel_locked(s, lock_id, purpose="compliance", beneficiary="again")
            raise AssertionError("cancelled twice")
        except Conflict as exc:
            assert exc.code == "registry.lock_not_active"
    # every cancellation is public, with its serials
    public = ok(await client.get("/public/registry/datasets/cancellations"))
    serials = {c["serials"]: c["purpose"] for c in public}
    async with runtime.db.transaction() as s:
        confirmed = (await s.execute(text("SELECT serials FROM offsets_compliance WHERE id = :i"),
                                     {"i": app["id"]})).scalar_one()
    assert serials[" ".join(confirmed)] == "compliance"
    assert serials[" ".join(neutral["serials"])] == "neutrality"
    for serial in [*confirmed, *neutral["serials"]]:
        found = ok(await client.get(f"/public/registry/serials/{serial}"))
        assert found["state"] == "cancelled"
    account = ok(await client.get(f"/v1/admin/trading/accounts/{acct.id}", headers=exchange()))
    assert account["available_fen"] == 0
