"""Schema management, in one place: who owns which table, and how each is made.

- The registry's own tables (the log, data keys, the master key record, reservations, processed
  commands, projector checkpoints, leases, workers, tombstones) belong to its Alembic
  migrations: `migrate()`, `registry migrate`.
- The read model tables (`user`, `oauth_account`) belong to the app's models: they are created
  from the models when missing (`ensure_schema`), in whatever order the app's own
  `create_all`, `run_projector`, `registry migrate` and the workers run, and never by Alembic.
  A model column the table lacks is added when it is nullable (or has a server default);
  otherwise start-up stops with a `SchemaError` naming the table, the column and the fix.

Every schema change runs in one transaction under a lock (PostgreSQL: a transaction-scoped
advisory lock; SQLite: `BEGIN IMMEDIATE`, whose DDL is transactional too), so concurrent
starters wait for each other, and a failure leaves nothing half-made, releases the lock and
reports the original error.

An app with its own Alembic environment keeps autogenerate away from the registry's tables:

    from registry.schema import include_object
    context.configure(..., include_object=include_object)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, MetaData, Table, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import SchemaItem

from events.crypto import crypto_of
from events.master_key import claim_master_key
from events.tables import metadata as events_metadata
from projections.models import OAuthAccount, User
from projections.tables import BaseOAuthAccountTableUUID, BaseUserTableUUID
from projections.tables import metadata as projections_metadata
from projections.users import table_of
from registry.errors import RegistryError
from registry.tables import metadata as registry_metadata

#: an app's read-model classes (subclasses of the mixins)
UserModel = type[BaseUserTableUUID]
OAuthModel = type[BaseOAuthAccountTableUUID]

MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key held (for one transaction) while a process changes the schema
SCHEMA_LOCK_KEY = 0x7265_6769_7374
#: the default read-model tables: the app's (or the service's default models'), not Alembic's
READ_MODEL_TABLES = frozenset({table_of(User).name, table_of(OAuthAccount).name})


class SchemaError(RegistryError):
    """The schema cannot be brought to what the code needs without the operator."""

    code = "SCHEMA_ERROR"


class RegistryMissingError(SchemaError):
    """There is no registry at the configured database (nothing was created)."""

    code = "REGISTRY_MISSING"


def _bookkeeping_metadata() -> MetaData:
    """The projector's own tables, without the default read-model tables beside them."""
    found = MetaData()
    for table in projections_metadata.sorted_tables:
        if table.name not in READ_MODEL_TABLES:
            table.to_metadata(found)
    return found


_BOOKKEEPING = _bookkeeping_metadata()


def target_metadata() -> list[MetaData]:
    """Metadata of every table the migrations manage: the registry's own, no read model."""
    return [events_metadata, registry_metadata, _BOOKKEEPING]


def registry_table_names() -> frozenset[str]:
    """Names of the tables the registry's migrations own (and `alembic_version`)."""
    names = {t.name for md in target_metadata() for t in md.sorted_tables}
    return frozenset({*names, "alembic_version"})


def include_object(
    obj: object,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """For an app's own Alembic `env.py` (`context.configure(include_object=...)`):
    autogenerate leaves the registry's tables, and their indexes and constraints, alone.
    Only `name`, `type_` and the `table` of `obj` (a `SchemaItem`) are looked at."""
    owned = registry_table_names()
    if type_ == "table":
        return name not in owned
    table = getattr(obj, "table", None)
    return not (table is not None and table.name in owned)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


# ---------------------------------------------------------------------------- the lock
@asynccontextmanager
async def schema_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction for a schema change, holding the schema lock until it ends."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            # released with the transaction, whatever happens: no lock outlives a failure
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield conn
        return
    # SQLite: the driver would run DDL outside any transaction (a failed start would leave a
    # half-made schema); in AUTOCOMMIT mode the driver leaves transactions to us, so BEGIN
    # IMMEDIATE makes the DDL transactional and takes the write lock that serialises starters
    async with engine.connect() as base:
        conn = await base.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            try:
                await conn.exec_driver_sql("ROLLBACK")
            except DBAPIError:  # the connection is gone: SQLite rolled back on its own
                await base.invalidate()
            raise
        await conn.exec_driver_sql("COMMIT")


# ---------------------------------------------------------------------------- migrations
def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def _claim_key(conn: AsyncConnection) -> None:
    """Record (or check) the database's master key when this engine has encryption on."""
    crypto = crypto_of(conn.engine)
    if crypto is not None:
        await claim_master_key(conn, crypto.keyring)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the registry's own tables to `revision` (default: the newest). Safe to run again,
    and from several processes at once. Creates no read-model table."""
    async with schema_transaction(engine) as conn:
        await conn.run_sync(_upgrade, revision)
        if revision == "head":
            await _claim_key(conn)


def _made_without_alembic(sync_conn: Connection) -> bool:
    """The log exists but Alembic never ran here (tables made with `create_all` from the
    registry's metadata): leave the schema's management to whoever made it, add what lacks."""
    insp = inspect(sync_conn)
    return bool(insp.has_table("events") and not insp.has_table("alembic_version"))


# ---------------------------------------------------------------------------- read model
def _missing_column_error(table: Table, column: Column[Any], ddl: str) -> SchemaError:
    return SchemaError(
        f"table {table.name!r} has no column {column.name!r} ({ddl} NOT NULL), which its "
        f"model declares: add it with a migration of the app's own (ALTER TABLE "
        f"{table.name} ADD COLUMN {column.name} {ddl} NOT NULL DEFAULT ...), or declare it "
        "nullable (it is then added at start-up), or build the read model anew from the log "
        "with this model: `registry replay`"
    )


def _create_tables(sync_conn: Connection, tables: list[Table], complete: bool = True) -> None:
    """Create each table that is missing (with its indexes); add the nullable model columns
    that an existing table lacks (a model that gained a column, a table made from another
    model); refuse a missing NOT NULL column."""
    dialect = sync_conn.dialect
    prep = dialect.identifier_preparer
    for table in tables:
        table.create(sync_conn, checkfirst=True)
        if not complete:
            continue
        have = {c["name"] for c in inspect(sync_conn).get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = column.type.compile(dialect=dialect)
            if column.primary_key or not column.nullable:
                raise _missing_column_error(table, column, ddl)
            sync_conn.execute(
                text(
                    f"ALTER TABLE {prep.format_table(table)} "
                    f"ADD COLUMN {prep.format_column(column)} {ddl}"
                )
            )


def read_model_tables(
    user_table: UserModel | Table, oauth_table: OAuthModel | Table | None = None
) -> list[Table]:
    """The tables of the app's read model: its user table, and its OAuth table if it has one
    (given, or the target of the user model's relationship to a `BaseOAuthAccountTableUUID`
    model: reading the user loads it)."""
    tables = [table_of(user_table)]
    related: list[OAuthModel | Table] = [oauth_table] if oauth_table is not None else []
    if isinstance(user_table, type):
        mapper: Any = inspect(user_table, raiseerr=False)
        for rel in getattr(mapper, "relationships", ()):
            if issubclass(rel.mapper.class_, BaseOAuthAccountTableUUID):
                related.append(rel.mapper.class_)
    for model in related:
        table = table_of(model)
        if table not in tables:
            tables.append(table)
    return tables


async def ensure_schema(
    engine: AsyncEngine,
    user_table: UserModel | Table | None = None,
    oauth_table: OAuthModel | Table | None = None,
    *,
    migrate: bool = True,
    complete_columns: bool = True,
) -> None:
    """The registry's tables (Alembic, unless `migrate=False`), then the app's read-model
    tables from its models (`user_table`, and `oauth_table` only when the app has one), in
    one transaction under the schema lock. Raises `SchemaError` for a read-model table that
    lacks a NOT NULL column, `MasterKeyError` when the database belongs to another master
    key; nothing is changed then. `complete_columns=False` leaves existing read-model tables
    as they are (a replay builds them anew from the models)."""
    tables = list(_BOOKKEEPING.sorted_tables)
    if user_table is not None:
        tables += read_model_tables(user_table, oauth_table)
    async with schema_transaction(engine) as conn:
        if migrate and not await conn.run_sync(_made_without_alembic):
            await conn.run_sync(_upgrade, "head")
        await conn.run_sync(_create_tables, tables, complete_columns)
        await _claim_key(conn)


# ---------------------------------------------------------------------------- presence
def _sqlite_file(engine: AsyncEngine) -> Path | None:
    """The file of a file-backed SQLite database, else None."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


async def require_registry(engine: AsyncEngine) -> None:
    """Raise `RegistryMissingError` (creating nothing, not even an empty SQLite file) when the
    database holds no registry yet, saying what to run."""
    fix = (
        "run `registry migrate` (or start `registry serve`) to create it, or point "
        "REGISTRY_DATABASE_URL at an existing registry"
    )
    path = _sqlite_file(engine)
    if path is not None and not path.exists():
        raise RegistryMissingError(
            f"there is no registry at {path.resolve()} (no such file): {fix}"
        )
    async with engine.connect() as conn:
        present = await conn.run_sync(lambda c: inspect(c).has_table("events"))
    if not present:
        where = engine.url.render_as_string(hide_password=True)
        raise RegistryMissingError(f"there is no registry in {where} (no events table): {fix}")
