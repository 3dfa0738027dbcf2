"""What the adapter needs per engine: command handlers, the projection it reads, the schema,
and the wait for read-your-writes.

`EventSourcedUserDatabase(session, User)` finds everything here from the session's engine:
handlers are built on first use (inline projection when `REGISTRY_PROJECTION_MODE=inline`)
and cached per engine and models; before its first read the registry's tables and the
model's tables are made when missing, and before its first write encryption is turned on.
An app (or the composition root) may install its own with
`use_handlers(engine, handlers, user_table, oauth_table)`.

A write that was not projected in its own transaction waits for the projector; when no
projector holds the user's partition (an app that only swapped the adapter in, and runs no
`run_projector`), the writer brings that user's rows up to the log itself, so its own writes
are visible to its reads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.schema import Table

from events import EventStore
from projections import ProjectionTimeout, UserProjection
from projections import User as DefaultUser
from projections.waiting import project_stream, projector_holds, wait_for_version
from registry.domain.commands import Command
from registry.errors import ProjectionTimeoutError
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers, Outcome, profile_fields_of, sqlite_write_lock
from registry.service.keys import enable, enabled
from registry.service.retry import once_more
from registry.settings import Settings, get_settings

#: columns of the read model that are not the app's custom ("profile") columns
BUILTIN_COLUMNS = frozenset(c.key for c in DefaultUser.__table__.columns)


@dataclass
class Runtime:
    """Handlers and projection for one engine and one pair of models."""

    engine: AsyncEngine
    handlers: CommandHandlers
    projection: UserProjection
    timeout: float
    settings: Settings | None = None
    schema_ready: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def prepare(self, *, write: bool) -> None:
        """Before the first read: the registry's tables and the model's tables, made when
        missing (`registry.schema.ensure_schema`). Before the first write also encryption
        (`registry.service.keys.enable`: a wrong or missing master key raises `MasterKeyError`, and
        on a database that exists nothing is changed)."""
        if self.schema_ready and (not write or enabled(self.engine)):
            return
        async with self._lock:
            models = (self.projection.user_model, self.projection.oauth_model)
            if write and not enabled(self.engine):
                settings = self.settings or get_settings()
                # idempotent set-up: a lost connection is tried once more
                await once_more(lambda: enable(self.engine, settings, *models), what="set-up")
            if not self.schema_ready:
                await once_more(lambda: ensure_schema(self.engine, *models), what="set-up")
                self.schema_ready = True

    @property
    def inline(self) -> bool:
        """True when the handlers project into the adapter's tables inside the append."""
        own = self.handlers.inline_projection
        return isinstance(own, UserProjection) and (
            own.user_table is self.projection.user_table
            and own.oauth_table is self.projection.oauth_table
        )

    @property
    def projects_own(self) -> bool:
        """True when the handlers' writer-side fast path writes the adapter's tables."""
        own = self.handlers.own_projection
        return isinstance(own, UserProjection) and (
            own.user_table is self.projection.user_table
            and own.oauth_table is self.projection.oauth_table
            and own.name == self.projection.name
        )

    async def wait(self, outcome: Outcome) -> None:
        """Return once the read model shows `outcome.version` (read-your-writes)."""
        if not outcome.duplicate and (self.inline or (outcome.projected and self.projects_own)):
            return  # committed together with the events: visible already
        if not await projector_holds(self.engine, self.projection, outcome.user_id):
            # nobody else will project it: bring this user's rows up to the log here
            # on SQLite, queued behind this process's other writers as the handlers are
            async with sqlite_write_lock(self.engine) or contextlib.nullcontext():
                await project_stream(self.engine, self.projection, outcome.user_id)
            return
        try:
            await wait_for_version(
                self.engine, self.projection, outcome.user_id, outcome.version, self.timeout
            )
        except ProjectionTimeout as exc:
            raise ProjectionTimeoutError(str(exc)) from None


class EncryptingHandlers(CommandHandlers):
    """The adapter's command handlers: the adapter has no start-up of its own, so encryption
    is turned on from settings (`registry.service.keys.enable`, verified against the stored keys)
    before the first command is handled; a wrong or missing master key fails that command
    with `MasterKeyError` and writes nothing."""

    def __init__(self, *args: Any, settings: Settings, models: tuple[Any, ...], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.settings = settings
        self.models = models

    async def handle(self, command: Command, *, imported: bool = False) -> Outcome:
        if not enabled(self.engine):
            await enable(self.engine, self.settings, *self.models)
        return await super().handle(command, imported=imported)


_runtimes: weakref.WeakKeyDictionary[Any, dict[tuple[Any, Any], Runtime]] = (
    weakref.WeakKeyDictionary()
)


def engine_of(session: AsyncSession, user_table: Any) -> AsyncEngine:
    """The async engine the session reads `user_table` through."""
    bind = session.bind
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    sync = session.sync_session.get_bind(mapper=_mapper(user_table))
    sync_engine: Any = getattr(sync, "engine", sync)
    return AsyncEngine._retrieve_proxy_for_target(sync_engine)


def _mapper(model: Any) -> Mapper[Any] | None:
    from sqlalchemy import inspect

    return None if isinstance(model, Table) else inspect(model)


def use_handlers(
    engine: AsyncEngine,
    handlers: CommandHandlers,
    user_table: Any,
    oauth_table: Any = None,
    *,
    timeout: float | None = None,
) -> Runtime:
    """Make adapters on `engine` for these models write through `handlers`."""
    settings = get_settings()
    runtime = Runtime(
        engine=engine,
        handlers=handlers,
        projection=UserProjection(user_table, oauth_table),
        timeout=timeout if timeout is not None else settings.read_your_writes_timeout,
        settings=settings,
    )
    _runtimes.setdefault(engine.sync_engine, {})[(user_table, oauth_table)] = runtime
    return runtime


def runtime_for(engine: AsyncEngine, user_table: Any, oauth_table: Any = None) -> Runtime:
    """The cached runtime for `engine` and the models, built from settings on first use."""
    found = _runtimes.get(engine.sync_engine, {}).get((user_table, oauth_table))
    if found is not None:
        return found
    settings = get_settings()
    inline = own = None
    if settings.projection_mode == "inline":
        inline = UserProjection(user_table, oauth_table)
    else:  # worker mode: a write still skips the projector hop when it safely can
        own = UserProjection(user_table, oauth_table)
    handlers = EncryptingHandlers(
        engine,
        EventStore(engine),
        profile_fields=custom_columns(user_table),
        inline_projection=inline,
        own_projection=own,
        settings=settings,
        models=(user_table, oauth_table),
    )
    runtime = use_handlers(engine, handlers, user_table, oauth_table)
    runtime.projection = inline or own or runtime.projection
    return runtime


def custom_columns(user_table: Any) -> frozenset[str]:
    """The app's own columns on its user model (what `profile` may set)."""
    return profile_fields_of(user_table, BUILTIN_COLUMNS)
