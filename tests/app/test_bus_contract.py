"""One contract, two adapters: the PostgreSQL queue (on this run's database) and Kafka (on the
Tansu broker at ``TANHUI_TEST_KAFKA``). Every test runs against both, on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text

from app.bus import Batch, Bus, BusUnavailable, Consumer, Message, topic_name
from app.bus.kafka import KafkaBus, KafkaConsumer
from app.bus.pgqueue import PgQueueBus
from app.db import Database
from app.runtime import Runtime
from app.services_cli import tansu_binary
from app.settings import Settings, get_settings
from tests.conftest import KAFKA_BOOTSTRAP

pytestmark = pytest.mark.kafka

# A short session timeout: Tansu answers a JoinGroup after half of it (1 s here).
SESSION_MS = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_settings(bootstrap: str = KAFKA_BOOTSTRAP) -> Settings:
    return get_settings().model_copy(update={"kafka_bootstrap": bootstrap,
                                             "kafka_partitions": 8})


def make_bus(kind: str, runtime: Runtime) -> Bus:
    if kind == "kafka":
        return KafkaBus(kafka_settings(), session_timeout_ms=SESSION_MS)
    return PgQueueBus(runtime.db)


@pytest.fixture(params=["pgqueue", "kafka"])
async def bus(request: pytest.FixtureRequest, runtime: Runtime) -> AsyncIterator[Bus]:
    b = make_bus(request.param, runtime)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
def topic() -> str:
    return topic_name(get_settings(), f"contract.{secrets.token_hex(4)}")


@pytest.fixture
def group() -> str:
    """A group of this test only (Kafka groups span topics; the bus adds the run's prefix)."""
    return f"points-{secrets.token_hex(4)}"


def msgs(n: int, *, keys: int = 10, tag: str = "") -> list[Message]:
    """``n`` messages over ``keys`` keys; values say key and per-key sequence number."""
    seq: dict[int, int] = defaultdict(int)
    out = []
    for i in range(n):
        k = i % keys
        out.append(Message(f"citizen-{k}".encode(), f"{tag}{k}:{seq[k]}".encode()))
        seq[k] += 1
    return out


async def started(bus: Bus, topic: str, group: str) -> Consumer:
    c = bus.consumer(topic, group)
    await c.start()
    return c


async def drain(c: Consumer, want: int, *, commit: bool, timeout_s: float = 15.0,
                max_messages: int = 500) -> list[Message]:
    """Take batches until ``want`` messages came (or the time is up)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batch = await c.get_batch(max_messages, 0.5)
        if batch is None:
            continue
        got += batch.messages
        if commit:
            await c.commit(batch)
    return got


async def joined(*consumers: Consumer, partitions: int = 8, timeout_s: float = 15.0) -> None:
    """Kafka: poll until the group has assigned every partition to these members."""
    kafka = [c for c in consumers if isinstance(c, KafkaConsumer)]
    if not kafka:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.gather(*(c.get_batch(1, 0.2) for c in kafka))
        owned = [c.partitions() for c in kafka]
        if all(owned) and sum(len(p) for p in owned) == partitions:
            return
    raise AssertionError(f"group never settled: {[c.partitions() for c in kafka]}")


def pairs(messages: Sequence[Message]) -> list[tuple[bytes, bytes]]:
    return sorted((m.key, m.value) for m in messages)


async def test_round_trip_preserves_key_and_bytes(bus: Bus, topic: str, group: str) -> None:
    binary = Message(b"citizen-\x00\xff", bytes(range(256)))
    sent = [*msgs(120), binary, Message(b"citizen-empty", b"")]
    await bus.publish(topic, sent)
    assert await bus.lag(topic, group) == len(sent)
    c = await started(bus, topic, group)
    try:
        got = await drain(c, len(sent), commit=True)
    finally:
        await c.stop()
    assert pairs(got) == pairs(sent)
    assert await bus.lag(topic, group) == 0


async def test_concurrent_publishers_are_all_acknowledged(
    bus: Bus, topic: str, group: str
) -> None:
    """Many requests publish at once (the ingestion hot path): every batch is acknowledged
    and stored once."""
    batches = [msgs(1000, keys=500, tag=f"{i}-") for i in range(40)]
    await asyncio.gather(*(bus.publish(topic, b) for b in batches))
    assert await bus.lag(topic, group) == 40 * 1000
    c = await started(bus, topic, group)
    try:
        got = await drain(c, 40 * 1000, commit=True, max_messages=5000)
    finally:
        await c.stop()
    assert pairs(got) == pairs([m for b in batches for m in b])


async def test_publish_of_nothing_is_a_no_op(bus: Bus, topic: str, group: str) -> None:
    await bus.publish(topic, [])
    assert await bus.lag(topic, group) == 0


async def test_uncommitted_batch_comes_back_to_the_next_consumer(
    bus: Bus, topic: str, group: str
) -> None:
    """A consumer that stops (or dies) without committing loses nothing."""
    sent = msgs(60)
    await bus.publish(topic, sent)
    first = await started(bus, topic, group)
    try:
        taken = await drain(first, len(sent), commit=False)
        assert pairs(taken) == pairs(sent)
    finally:
        await first.stop()
    second = await started(bus, topic, group)
    try:
        again = await drain(second, len(sent), commit=True)
    finally:
        await second.stop()
    assert pairs(again) == pairs(sent)


async def test_committed_batch_is_not_redelivered(bus: Bus, topic: str, group: str) -> None:
    await bus.publish(topic, msgs(40))
    first = await started(bus, topic, group)
    try:
        assert len(await drain(first, 40, commit=True)) == 40
    finally:
        await first.stop()
    later = msgs(5, tag="later-")
    await bus.publish(topic, later)
    second = await started(bus, topic, group)
    try:
        got = await drain(second, 5, commit=True)
        assert await second.get_batch(100, 1.0) is None
    finally:
        await second.stop()
    assert pairs(got) == pairs(later)


async def test_abandoned_batch_is_delivered_again(bus: Bus, topic: str, group: str) -> None:
    sent = msgs(30)
    await bus.publish(topic, sent)
    c = await started(bus, topic, group)
    try:
        taken: Batch | None = None
        while taken is None:
            taken = await c.get_batch(500, 1.0)
        await c.abandon(taken)
        again = await drain(c, len(sent), commit=True)
    finally:
        await c.stop()
    assert pairs(again) == pairs(sent)
    assert set(pairs(taken.messages)) <= set(pairs(again))


async def test_two_consumers_share_the_load_without_duplicates_or_reordering(
    bus: Bus, topic: str, group: str
) -> None:
    """Two members of one group, concurrently: each message goes to exactly one of them, and
    one key's messages are received in publish order (a key never races itself)."""
    a = await started(bus, topic, group)
    b = await started(bus, topic, group)
    received: list[tuple[str, Message]] = []  # in the order batches arrived, across both
    try:
        await joined(a, b)
        sent = msgs(600, keys=40)
        for i in range(0, len(sent), 100):
            await bus.publish(topic, sent[i : i + 100])

        async def work(name: str, c: Consumer) -> None:
            deadline = time.monotonic() + 20
            while len(received) < len(sent) and time.monotonic() < deadline:
                batch = await c.get_batch(50, 0.3)
                if batch is None:
                    continue
                received.extend((name, m) for m in batch.messages)
                await asyncio.sleep(0.02)  # the work, during which the batch is held
                await c.commit(batch)

        await asyncio.gather(work("a", a), work("b", b))
    finally:
        await asyncio.gather(a.stop(), b.stop())
    got = [m for _, m in received]
    assert len(got) == len(sent), "every message once, no duplicates"
    assert pairs(got) == pairs(sent)
    by: dict[str, int] = defaultdict(int)
    for name, _ in received:
        by[name] += 1
    assert by["a"] > 0 and by["b"] > 0, f"both consumers worked: {dict(by)}"
    seqs: dict[bytes, list[int]] = defaultdict(list)
    for m in got:
        seqs[m.key].append(int(m.value.split(b":")[1]))
    assert all(s == sorted(s) for s in seqs.values())


async def test_one_key_keeps_its_order(bus: Bus, topic: str, group: str) -> None:
    sent = msgs(500, keys=3)
    for i in range(0, len(sent), 50):
        await bus.publish(topic, sent[i : i + 50])
    c = await started(bus, topic, group)
    try:
        got = await drain(c, len(sent), commit=True, max_messages=64)
    finally:
        await c.stop()
    seqs: dict[bytes, list[int]] = defaultdict(list)
    for m in got:
        seqs[m.key].append(int(m.value.split(b":")[1]))
    assert {k: len(v) for k, v in seqs.items()} == {f"citizen-{k}".encode(): 167 - (k == 2)
                                                     for k in range(3)}
    assert all(s == list(range(len(s))) for s in seqs.values())


@pytest.mark.parametrize("kind", ["pgqueue", "kafka"])
async def test_publish_to_a_down_bus_raises_quickly(kind: str) -> None:
    """Nothing listens there: BusUnavailable within a few seconds, never a hang."""
    port = free_port()
    down: Any
    if kind == "kafka":
        down = KafkaBus(kafka_settings(f"127.0.0.1:{port}"), timeout_s=3)
    else:
        down = PgQueueBus(Database(f"postgresql://postgres@127.0.0.1:{port}/nothing"),
                          timeout_s=3)
    started_at = time.monotonic()
    with pytest.raises(BusUnavailable):
        await down.start()
    with pytest.raises(BusUnavailable):
        await down.publish("t", msgs(10))
    with pytest.raises(BusUnavailable):
        await down.ping()
    assert time.monotonic() - started_at < 8
    await down.stop()


async def test_kafka_broker_down_then_back_empty(topic: str) -> None:
    """A private memory-only Tansu: publishing while it is down fails within the timeout;
    once it is back (empty, as after any restart) the bus creates the topic again, with its
    partitions, and publishing works."""
    port = free_port()
    binary = str(tansu_binary())
    url = f"tcp://127.0.0.1:{port}"

    async def broker() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                return proc
            await asyncio.sleep(0.05)
        raise AssertionError("Tansu did not start")

    proc = await broker()
    bus = KafkaBus(kafka_settings(f"127.0.0.1:{port}"), topics=[topic], timeout_s=2)
    try:
        await bus.start()
        await bus.publish(topic, msgs(20))
        assert await bus.lag(topic, "g") == 20

        proc.kill()
        await proc.wait()
        started_at = time.monotonic()
        with pytest.raises(BusUnavailable):
            await bus.publish(topic, msgs(5))
        assert time.monotonic() - started_at < 4
        with pytest.raises(BusUnavailable):
            await bus.ping()

        proc = await broker()
        await bus.publish(topic, msgs(30))
        await bus.ping()
        assert await bus.lag(topic, "g") >= 30  # a retried record may be stored twice
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        assert len(described["partitions"]) == 8
    finally:
        await bus.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sharded_messages_load_the_partitions_evenly(
    bus: Bus, topic: str, group: str, runtime: Runtime
) -> None:
    """A message's ``shard`` picks partition ``shard % partitions``: 64 shards (the citizen
    buckets) load Kafka's 8 partitions and the queue's 16 evenly, and a shard's messages stay
    in one partition, in order. (Hashed, the 64 bucket keys fell 35/29 on two Kafka members.)"""
    sent = [Message(b"c%02d" % s, b"%d:%d" % (s, i), shard=s)
            for i in range(5) for s in range(64)]
    if isinstance(bus, PgQueueBus):
        await bus.publish(topic, sent)
        async with runtime.db.session() as s:
            rows = (await s.execute(text(
                "SELECT part, count(*) AS n, array_agg(DISTINCT key) AS keys FROM bus_messages"
                " WHERE topic = :t GROUP BY part ORDER BY part"), {"t": topic})).all()
        assert [(r.part, r.n) for r in rows] == [(p, 20) for p in range(16)]
        assert all(sorted(r.keys) == [b"c%02d" % s for s in range(r.part, 64, 16)]
                   for r in rows)
        return
    a, b = await started(bus, topic, group), await started(bus, topic, group)
    try:
        await joined(a, b)
        await bus.publish(topic, sent)
        got_a, got_b = await asyncio.gather(drain(a, 160, commit=True),
                                            drain(b, 160, commit=True))
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert (len(got_a), len(got_b)) == (160, 160)
    assert {m.key for m in got_a}.isdisjoint({m.key for m in got_b})
    for got in (got_a, got_b):
        seqs: dict[bytes, list[int]] = defaultdict(list)
        for m in got:
            seqs[m.key].append(int(m.value.split(b":")[1]))
        assert all(v == list(range(5)) for v in seqs.values()) and len(seqs) == 32
