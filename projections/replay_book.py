"""A replay's progress rows ("the book"): rows of `projection_checkpoints` under the replay's
own name, so an interrupted replay resumes where it stopped.

During the bulk phase the book holds one row per shard (how far that shard is folded) and the
head H on a row of its own (partition -1); once every shard reaches H it holds one row
(`partitions` = 1), the catch-up cursor. At the swap the live projection's checkpoints take
the book's place.
"""

from __future__ import annotations

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from events import Cursor
from events.envelope import SHARDS
from projections.generations import table_names
from projections.tables import projection_checkpoints, projection_tombstones, utcnow

cp = projection_checkpoints


async def resumed_head(conn: AsyncConnection, book: str) -> Cursor | None:
    """The head of the replay in progress under `book`, None when there is none."""
    rows = (await conn.execute(select(cp.c.tx_id, cp.c.position).where(cp.c.name == book))).all()
    if not rows:
        return None
    return max((Cursor(r.tx_id, r.position) for r in rows), key=lambda c: (c.tx_id, c.position))


async def open_book(conn: AsyncConnection, book: str, head: Cursor) -> None:
    """Every shard at the start, and the head kept on a row of its own until every shard
    reaches it."""
    rows = [(s, Cursor.start()) for s in range(SHARDS)] + [(-1, head)]
    await conn.execute(
        insert(cp),
        [
            {
                "name": book,
                "partition": partition,
                "partitions": SHARDS,
                "tx_id": at.tx_id,
                "position": at.position,
                "updated_at": utcnow(),
            }
            for partition, at in rows
        ],
    )


async def shards_to_do(conn: AsyncConnection, book: str, head: Cursor) -> list[int] | None:
    """The shards the bulk phase has still to fold up to `head`; None when the bulk phase is
    done."""
    rows = (await conn.execute(select(cp).where(cp.c.name == book))).all()
    if any(r.partitions == 1 for r in rows):
        return None
    return sorted(
        r.partition for r in rows if r.partition >= 0 and Cursor(r.tx_id, r.position) != head
    )


async def close_bulk(conn: AsyncConnection, book: str, head: Cursor) -> None:
    """The bulk phase is done: one progress row at `head`, where the catch-up starts."""
    await conn.execute(delete(cp).where(cp.c.name == book))
    await conn.execute(
        insert(cp).values(
            name=book,
            partition=0,
            partitions=1,
            tx_id=head.tx_id,
            position=head.position,
            updated_at=utcnow(),
        )
    )


async def catch_up_cursor(conn: AsyncConnection, book: str) -> Cursor:
    row = (await conn.execute(select(cp.c.tx_id, cp.c.position).where(cp.c.name == book))).one()
    return Cursor(row.tx_id, row.position)


async def advance(conn: AsyncConnection, book: str, cursor: Cursor) -> None:
    await conn.execute(
        cp.update()
        .where(cp.c.name == book)
        .values(tx_id=cursor.tx_id, position=cursor.position, updated_at=utcnow())
    )


async def lock_out_live(
    conn: AsyncConnection, book: str, name: str, live_tables: list[Table]
) -> list[int]:
    """Lock out the live projectors of `name` and the readers of its tables until the swap
    commits; the live projection's partitions."""
    # lock out live projectors: their batches lock their checkpoint row first
    await conn.execute(cp.update().where(cp.c.name == book).values(updated_at=utcnow()))
    locked = select(cp.c.partition).where(cp.c.name == name).order_by(cp.c.partition)
    if conn.dialect.name == "postgresql":
        locked = locked.with_for_update()
    # checkpoint rows before the tables: a live batch locks its checkpoint row and then
    # writes the tables, so the other order deadlocks with it
    partitions = [r.partition for r in await conn.execute(locked)]
    if conn.dialect.name == "postgresql":
        names = ", ".join(conn.dialect.identifier_preparer.quote(t.name) for t in live_tables)
        existing = await conn.run_sync(table_names)
        if all(t.name in existing for t in live_tables):
            await conn.execute(text(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE"))
    return partitions


async def move_tombstones(conn: AsyncConnection, book: str, name: str) -> None:
    """The replay's deletion tombstones become the live projection's."""
    tomb = projection_tombstones
    await conn.execute(delete(tomb).where(tomb.c.projection == name))
    await conn.execute(tomb.update().where(tomb.c.projection == book).values(projection=name))


async def hand_over(
    conn: AsyncConnection, name: str, book: str, cursor: Cursor, partitions: int
) -> None:
    """The live projection `name` continues from `cursor` in `partitions` partitions; the book
    is closed."""
    await conn.execute(delete(cp).where(cp.c.name.in_([name, book])))
    await conn.execute(
        insert(cp),
        [
            {
                "name": name,
                "partition": p,
                "partitions": partitions,
                "tx_id": cursor.tx_id,
                "position": cursor.position,
                "updated_at": utcnow(),
            }
            for p in range(partitions)
        ],
    )


async def drop_book(conn: AsyncConnection, book: str) -> bool:
    """Forget the replay under `book` (its progress rows and tombstones); False when there was
    none."""
    found = await conn.scalar(select(func.count()).select_from(cp).where(cp.c.name == book))
    await conn.execute(delete(cp).where(cp.c.name == book))
    tomb = projection_tombstones
    await conn.execute(delete(tomb).where(tomb.c.projection == book))
    return bool(found)
