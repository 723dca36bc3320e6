"""Keys: from settings, or generated once under ``TANHUI_DATA_DIR`` and never committed."""

from __future__ import annotations

import base64
import json
import os
import secrets as _secrets
from dataclasses import dataclass
from functools import lru_cache

from app.settings import Settings, get_settings


@dataclass(frozen=True)
class Keys:
    jwt_signing_key: bytes
    pii_encryption_key: bytes  # 32 bytes, AES-256-GCM
    blind_index_key: bytes  # HMAC-SHA256


def _b64(raw: str) -> bytes:
    return base64.b64decode(raw.encode())


def load_keys(settings: Settings) -> Keys:
    stored: dict[str, str] = {}
    path = settings.data_dir / "secrets.json"
    needed = [
        k for k in ("jwt_signing_key", "pii_encryption_key", "blind_index_key")
        if getattr(settings, k) is None
    ]
    if needed:
        if settings.env == "production":
            raise RuntimeError(f"set TANHUI_{needed[0].upper()} in production")
        if path.exists():
            stored = json.loads(path.read_text())
        missing = [k for k in needed if k not in stored]
        if missing:
            for k in missing:
                stored[k] = base64.b64encode(_secrets.token_bytes(32)).decode()
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored))
            os.chmod(tmp, 0o600)
            tmp.replace(path)

    def pick(name: str) -> bytes:
        value = getattr(settings, name)
        return _b64(value) if value is not None else _b64(stored[name])

    return Keys(pick("jwt_signing_key"), pick("pii_encryption_key"), pick("blind_index_key"))


@lru_cache
def get_keys() -> Keys:
    return load_keys(get_settings())
