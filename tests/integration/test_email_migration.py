"""Migration 0006 on SQLite and PostgreSQL: a database written under the old email rule
(reservation keys `strip().lower()`, read-model addresses as typed, a `lower(email)` index)
comes out with canonical reservation keys and addresses, a plain email index, and every user
found again by `get_by_email`; two spellings of one address keep the earliest reservation."""

from __future__ import annotations

import logging
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Index, MetaData, func, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from projections import User
from registry.schema import migrate
from registry.tables import email_reservations
from tests.support.adapter import UserDatabase
from tests.support.models import table_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NFD = unicodedata.normalize("NFD", "José@Example.com")
NFC = unicodedata.normalize("NFC", "josé@example.com")

#: name -> (id, address as the old code stored it in `user`, reserved at)
LEGACY = {
    "spaced": (uuid.uuid4(), "  Spaced@Example.com  ", T0),
    "dotted": (uuid.uuid4(), "İnfo@Example.com", T0 + timedelta(seconds=1)),
    "nfd": (uuid.uuid4(), NFD, T0 + timedelta(seconds=2)),  # the earlier of two spellings
    "nfc": (uuid.uuid4(), NFC, T0 + timedelta(seconds=3)),
    "puny": (uuid.uuid4(), "user@XN--BCHER-KVA.DE", T0 + timedelta(seconds=4)),
    "plain": (uuid.uuid4(), "plain@example.com", T0 + timedelta(seconds=5)),
    "odd": (uuid.uuid4(), "Not-An-Email", T0 + timedelta(seconds=6)),  # stored long ago
}
CANONICAL = {
    "spaced": "spaced@example.com",
    "dotted": "i\u0307nfo@example.com",
    "nfd": NFC,
    "nfc": NFC,
    "puny": "user@bücher.de",
    "plain": "plain@example.com",
    "odd": "not-an-email",
}


def legacy_user_table(sync_conn: Connection) -> None:
    """`user` as the default model made it before the one email rule: a lower(email) index."""
    md = MetaData()
    table = table_of(User).to_metadata(md)
    for index in list(table.indexes):
        table.indexes.discard(index)
    table.create(sync_conn)
    Index("ix_user_email_lower", func.lower(table.c.email)).create(sync_conn)


async def indexes(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'user'"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'user'"
        return set(await conn.scalars(text(sql)))


async def test_0006_rewrites_old_addresses_into_the_canonical_form(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(engine, "0004")
    async with engine.begin() as conn:  # the read model as deployments before 0006 have it
        await conn.run_sync(legacy_user_table)
    assert "ix_user_email_lower" in await indexes(engine)
    async with engine.begin() as conn:
        for uid, email, at in LEGACY.values():
            await conn.execute(
                insert(table_of(User)).values(
                    id=uid,
                    email=email,
                    hashed_password="h",
                    is_active=True,
                    is_superuser=False,
                    is_verified=False,
                    version=1,
                    created_at=at,
                    updated_at=at,
                )
            )
            # the old reservation rule
            await conn.execute(
                insert(email_reservations).values(
                    email=email.strip().lower(), user_id=uid, reserved_at=at
                )
            )

    with caplog.at_level(logging.WARNING, logger="registry.migrations"):
        await migrate(engine)
    warned = [r.getMessage() for r in caplog.records if r.name == "registry.migrations"]
    assert len(warned) == 1, warned
    assert str(LEGACY["nfc"][0]) in warned[0], warned

    async with engine.connect() as conn:
        stored = {
            row[0]: row[1]
            for row in await conn.execute(select(User.__table__.c.id, User.__table__.c.email))
        }
        keys = select(email_reservations.c.email, email_reservations.c.user_id)
        reserved = {row[0]: row[1] for row in await conn.execute(keys)}
        index_columns = await conn.run_sync(
            lambda c: {i["name"]: i["column_names"] for i in inspect(c).get_indexes("user")}
        )
    assert stored == {LEGACY[name][0]: CANONICAL[name] for name in LEGACY}
    # the earliest of the two spellings keeps the address; the later one's row is gone
    assert reserved == {CANONICAL[n]: LEGACY[n][0] for n in LEGACY if n != "nfc"}
    assert "ix_user_email_lower" not in await indexes(engine)
    assert index_columns["ix_user_email"] == ["email"]

    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        db = UserDatabase(session, User)
        for name, typed in [
            ("spaced", "Spaced@example.com"),
            ("dotted", "İnfo@example.com"),
            ("nfd", NFD),
            ("nfd", NFC.upper()),  # both rows hold it now: the first registered answers
            ("puny", "user@bücher.de"),
            ("plain", " PLAIN@example.com"),
            ("odd", "not-an-email"),
        ]:
            user = await db.get_by_email(typed)
            assert user is not None, (name, typed)
            assert user.id == LEGACY[name][0], (name, typed)

    await migrate(engine)  # again: nothing left to change
    async with engine.connect() as conn:
        assert {row[0] for row in await conn.execute(keys)} == set(reserved)
