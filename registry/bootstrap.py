"""The composition root: every process's engine, store, models, projection, command handlers and
projector workers are built here, and encryption is switched on here.

Entry points take a `Container` from here and hand it down: the CLI commands open one with
`running(settings)`, the read API (`registry.api.app.create_app`) and the bus
(`registry.bus.app.running_bus`) are given one, and `run_projector` and the FastAPI Users
adapter wrap the app's own engine with `container_for`. `Container.start()` turns on sealing of
personal data (`encrypt`, the registry's one caller of `registry.service.keys.enable`) before
anything is migrated or written; a wrong or missing master key raises `MasterKeyError` there,
with nothing written. The handlers built here check the same before their first command, for
code that uses a container without starting it.

What must be shared per engine rather than per container (the commit signal, the SQLite write
lock, the attached Crypto, the adapter's runtimes) lives in the engine's scope,
`events.scope.scope_of`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine
from events.crypto import Crypto
from projections import OAuthAccount, User
from projections.users import UserProjection, table_of
from projections.worker import ProjectionWorker, Subscriber
from registry.domain.commands import Command
from registry.schema import OAuthModel, UserModel
from registry.service.handlers import (
    CommandHandlers,
    InlineProjection,
    Outcome,
    OwnProjection,
    profile_fields_of,
)
from registry.service.keys import enable, enabled
from registry.service.passwords import PasswordHasher
from registry.settings import Settings

#: columns of the read model that are not an app's custom ("profile") columns
BUILTIN_COLUMNS = frozenset(c.key for c in User.__table__.columns)


def import_object(path: str) -> object:
    """`"package.module:Name"` → the object; a clear error when it cannot be found."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        found: object = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return found


def load_models(settings: Settings) -> tuple[UserModel, OAuthModel | None]:
    """The user and OAuth account models to project into: the app's, or the defaults."""
    if settings.user_model:
        # the app's models subclass the mixins (the documented contract); a model that does not
        # fails where its columns are first used, with SQLAlchemy's own message
        user = cast(UserModel, import_object(settings.user_model))
        oauth = (
            cast(OAuthModel, import_object(settings.oauth_model)) if settings.oauth_model else None
        )
        return user, oauth
    return User, OAuthAccount


def custom_columns(user_table: UserModel) -> frozenset[str]:
    """The app's own columns on its user model (what `profile` may set)."""
    return profile_fields_of(table_of(user_table), BUILTIN_COLUMNS)


async def encrypt(
    engine: AsyncEngine, settings: Settings, user_table: UserModel, oauth_table: OAuthModel | None
) -> Crypto:
    """Turn on sealing of personal data on `engine` from settings and these models' personal
    columns (`registry.service.keys.enable`). Idempotent per engine. Raises `MasterKeyError`
    for a wrong or missing master key; nothing is written then."""
    return await enable(engine, settings, user_table, oauth_table)


class EncryptingHandlers(CommandHandlers):
    """Command handlers that turn encryption on (`encrypt`) before the first command they
    handle, when whoever built them has not: a wrong or missing master key fails that command
    with `MasterKeyError` and writes nothing."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: EventStore,
        *,
        settings: Settings,
        models: tuple[UserModel, OAuthModel | None],
        profile_fields: frozenset[str] | None = None,
        inline_projection: InlineProjection | None = None,
        own_projection: OwnProjection | None = None,
        password_helper: PasswordHasher | None = None,
    ) -> None:
        super().__init__(
            engine,
            store,
            profile_fields=profile_fields,
            inline_projection=inline_projection,
            own_projection=own_projection,
            password_helper=password_helper,
        )
        self.settings = settings
        self.models = models

    async def handle(self, command: Command, *, imported: bool = False) -> Outcome:
        if not enabled(self.engine):
            await encrypt(self.engine, self.settings, *self.models)
        return await super().handle(command, imported=imported)


@dataclass
class Container:
    """Everything an entry point needs, built once from settings (see the module docstring)."""

    settings: Settings
    engine: AsyncEngine
    store: EventStore
    user_table: UserModel
    oauth_table: OAuthModel | None
    #: dispose the engine on `aclose` (False for an engine the app made and keeps)
    owns_engine: bool = True
    #: set when the process begins to shut down: requests that wait for something (the
    #: console's live tail) answer at once instead of holding the shutdown up
    stopping: bool = field(default=False, init=False)
    _handlers: CommandHandlers | None = field(default=None, init=False, repr=False)

    async def start(self) -> Container:
        """Turn encryption on (`encrypt`); call it first, before the schema is migrated or
        anything written. Raises `MasterKeyError` for a wrong or missing master key."""
        await self.encrypt()
        return self

    async def encrypt(self) -> Crypto:
        """Turn on sealing of personal data for this container's engine and models."""
        return await encrypt(self.engine, self.settings, self.user_table, self.oauth_table)

    def projection(self) -> UserProjection:
        """The user projection into this container's models."""
        return UserProjection(self.user_table, self.oauth_table)

    def handlers(self) -> CommandHandlers:
        """The command handlers (the one write path) of the bus, the API and the CLI, built
        once. Inline projection when `REGISTRY_PROJECTION_MODE=inline`. With an app model
        (`REGISTRY_USER_MODEL`), profile keys are checked against its custom columns; with the
        default models they are kept in the log for whichever app model projects them."""
        if self._handlers is None:
            inline = self.projection() if self.settings.projection_mode == "inline" else None
            custom = self.settings.user_model is not None
            self._handlers = EncryptingHandlers(
                self.engine,
                self.store,
                settings=self.settings,
                models=(self.user_table, self.oauth_table),
                profile_fields=custom_columns(self.user_table) if custom else None,
                inline_projection=inline,
            )
        return self._handlers

    def adapter_handlers(self, projection: UserProjection) -> CommandHandlers:
        """The FastAPI Users adapter's handlers, projecting into `projection` (the one it reads
        and waits on): inside the append in inline mode; otherwise through the writer-side fast
        path whenever the read model is where the command was decided. Profile keys are the
        model's custom columns."""
        inline = self.settings.projection_mode == "inline"
        return EncryptingHandlers(
            self.engine,
            self.store,
            settings=self.settings,
            models=(self.user_table, self.oauth_table),
            profile_fields=custom_columns(self.user_table),
            inline_projection=projection if inline else None,
            own_projection=None if inline else projection,
        )

    def worker(self, *, worker_id: str | None = None) -> ProjectionWorker:
        """A projector worker for this container's models, tuned by settings."""
        settings = self.settings
        return ProjectionWorker(
            self.engine,
            self.store,
            self.projection(),
            partitions=settings.projection_partitions,
            batch_size=settings.projection_batch_size,
            lease_ttl=settings.lease_ttl,
            worker_id=worker_id,
            max_attempts=settings.projection_max_attempts,
            retry_backoff=settings.projection_retry_backoff,
            retry_backoff_max=settings.projection_retry_backoff_max,
        )

    def relay_worker(self, relay: Subscriber) -> ProjectionWorker:
        """The worker that runs the bus's event relay: one partition, so events are published
        in log order."""
        settings = self.settings
        return ProjectionWorker(
            self.engine,
            self.store,
            relay,
            partitions=1,
            batch_size=min(settings.projection_batch_size, 500),
            lease_ttl=settings.lease_ttl,
            # a broker outage fails the relay's batches too: never mark its partition failed,
            # keep backing off (retry_backoff_max) until the broker is back
            max_attempts=None,
            retry_backoff=settings.projection_retry_backoff,
            retry_backoff_max=settings.projection_retry_backoff_max,
        )

    async def aclose(self) -> None:
        if self.owns_engine:
            await self.engine.dispose()


def engine_for(settings: Settings) -> AsyncEngine:
    """The engine on the configured database."""
    return create_engine(settings.database_url)


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database for one operation that needs no models and writes
    no personal data (status, migrate, the projection operations), disposed afterwards."""
    engine = engine_for(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


def build(settings: Settings) -> Container:
    """A container on a new engine for the configured database and models."""
    engine = engine_for(settings)
    user_table, oauth_table = load_models(settings)
    return Container(settings, engine, EventStore(engine), user_table, oauth_table)


def container_for(
    engine: AsyncEngine, settings: Settings, user_table: UserModel, oauth_table: OAuthModel | None
) -> Container:
    """A container on an engine the app made (and disposes itself), for its own models."""
    return Container(
        settings, engine, EventStore(engine), user_table, oauth_table, owns_engine=False
    )


@asynccontextmanager
async def running(settings: Settings, *, encrypted: bool = True) -> AsyncIterator[Container]:
    """`build(settings)`, started (encryption on first, unless `encrypted=False`), and closed
    when the block exits. Raises `MasterKeyError` before anything is written."""
    container = build(settings)
    try:
        if encrypted:
            await container.start()
        yield container
    finally:
        await container.aclose()


__all__ = [
    "Container",
    "EncryptingHandlers",
    "OAuthModel",
    "UserModel",
    "build",
    "container_for",
    "custom_columns",
    "database",
    "encrypt",
    "load_models",
    "running",
]
