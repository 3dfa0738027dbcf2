"""What the adapter needs per engine and models: command handlers, the projection it reads and
waits on, the schema, and read-your-writes.

`EventSourcedUserDatabase(session, User)` finds its `Runtime` in the scope of the session's
engine (`events.scope`, slot `RUNTIMES`). The first adapter on an engine has one built by the
composition root (`registry.bootstrap.container_for` with settings from the environment), so
the adapter, the bus and the CLI write through handlers made in one place; before its first read
the registry's tables and the model's tables are made when missing, and before its first write
encryption is turned on (`Container.encrypt`). An app or a test may install its own handlers
with `use_handlers(engine, handlers, user_table, oauth_table)`.

A write that was not projected in its own transaction waits for the projector; when no
projector holds the user's partition (an app that only swapped the adapter in, and runs no
`run_projector`), the writer brings that user's rows up to the log itself, so its own writes
are visible to its reads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, Table, inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper

from events.scope import Slot, scope_of
from projections import ProjectionTimeout, UserProjection
from projections.waiting import project_stream, projector_holds, wait_for_version
from registry.adapter import written
from registry.bootstrap import (
    Container,
    EncryptingHandlers,
    OAuthModel,
    UserModel,
    container_for,
    custom_columns,
)
from registry.errors import ProjectionTimeoutError
from registry.schema import ensure_schema
from registry.service.handlers import CommandHandlers, Outcome, sqlite_write_lock
from registry.service.keys import enabled
from registry.service.retry import once_more
from registry.settings import get_settings

Models = tuple[UserModel, OAuthModel | None]
T = TypeVar("T")


@dataclass
class Runtime:
    """Handlers and projection for one engine and one pair of models."""

    container: Container
    handlers: CommandHandlers
    projection: UserProjection
    timeout: float
    schema_ready: bool = False
    #: `get`'s statement, built once: SQLAlchemy then reuses its cache key
    by_id: Select[Any] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def engine(self) -> AsyncEngine:
        return self.container.engine

    async def prepare(self, *, write: bool) -> None:
        """Before the first read: the registry's tables and the model's tables, made when
        missing (`registry.schema.ensure_schema`). Before the first write also encryption
        (`Container.encrypt`: a wrong or missing master key raises `MasterKeyError`, and on a
        database that exists nothing is changed)."""
        if self.schema_ready and (not write or enabled(self.engine)):
            return
        async with self._lock:
            container = self.container
            if write and not enabled(self.engine):
                # idempotent set-up: a lost connection is tried once more
                await once_more(container.encrypt, what="set-up")
            if not self.schema_ready:
                await once_more(
                    lambda: ensure_schema(self.engine, container.user_table, container.oauth_table),
                    what="set-up",
                )
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

    def projected(self, outcome: Outcome) -> bool:
        """True when the outcome's events were projected into the adapter's tables in the
        transaction that appended them."""
        return not outcome.duplicate and (self.inline or (outcome.projected and self.projects_own))

    def written_user(self, session: AsyncSession, model: type[T], outcome: Outcome) -> T | None:
        """The user a registration wrote, as an instance of `model` in `session`, without
        reading it back; None: read it back."""
        if not self.projected(outcome):
            return None
        return written.created(session, model, self.projection, outcome)

    def written_update(self, session: AsyncSession, user: object, outcome: Outcome) -> bool:
        """Bring `user` to what an update wrote, without reading it back; False: read it."""
        return self.projected(outcome) and written.updated(session, user, self.projection, outcome)

    async def wait(self, outcome: Outcome) -> None:
        """Return once the read model shows `outcome.version` (read-your-writes)."""
        if self.projected(outcome):
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


#: each engine's adapter runtimes, by models
RUNTIMES: Slot[dict[Models, Runtime]] = Slot("adapter runtimes", dict)


def engine_of(session: AsyncSession, user_table: UserModel) -> AsyncEngine:
    """The async engine the session reads `user_table` through."""
    bind = session.bind
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    # bound per model (`binds=`) or by a custom `get_bind`: the session resolves the sync
    # engine. SQLAlchemy (2.0 and 2.1) offers no public way from it back to the app's async
    # engine: constructing `AsyncEngine(core)` would make a second proxy and register it as
    # the one `AsyncConnection.engine` returns for the app's engine, and
    # `await session.connection()` would begin the session's transaction on a read; so the
    # proxy registry is asked, read only
    sync = session.get_bind(mapper=_mapper(user_table))
    core = sync.engine if isinstance(sync, Connection) else sync
    return AsyncEngine._retrieve_proxy_for_target(core)  # noqa: SLF001 no public way, see above


def _mapper(model: UserModel | Table) -> Mapper[Any] | None:
    return None if isinstance(model, Table) else inspect(model)


def install(
    container: Container,
    handlers: CommandHandlers,
    projection: UserProjection,
    *,
    timeout: float | None = None,
) -> Runtime:
    """Make adapters on `container.engine` for its models write through `handlers` and read
    and wait on `projection`."""
    runtime = Runtime(
        container,
        handlers,
        projection,
        timeout if timeout is not None else container.settings.read_your_writes_timeout,
    )
    models = (container.user_table, container.oauth_table)
    scope_of(container.engine).get(RUNTIMES)[models] = runtime
    return runtime


def use_handlers(
    engine: AsyncEngine,
    handlers: CommandHandlers,
    user_table: UserModel,
    oauth_table: OAuthModel | None = None,
    *,
    timeout: float | None = None,
) -> Runtime:
    """Make adapters on `engine` for these models write through `handlers`."""
    container = container_for(engine, get_settings(), user_table, oauth_table)
    return install(container, handlers, container.projection(), timeout=timeout)


def runtime_for(
    engine: AsyncEngine, user_table: UserModel, oauth_table: OAuthModel | None = None
) -> Runtime:
    """The runtime for `engine` and the models, built by the composition root on first use."""
    found = scope_of(engine).get(RUNTIMES).get((user_table, oauth_table))
    if found is not None:
        return found
    container = container_for(engine, get_settings(), user_table, oauth_table)
    projection = container.projection()
    return install(container, container.adapter_handlers(projection), projection)


__all__ = [
    "RUNTIMES",
    "EncryptingHandlers",
    "Runtime",
    "custom_columns",
    "engine_of",
    "install",
    "runtime_for",
    "use_handlers",
]
