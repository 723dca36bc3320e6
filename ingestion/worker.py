"""The points worker (积分入账): consume event batches from the bus and credit points.

Each consumer loops: take a batch (thousands of events), credit it in **one database
transaction** (rules, caps, ledger, dead letters), and only then commit the batch on the bus.
A crash anywhere loses nothing (the batch comes back) and doubles nothing (the ledger is
unique on ``(scene, event_id)``). Several consumers — in one process (``--consumers``) or in
several processes — share the load: a Kafka consumer group, or ``SKIP LOCKED`` on the
PostgreSQL queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

import msgspec
import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from app import clock
from app.bus import Batch, BusUnavailable, Consumer, Message
from app.runtime import Runtime, tune_gc
from ingestion import errors as E
from ingestion import metrics
from ingestion.crediting import (
    DeadLetter,
    Outcome,
    apply_caps,
    by_pair,
    price_events,
    rule_pairs,
    store_dead_letters,
    uuid_text,
)
from ingestion.schemas import RawBusEvent, raw_bus_decoder
from ingestion.service import ensure_topic, events_topic, worker_group

log = structlog.get_logger()

MAX_MESSAGES = 400  # bus messages per batch (each holds one request's events of one bucket)
POLL_TIMEOUT_S = 0.5
LAG_EVERY_S = 5.0
GIVE_UP_AFTER = 5  # attempts at a batch that fails for a non-transient reason


def decode_messages(
    messages: Sequence[Message],
) -> tuple[list[RawBusEvent], list[bytes], list[DeadLetter]]:
    """The batch's events and their bus keys (aligned), and the undecodable messages."""
    events: list[RawBusEvent] = []
    keys: list[bytes] = []
    dead: list[DeadLetter] = []
    for m in messages:
        try:
            envelope = raw_bus_decoder.decode(m.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            dead.append(DeadLetter(m.key, m.value, E.DL_DECODE, str(exc)[:500]))
            continue
        events.extend(envelope.events)
        keys.extend([m.key] * len(envelope.events))
    return events, keys, dead


def _unique(events: list[RawBusEvent], keys: list[bytes]) -> tuple[
        list[RawBusEvent], list[bytes], int]:
    """Keep the first of each (scene, event_id) in the batch; count the repeats."""
    seen: set[tuple[bytes, str]] = set()
    kept: list[int] = []
    for i, ev in enumerate(events):
        k = (ev.scene_id, ev.event_id)
        if k not in seen:
            seen.add(k)
            kept.append(i)
    if len(kept) == len(events):
        return events, keys, 0
    return [events[i] for i in kept], [keys[i] for i in kept], len(events) - len(kept)


async def credit_messages(
    runtime: Runtime, messages: Sequence[Message], *, topic: str | None = None,
) -> Outcome:
    """Credit one bus batch in one transaction; return what happened.

    A redelivered batch (the worker died after the database commit, before the bus commit)
    holds events already in the ledger. The first attempt writes as if every event were new;
    the ledger's unique index then refuses the write (``ConcurrentCredit``) and the batch is
    redone looking its events up in the ledger first: those are duplicates, left out before
    the caps are computed, so the caps never count an event twice.
    """
    from points.errors import ConcurrentCredit

    topic = topic or events_topic(runtime.settings)
    decoded, keys, dead = decode_messages(messages)
    events, keys, repeats = _unique(decoded, keys)
    probe = False  # first as if every event were new: the ledger's unique index says if not
    for _ in range(4):
        try:
            outcome = await _credit_once(runtime, topic, events, keys, dead, probe=probe)
        except ConcurrentCredit:
            probe = True
            continue
        outcome.duplicates += repeats
        return outcome
    raise RuntimeError("the batch kept meeting duplicates")


async def _credit_once(
    runtime: Runtime, topic: str, events: list[RawBusEvent], keys: list[bytes],
    dead: list[DeadLetter], *, probe: bool,
) -> Outcome:
    from points import service as points
    from scenes import service as scenes

    outcome = Outcome()
    now = clock.now()
    async with runtime.db.transaction() as session:
        dead = list(dead)
        if events and probe:
            known = await points.known_credits(
                session, [uuid_text(ev.scene_id) for ev in events],
                [ev.event_id for ev in events])
            if known:
                outcome.duplicates = len(known)
                kept = [i for i in range(len(events)) if i not in known]
                events, keys = [events[i] for i in kept], [keys[i] for i in kept]
        if events:
            pairs = by_pair(events)
            rulebook = await scenes.rulebook(session, rule_pairs(pairs))
            priced, unpriced = price_events(events, keys, rulebook, pairs)
            dead.extend(unpriced)
            granted = await apply_caps(session, priced)
            if priced.events:
                evs = priced.events
                scene_text: dict[bytes, str] = {}
                for ev in evs:
                    if ev.scene_id not in scene_text:
                        scene_text[ev.scene_id] = uuid_text(ev.scene_id)
                credits = points.CreditColumns(
                    citizen=[ev.citizen_id for ev in evs],
                    scene=[scene_text[ev.scene_id] for ev in evs],
                    event_id=[ev.event_id for ev in evs],
                    behaviour=[ev.behaviour for ev in evs],
                    occurred_at=[ev.occurred_at for ev in evs],
                    occurred_us=priced.occurred_us,
                    grams=granted,
                    grams_per_point=priced.grams_per_point,
                    reduction_rule=priced.reduction_rule,
                    conversion_rule=priced.conversion_rule,
                )
                outcome.points, _ = await points.credit_columns(session, credits, now=now)
                outcome.credited = len(credits)
        await store_dead_letters(session, topic, dead)
    outcome.dead = dead
    return outcome


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError |
                      ConnectionError | BusUnavailable)


async def _dead_letter_batch(
    runtime: Runtime, topic: str, batch: Batch, exc: BaseException
) -> None:
    """A batch that keeps failing for a non-transient reason: park its messages whole."""
    dead = [DeadLetter(m.key, m.value, E.DL_WORKER_ERROR, f"{type(exc).__name__}: {exc}"[:1000])
            for m in batch.messages]
    async with runtime.db.transaction() as session:
        await store_dead_letters(session, topic, dead)
    metrics.DEAD_LETTERS.labels(E.DL_WORKER_ERROR).inc(len(dead))


async def handle_batch(runtime: Runtime, consumer: Consumer, topic: str, batch: Batch,
                       stop: asyncio.Event) -> None:
    """Credit a batch, retrying transient failures, then commit it on the bus."""
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            outcome = await credit_messages(runtime, batch.messages, topic=topic)
            break
        except Exception as exc:
            metrics.WORKER_RETRIES.inc()
            if not _transient(exc) and attempt >= GIVE_UP_AFTER:
                log.exception("worker_batch_dead_lettered", messages=len(batch.messages))
                await _dead_letter_batch(runtime, topic, batch, exc)
                outcome = None
                break
            log.warning("worker_batch_retry", attempt=attempt, error=repr(exc)[:300])
            await asyncio.sleep(min(0.05 * 2**attempt, 5.0))
            if stop.is_set() and _transient(exc):
                raise
    await consumer.commit(batch)
    if outcome is not None:
        n = outcome.credited + outcome.duplicates + len(outcome.dead)
        metrics.WORKER_BATCH_EVENTS.observe(n)
        metrics.WORKER_BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.WORKER_CREDITED.labels("credited").inc(outcome.credited)
        metrics.WORKER_CREDITED.labels("duplicate").inc(outcome.duplicates)
        for d in outcome.dead:
            metrics.DEAD_LETTERS.labels(d.reason_code).inc()


async def consume(runtime: Runtime, stop: asyncio.Event, *, name: str = "c0",
                  max_messages: int = MAX_MESSAGES) -> None:
    """One consumer of the group, until ``stop`` is set."""
    topic = events_topic(runtime.settings)
    consumer = runtime.bus.consumer(topic, worker_group(runtime.settings))
    delay = 1.0
    while True:  # a bus that is down (or a group join that times out) is waited for
        try:
            await ensure_topic(runtime, topic)
            await consumer.start()
            break
        except BusUnavailable as exc:
            log.warning("worker_start_retry", consumer=name, error=str(exc)[:200], in_s=delay)
            await _sleep_or_stop(stop, delay)
            if stop.is_set():
                return
            delay = min(delay * 2, 30.0)
    log.info("worker_consumer_started", consumer=name, topic=topic, bus=runtime.bus.name)
    next_lag = 0.0
    try:
        while not stop.is_set():
            try:
                batch = await consumer.get_batch(max_messages, POLL_TIMEOUT_S)
            except BusUnavailable as exc:
                log.warning("worker_bus_unavailable", error=str(exc)[:200])
                await _sleep_or_stop(stop, 1.0)
                continue
            if batch is not None and batch.messages:
                await handle_batch(runtime, consumer, topic, batch, stop)
            now = time.monotonic()
            if now >= next_lag:
                next_lag = now + LAG_EVERY_S
                with contextlib.suppress(Exception):
                    metrics.BUS_LAG.labels(topic).set(await runtime.bus.lag(
                        topic, worker_group(runtime.settings)))
    finally:
        await consumer.stop()
        log.info("worker_consumer_stopped", consumer=name)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_forever(runtime: Runtime, stop: asyncio.Event, *, consumers: int = 1) -> None:
    """Run ``consumers`` consumers until ``stop`` is set (``tanhui serve`` runs one)."""
    tasks = [asyncio.create_task(consume(runtime, stop, name=f"c{i}"), name=f"points-worker-{i}")
             for i in range(max(1, consumers))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(t, timeout=30)


async def run_until_signal(runtime: Runtime, consumers: int = 1) -> None:
    """``tanhui worker``: run until SIGTERM or SIGINT, finishing the batch in hand."""
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker_started", consumers=consumers, **runtime.describe())
    await run_forever(runtime, stop, consumers=consumers)
