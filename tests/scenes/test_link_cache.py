"""Ingestion's link cache (issue 6): links and consents are cached per process, and every
change of a scene's consents or partner links is seen by the very next batch (Art. 34), as is
a scene's suspension (Art. 32). Real PostgreSQL, real API; the caches are the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import httpx
import orjson
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from app import clock
from app.runtime import Runtime
from ingestion import errors as E
from scenes import consent as consents
from scenes import service
from scenes.lookup import Link, LinkCache, link_cache
from scenes.schemas import ConsentIn
from tests.ingestion.conftest import Partner, make_partner
from tests.scenes.conftest import admin_headers, citizen_headers, new_citizen

LINKS_PATH = "/v1/partner/links"


# ----------------------------------------------------------------------------- helpers


@asynccontextmanager
async def sql_sent(session: AsyncSession) -> AsyncIterator[list[str]]:
    """Every statement sent on the session's connection while the block runs: through
    SQLAlchemy and straight on its asyncpg connection (transaction control and asyncpg's own
    type introspection, sent once per connection and type, left out)."""
    seen: list[str] = []

    def through_sqlalchemy(conn, cursor, statement, params, context, many):  # type: ignore[no-untyped-def]
        seen.append(statement)

    def on_driver(query: Any) -> None:
        q = query.query.rstrip(";").upper()
        if q.split(" ", 1)[0] not in ("BEGIN", "COMMIT", "ROLLBACK") \
                and "TYPEINFO_TREE" not in q:
            seen.append(query.query)

    conn = await session.connection()
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    engine = conn.sync_engine
    event.listen(engine, "before_cursor_execute", through_sqlalchemy)
    raw.add_query_logger(on_driver)
    try:
        yield seen
    finally:
        raw.remove_query_logger(on_driver)
        event.remove(engine, "before_cursor_execute", through_sqlalchemy)


async def lookup(
    runtime: Runtime, scene_id: UUID, refs: list[str], cache: LinkCache
) -> dict[str, Link]:
    async with runtime.db.transaction() as s:
        _info, links = await service.links_for_ingest(s, scene_id, refs, cache=cache)
    return links


async def post(client: httpx.AsyncClient, p: Partner, *events: dict[str, Any]) -> list[Any]:
    r = await p.post(client, list(events))
    assert r.status_code == 200, r.text
    return [(x["status"], x.get("code")) for x in r.json()["results"]]


async def partner_links(client: httpx.AsyncClient, p: Partner, code: str, ref: str) -> None:
    body = orjson.dumps({"link_code": code, "partner_user_ref": ref})
    r = await client.post(LINKS_PATH, content=body, headers=p.signed(body, path=LINKS_PATH))
    assert r.status_code == 201, r.text


async def grant_via_api(client: httpx.AsyncClient, p: Partner, citizen: UUID) -> Any:
    r = await client.post("/v1/me/consents", headers=citizen_headers(citizen), json={
        "scene_code": p.scene_code, "privacy_notice_version": "2024-09"})
    assert r.status_code == 201, r.text
    return r.json()


def now_minus(**kw: float) -> dt.datetime:
    return clock.now() - dt.timedelta(**kw)


ACCEPTED = ("accepted", None)
NOT_LINKED = ("rejected", E.NOT_LINKED)
NO_CONSENT = ("rejected", E.CONSENT_ABSENT)


# ----------------------------------------------------------------------------- Art. 34


async def test_art34_revocation_counts_from_the_next_batch_with_the_cache_warm(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """Art. 34: the citizen revokes through the API between two batches of the same process;
    the second batch, its ref cached by the first, refuses the event after the revocation
    (and still takes the one before it)."""
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    assert await post(client, p, p.event(ref)) == [ACCEPTED]
    assert isinstance(link_cache.cached(p.scene_id, ref), Link)  # warm
    r = await client.delete(f"/v1/me/consents/{p.consents[ref]}",
                            headers=citizen_headers(citizen))
    assert r.status_code == 200, r.text
    before, after = p.event(ref, at=now_minus(hours=1)), p.event(ref, at=clock.now())
    assert await post(client, p, before, after) == [ACCEPTED, NO_CONSENT]


async def test_art34_regrant_after_revocation_is_seen_by_the_next_batch(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """Art. 34: after a revocation, a new consent (a new record) counts from the next batch;
    the time between the two stays refused."""
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    await client.delete(f"/v1/me/consents/{p.consents[ref]}", headers=citizen_headers(citizen))
    gap = p.event(ref, at=clock.now())
    assert await post(client, p, gap) == [NO_CONSENT]
    await grant_via_api(client, p, citizen)
    assert await post(client, p, p.event(ref, at=clock.now()), gap) == [ACCEPTED, NO_CONSENT]


async def test_art34_a_newly_linked_ref_is_taken_at_once(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """A ref cached as "not linked" is linked through the partner API: the next batch takes
    its events (the link logs the ref, which drops the cached "not linked")."""
    p = await make_partner(runtime, citizens=1)
    newcomer = "new-" + secrets.token_hex(4)
    assert await post(client, p, p.event(newcomer)) == [NOT_LINKED]
    assert link_cache.cached(p.scene_id, newcomer) is None  # a cached negative answer
    citizen = await new_citizen(runtime)
    granted = await grant_via_api(client, p, citizen)
    await partner_links(client, p, granted["link"]["link_code"], newcomer)
    assert await post(client, p, p.event(newcomer, at=clock.now())) == [ACCEPTED]


async def test_art34_unlinking_is_seen_by_the_next_batch(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """A partner link removed in the database (an operator's correction; no API removes one)
    stops the ref's events on the next batch."""
    p = await make_partner(runtime, citizens=2)
    gone, kept = list(p.citizens)
    assert await post(client, p, p.event(gone), p.event(kept)) == [ACCEPTED, ACCEPTED]
    async with runtime.db.transaction() as s:
        await s.execute(text("DELETE FROM partner_links WHERE scene_id = :s AND "
                             "partner_user_ref = :r"), {"s": p.scene_id, "r": gone})
    assert await post(client, p, p.event(gone), p.event(kept)) == [NOT_LINKED, ACCEPTED]


async def test_art34_account_deletion_is_seen_by_the_next_batch(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """PIPL 删除权 / Art. 34: ``DELETE /v1/me`` revokes every consent; the next batch refuses
    the citizen's later events, and another citizen's still count."""
    p = await make_partner(runtime, citizens=2)
    (gone, citizen), (kept, _) = list(p.citizens.items())
    assert await post(client, p, p.event(gone), p.event(kept)) == [ACCEPTED, ACCEPTED]
    r = await client.delete("/v1/me", headers=citizen_headers(citizen))
    assert r.status_code == 200 and r.json()["consents_revoked"] == 1, r.text
    assert await post(client, p, p.event(gone, at=clock.now()), p.event(kept)) == [
        NO_CONSENT, ACCEPTED]


# ----------------------------------------------------------------------------- Art. 32


async def test_art32_a_suspension_is_refused_from_the_next_batch(
    runtime: Runtime, client: httpx.AsyncClient,
) -> None:
    """Art. 32: suspended through the admin API, or by another process (a plain UPDATE that
    drops nothing in this process's caches), the scene's next batch is refused with
    ``scene.not_active``; resumed, it is taken again."""
    p = await make_partner(runtime, citizens=1)
    ref = next(iter(p.citizens))
    assert await post(client, p, p.event(ref)) == [ACCEPTED]
    admin = admin_headers()
    path = f"/v1/admin/scenes/{p.scene_id}"
    r = await client.patch(path, json={"status": "suspended"}, headers=admin)
    assert r.status_code == 200, r.text
    refused = await p.post(client, [p.event(ref)])
    assert (refused.status_code, refused.json()["code"]) == (409, "scene.not_active")
    r = await client.patch(path, json={"status": "active"}, headers=admin)
    assert await post(client, p, p.event(ref)) == [ACCEPTED]
    async with runtime.db.transaction() as s:
        await s.execute(text("UPDATE scenes SET status = 'suspended' WHERE id = :s"),
                        {"s": p.scene_id})
    refused = await p.post(client, [p.event(ref)])
    assert (refused.status_code, refused.json()["code"]) == (409, "scene.not_active")


# ----------------------------------------------------------------------------- the cache


async def test_a_warm_batch_sends_one_query_and_no_links_query(runtime: Runtime) -> None:
    """The second batch with the same refs (linked and not) sends only the scene's version
    query; the first sent the links query once for all refs."""
    p = await make_partner(runtime, citizens=3)
    refs = [*p.citizens, "nobody-" + secrets.token_hex(3)]
    cache = LinkCache()
    async with runtime.db.transaction() as s, sql_sent(s) as sent:
        _info, first = await service.links_for_ingest(s, p.scene_id, refs, cache=cache)
    assert set(first) == set(p.citizens)
    assert len(sent) == 2 and "links_version" in sent[0] and "partner_links" in sent[1]
    async with runtime.db.transaction() as s, sql_sent(s) as sent:
        info, again = await service.links_for_ingest(s, p.scene_id, refs, cache=cache)
    assert again == first and all(again[r] is first[r] for r in first)
    assert len(sent) == 1 and "links_version" in sent[0] and "partner_links" not in sent[0]
    assert info.accepting and info.behaviours == {p.behaviour}


async def test_after_a_change_only_the_changed_citizen_is_read_again(runtime: Runtime) -> None:
    """A revocation drops exactly its citizen's entry: the next lookup reads the change log
    and the links of that one ref, and sees the revocation."""
    p = await make_partner(runtime, citizens=3)
    refs = list(p.citizens)
    cache = LinkCache()
    await lookup(runtime, p.scene_id, refs, cache)
    changed = refs[0]
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, p.citizens[changed], p.consents[changed])
    async with runtime.db.transaction() as s, sql_sent(s) as sent:
        _info, links = await service.links_for_ingest(s, p.scene_id, refs, cache=cache)
    assert len(sent) == 3 and "scene_link_changes" in sent[1] and "partner_links" in sent[2]
    assert not links[changed].consenting_now
    assert all(links[r].consenting_now for r in refs[1:])
    assert all(cache.cached(p.scene_id, r) for r in refs)


async def test_two_independent_caches_both_see_a_change(runtime: Runtime) -> None:
    """Two caches (as in two processes) warmed on the same scene both see a revocation, a
    re-grant and a new link made after they were warmed."""
    p = await make_partner(runtime, citizens=2)
    ref, other = list(p.citizens)
    newcomer = "new-" + secrets.token_hex(4)
    refs = [ref, other, newcomer]
    a, b = LinkCache(), LinkCache()
    for cache in (a, b):
        links = await lookup(runtime, p.scene_id, refs, cache)
        assert links[ref].consenting_now and newcomer not in links
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, p.citizens[ref], p.consents[ref])
    for cache in (a, b):
        links = await lookup(runtime, p.scene_id, refs, cache)
        assert not links[ref].consenting_now and links[other].consenting_now
    citizen = await new_citizen(runtime)
    async with runtime.db.transaction() as s:
        await consents.grant_consent(s, p.citizens[ref], ConsentIn(
            scene_code=p.scene_code, privacy_notice_version="2024-09"))
        _granted, code = await consents.grant_consent(s, citizen, ConsentIn(
            scene_code=p.scene_code, privacy_notice_version="2024-09"))
        await consents.redeem_link_code(s, p.scene_id, link_code=code.code,
                                        partner_user_ref=newcomer)
    for cache in (a, b):
        links = await lookup(runtime, p.scene_id, refs, cache)
        assert links[ref].consenting_now and len(links[ref].intervals) == 2
        assert links[newcomer].citizen_id == citizen and links[newcomer].consenting_now


async def test_art34_concurrent_batches_never_cache_a_link_older_than_a_committed_change(
    runtime: Runtime,
) -> None:
    """Art. 34 under real concurrency: readers on their own connections look links up while
    a writer revokes and re-grants in its own transactions. Every lookup sees every change
    committed before it started, and at the end the cache equals a fresh read."""
    p = await make_partner(runtime, citizens=6)
    refs = list(p.citizens)
    cache = LinkCache()
    committed: list[tuple[str, UUID, bool]] = []  # (ref, consent id, revoked?) in commit order
    done = asyncio.Event()
    checked = 0

    async def writer() -> None:
        current = dict(p.consents)
        for i in range(30):
            ref = refs[i % len(refs)]
            async with runtime.db.transaction() as s:
                await consents.revoke_consent(s, p.citizens[ref], current[ref])
            committed.append((ref, current[ref], True))
            async with runtime.db.transaction() as s:
                granted, _code = await consents.grant_consent(s, p.citizens[ref], ConsentIn(
                    scene_code=p.scene_code, privacy_notice_version="2024-09"))
            current[ref] = granted.id
            committed.append((ref, granted.id, False))
            await asyncio.sleep(0)
        done.set()

    async def reader() -> None:
        nonlocal checked
        while not done.is_set():
            known = list(committed)  # committed before this lookup starts
            links = await lookup(runtime, p.scene_id, refs, cache)
            for ref, consent_id, revoked in known:
                ids = links[ref].consent_ids
                assert consent_id in ids, (ref, consent_id)  # a grant committed before
                if revoked:  # a revocation committed before
                    assert links[ref].intervals[ids.index(consent_id)][1] is not None
            checked += 1

    await asyncio.gather(writer(), *(reader() for _ in range(4)))
    assert checked > 20
    async with runtime.db.transaction() as s:
        fresh = await service.resolve_links(s, p.scene_id, refs)
    assert await lookup(runtime, p.scene_id, refs, cache) == fresh


async def test_memory_cap_starts_a_scene_over_and_answers_stay_exact(runtime: Runtime) -> None:
    """Past ``max_refs`` the scene's entries are dropped before new ones are stored; the
    answers are those of a fresh read either way."""
    p = await make_partner(runtime, citizens=3)
    refs = list(p.citizens)
    cache = LinkCache(max_refs=3)
    unknown = [f"x-{i}" for i in range(2)]
    await lookup(runtime, p.scene_id, refs, cache)
    assert cache.size() == 3
    links = await lookup(runtime, p.scene_id, unknown, cache)
    assert links == {} and cache.size() == 2
    assert all(cache.cached(p.scene_id, r) is False for r in refs)
    async with runtime.db.transaction() as s:
        fresh = await service.resolve_links(s, p.scene_id, refs)
    assert await lookup(runtime, p.scene_id, refs, cache) == fresh


# ----------------------------------------------------------------------------- the change log


async def _changes(runtime: Runtime, scene_id: UUID) -> list[tuple[int, UUID, str | None]]:
    async with runtime.db.session() as s:
        rows = (await s.execute(text(
            "SELECT version, citizen_id, partner_user_ref FROM scene_link_changes "
            "WHERE scene_id = :s ORDER BY version"), {"s": scene_id})).all()
    return [(r[0], r[1], r[2]) for r in rows]


async def test_every_consent_and_link_change_bumps_the_version_and_is_logged(
    runtime: Runtime,
) -> None:
    """The triggers: a grant and a link log the citizen (the link also its ref) under
    consecutive versions, the last equal to the scene's ``links_version``; a moved link logs
    its old and its new ref. (They run at commit: the version does not move before.)"""
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    assert await _changes(runtime, p.scene_id) == [(1, citizen, None), (2, citizen, ref)]
    version_sql = text("SELECT links_version FROM scenes WHERE id = :s")
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, citizen, p.consents[ref])
        await s.execute(text("UPDATE partner_links SET partner_user_ref = 'moved' "
                             "WHERE scene_id = :s"), {"s": p.scene_id})
        assert await s.scalar(version_sql, {"s": p.scene_id}) == 2
    async with runtime.db.session() as s:
        version = await s.scalar(version_sql, {"s": p.scene_id})
    assert await _changes(runtime, p.scene_id) == [
        (1, citizen, None), (2, citizen, ref), (3, citizen, None), (4, citizen, ref),
        (5, citizen, "moved")]
    assert version == 5


async def test_concurrent_writers_of_a_scene_get_distinct_consecutive_versions(
    runtime: Runtime,
) -> None:
    """Ten citizens consent at the same time in ten transactions that commit together: the
    scene's row lock serialises them into versions 1..10 with one change each, none lost or
    doubled."""
    p = await make_partner(runtime, citizens=0)
    citizens = [await new_citizen(runtime) for _ in range(10)]

    async def consent(citizen: UUID) -> None:
        async with runtime.db.transaction() as s:
            await consents.grant_consent(s, citizen, ConsentIn(
                scene_code=p.scene_code, privacy_notice_version="2024-09"))
            await asyncio.sleep(0.01)  # all ten in flight before any commits

    await asyncio.gather(*(consent(c) for c in citizens))
    changes = await _changes(runtime, p.scene_id)
    assert [v for v, _, _ in changes] == list(range(1, 11))
    assert sorted(c for _, c, _ in changes) == sorted(citizens)


async def test_a_cache_behind_a_trimmed_log_starts_the_scene_over(runtime: Runtime) -> None:
    """Trimmed changes cannot be replayed: a cache behind them drops the scene's entries (the
    untouched ref too) and reads again, so the revocation is still seen. So does a cache more
    than ``MAX_REPLAY`` changes behind."""
    p = await make_partner(runtime, citizens=2)
    ref, other = list(p.citizens)
    cache = LinkCache()
    await lookup(runtime, p.scene_id, [ref, other], cache)
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, p.citizens[ref], p.consents[ref])
    async with runtime.db.transaction() as s:
        deleted = await service.trim_link_changes(s, now=clock.now() + dt.timedelta(days=2))
    assert deleted >= 1 and await _changes(runtime, p.scene_id) == []
    links = await lookup(runtime, p.scene_id, [ref], cache)
    assert not links[ref].consenting_now
    assert cache.cached(p.scene_id, other) is False  # dropped with the scene

    await lookup(runtime, p.scene_id, [other], cache)
    async with runtime.db.transaction() as s:
        await consents.revoke_consent(s, p.citizens[other], p.consents[other])
        await s.execute(text("UPDATE scenes SET links_version = links_version + 20000 "
                             "WHERE id = :s"), {"s": p.scene_id})
    async with runtime.db.transaction() as s, sql_sent(s) as sent:
        _info, links = await service.links_for_ingest(s, p.scene_id, [other], cache=cache)
    assert not links[other].consenting_now
    assert not any("scene_link_changes" in q for q in sent)  # not replayed: dropped


async def test_the_trim_job_deletes_changes_older_than_a_day(runtime: Runtime) -> None:
    """``serve``'s background job deletes the changes logged more than a day ago and keeps
    the recent ones; it stops when told to."""
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    async with runtime.db.transaction() as s:
        await s.execute(text("UPDATE scene_link_changes SET changed_at = now() - "
                             "interval '25 hours' WHERE scene_id = :s"), {"s": p.scene_id})
        await consents.revoke_consent(s, citizen, p.consents[ref])
    assert [v for v, _, _ in await _changes(runtime, p.scene_id)] == [1, 2, 3]
    stop = asyncio.Event()
    job = asyncio.create_task(service.run_link_change_trim(runtime, stop, interval_s=0.05))
    for _ in range(100):
        if [v for v, _, _ in await _changes(runtime, p.scene_id)] == [3]:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(job, timeout=5)
    assert [v for v, _, _ in await _changes(runtime, p.scene_id)] == [3]


async def test_tanhui_scenes_trim_link_changes(runtime: Runtime) -> None:
    """The command line trims by hand: changes older than ``--keep-hours`` go."""
    from typer.testing import CliRunner

    from app.cli import cli

    p = await make_partner(runtime, citizens=1)
    async with runtime.db.transaction() as s:
        await s.execute(text("UPDATE scene_link_changes SET changed_at = now() - "
                             "interval '3 hours' WHERE scene_id = :s AND version = 1"),
                        {"s": p.scene_id})
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["scenes", "trim-link-changes", "--keep-hours", "2"])
    assert result.exit_code == 0, result.output
    assert "deleted" in result.output
    assert [v for v, _, _ in await _changes(runtime, p.scene_id)] == [2]


async def test_art34_a_read_that_predates_a_change_is_not_cached(runtime: Runtime) -> None:
    """Art. 34, the race the cache must not lose: batch X reads links with a snapshot taken
    before a revocation (as a slow statement would; a REPEATABLE READ transaction holds that
    snapshot for the test), while batch Y has already moved the cache past the revocation.
    X may use its older answer (X started before the revocation) but must not cache it: the
    next batch sees the revocation."""
    p = await make_partner(runtime, citizens=1)
    ref, citizen = next(iter(p.citizens.items()))
    cache = LinkCache()
    await lookup(runtime, p.scene_id, [], cache)  # the cache knows the scene's version
    async with runtime.db.engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        x = AsyncSession(bind=conn)
        version = await x.scalar(text("SELECT links_version FROM scenes WHERE id = :s"),
                                 {"s": p.scene_id})  # X's snapshot
        async with runtime.db.transaction() as s:
            await consents.revoke_consent(s, citizen, p.consents[ref])
        await lookup(runtime, p.scene_id, [], cache)  # Y: the cache moves past the change
        assert cache.scenes[p.scene_id].version == version + 1
        _info, old = await service.links_for_ingest(x, p.scene_id, [ref], cache=cache)
        assert old[ref].consenting_now  # X's snapshot predates the revocation
        await x.close()
    assert cache.cached(p.scene_id, ref) is False
    assert not (await lookup(runtime, p.scene_id, [ref], cache))[ref].consenting_now


async def test_migration_0011_downgrades_to_0010_and_back() -> None:
    """Revision 0011 on a scratch database: its column, table, functions and triggers are
    there at head, all gone after a downgrade to 0010, and back after an upgrade."""
    import asyncpg
    from alembic import command

    from app.migrations import alembic_config
    from tests.conftest import PG_ADMIN_URL, RUN_ID, _admin_exec

    name = f"tanhui_test_{RUN_ID}_m0011"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    objects = (
        "SELECT (SELECT count(*) FROM information_schema.columns WHERE table_name = 'scenes' "
        "AND column_name = 'links_version') "
        "+ (SELECT count(*) FROM pg_class WHERE relname = 'scene_link_changes') "
        "+ (SELECT count(*) FROM pg_proc WHERE proname IN ('scenes_link_change', "
        "'scenes_consents_changed', 'scenes_partner_links_changed')) "
        "+ (SELECT count(*) FROM pg_trigger WHERE tgname IN ('consents_links_version', "
        "'partner_links_links_version'))"
    )
    await _admin_exec(f'CREATE DATABASE "{name}"')
    try:
        cfg = alembic_config(url)
        await asyncio.to_thread(command.upgrade, cfg, "head")

        async def count() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval(objects))
            finally:
                await conn.close()

        assert await count() == 7
        await asyncio.to_thread(command.downgrade, cfg, "0010")
        assert await count() == 0
        await asyncio.to_thread(command.upgrade, cfg, "head")
        assert await count() == 7
    finally:
        await _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
