"""The bus: publish batches keyed by citizen with a durable ack; consume and commit batches.

Two adapters share this contract: Kafka (aiokafka, ``acks="all"``, consumer groups, manual
commit) and a durable PostgreSQL queue (``FOR UPDATE SKIP LOCKED``, several consumers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class BusUnavailable(Exception):
    """The bus could not durably take (or give) messages; the caller answers 503."""


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes
    value: bytes


@dataclass(slots=True)
class Batch:
    """Messages handed to one consumer; ``commit`` it after processing, or they come back."""

    messages: list[Message]
    token: Any = field(default=None, repr=False)


class Consumer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def get_batch(self, max_messages: int, timeout_s: float) -> Batch | None: ...
    async def commit(self, batch: Batch) -> None: ...


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
