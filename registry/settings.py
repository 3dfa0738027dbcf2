"""Settings from the environment (prefix `REGISTRY_`), with working embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore")

    #: where the log and the read model live
    database_url: str = "sqlite+aiosqlite:///./registry.db"
    #: message bus; the scheme picks it (nats://, amqp://, redis://, kafka://); unset: no bus
    broker_url: str | None = None
    #: first word of every bus name: <prefix>.users.<command>, <prefix>.events.<type>
    bus_prefix: str = Field(default="registry", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    #: a command a consumer took but never acknowledged (it died) is redelivered after this
    #: many seconds (NATS ack wait, Redis claim idle time)
    bus_ack_wait: float = Field(default=30.0, ge=1, le=3600)
    #: commands a consumer handles at once
    bus_max_workers: int = Field(default=8, ge=1, le=256)
    #: bearer tokens accepted by the read API, comma-separated
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: where `registry serve` keeps the token it generates when none is configured
    token_file: Path = Path(".registry-token")
    #: the app's models to project into, as "module:Class"
    user_model: str | None = None
    oauth_model: str | None = None
    #: "worker": projector tasks/processes fold the log; "inline": project in the append
    #: transaction (single-process deployments)
    projection_mode: Literal["worker", "inline"] = "worker"
    #: how long a write (or a read with min_version) waits for the read model, seconds
    read_your_writes_timeout: float = Field(default=10.0, gt=0, le=300)
    #: projection partitions (units of work shared by workers)
    projection_partitions: int = Field(default=4, ge=1, le=256)
    #: projector batch size
    projection_batch_size: int = Field(default=500, ge=1, le=50_000)
    #: attempts at one event before its partition is marked failed (a poison event; see
    #: `registry projections retry|skip`); meanwhile the others go on
    projection_max_attempts: int = Field(default=5, ge=1, le=1000)
    #: wait before the second attempt, seconds; doubled each time up to the max
    projection_retry_backoff: float = Field(default=0.5, gt=0, le=600)
    projection_retry_backoff_max: float = Field(default=30.0, gt=0, le=3600)
    #: a worker's lease on a partition expires after this many seconds without renewal
    lease_ttl: float = Field(default=5.0, gt=0.5, le=600)
    #: largest accepted bus payload, bytes
    max_payload_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: request/reply timeout for `registry send`, seconds
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    #: the master key that wraps every user's data key (`registry keygen` makes one); unset:
    #: the key in `master_key_file` (generated beside the database on SQLite, the embedded
    #: default)
    master_key: SecretStr | None = None
    #: master keys being retired, comma-separated: they still unwrap data keys (rotation)
    previous_master_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: where the master key is kept when REGISTRY_MASTER_KEY is unset (owner-only, 0600);
    #: unset: beside the SQLite database file (`registry.db` -> `registry.key`), so every
    #: process on that file uses the same key; no default on PostgreSQL
    master_key_file: Path | None = None
    #: custom profile keys to seal in the log when serving the default models, comma-separated
    #: (an app's own model marks its columns with `info={"personal": True}` instead)
    personal_fields: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("api_tokens", "previous_master_keys", "personal_fields", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
