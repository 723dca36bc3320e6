"""The bus: publish batches keyed by citizen with a durable ack; consume and commit batches.

Two adapters share this contract (and one contract test suite,
``tests/app/test_bus_contract.py``):

- Kafka (:mod:`app.bus.kafka`, aiokafka, ``acks="all"``, consumer groups, manual commit),
  selected by ``TANHUI_KAFKA_BOOTSTRAP``;
- a durable PostgreSQL queue (:mod:`app.bus.pgqueue`, the embedded default).

The promises, identical on both:

- ``publish`` returns only once every message is durably stored, else raises
  :class:`BusUnavailable` within a few seconds (never hangs);
- messages with the same key keep their publish order and are never handed to two consumers
  of one group at once (Kafka: one partition per key; pgqueue: one lock per key-hash
  partition);
- delivery is at least once: a batch that is not committed (consumer crashed, stopped,
  abandoned it, or lost its partition in a rebalance) comes back to a consumer of the group,
  so consumers must be idempotent (the points worker dedupes on ``(scene, event_id)``);
- a committed batch does not come back. Commit batches in the order they were received.

Topic names carry the deployment's prefix: build them with :func:`topic_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from app.settings import Settings


class BusUnavailable(Exception):
    """The bus could not durably take (or give) messages; the caller answers 503."""


#: The topics this system uses (short names); the Kafka bus creates them at start, because a
#: memory-only test broker forgets them when it restarts.
TOPICS: tuple[str, ...] = ("events",)


def topic_name(settings: Settings, name: str) -> str:
    """The full topic name of ``name`` (e.g. ``"events"``) under this deployment's prefix."""
    return settings.kafka_topic_prefix + name


@dataclass(frozen=True, slots=True)
class Message:
    """One message: ``key`` picks the partition (the citizen's bucket), ``value`` is opaque
    bytes. A message with a ``shard`` (a small stable number, the bucket's) goes to partition
    ``shard % partitions`` instead of its key's hash: 64 buckets then load 8 or 16 partitions
    evenly (hashed, 64 keys fell 11/9/10/5/10/7/6/6 on 8 partitions, so one consumer of two
    had 20 % more to do). Messages of one shard, like those of one key, stay in order."""

    key: bytes
    value: bytes
    shard: int | None = None


@dataclass(slots=True)
class Batch:
    """Messages handed to one consumer; ``commit`` it after processing, or they come back."""

    messages: list[Message]
    token: Any = field(default=None, repr=False)


class Consumer(Protocol):
    """One member of a consumer group on one topic."""

    async def start(self) -> None: ...
    async def stop(self) -> None:
        """Leave the group; batches not committed come back to the group."""
        ...
    async def get_batch(self, max_messages: int, timeout_s: float) -> Batch | None:
        """Up to ``max_messages`` messages, or ``None`` if none came within ``timeout_s``."""
        ...
    async def commit(self, batch: Batch) -> None:
        """Mark the batch done; raises :class:`BusUnavailable` if the bus is unreachable."""
        ...
    async def abandon(self, batch: Batch) -> None:
        """Give the batch back uncommitted: it is delivered again."""
        ...


class Bus(Protocol):
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ensure_topics(self, topics: Sequence[str]) -> None: ...
    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Return only once every message is durably stored; raise BusUnavailable otherwise."""
        ...
    def consumer(self, topic: str, group: str) -> Consumer: ...
    async def ping(self) -> None: ...
    async def lag(self, topic: str, group: str) -> int: ...
    def describe(self) -> str:
        """Where the bus lives, for the startup line (no credentials)."""
        ...
