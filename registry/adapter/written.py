"""A write's user without reading it back.

When a command's events were projected in the transaction that appended them (inline mode,
or worker mode's writer-side fast path), the row they wrote is exactly what the projection's
fold of those events gives: the adapter hands the app that user as an ORM instance of its
session, as loaded, instead of a SELECT. Whenever that cannot be exact (a column whose value
the fold does not know, such as a server default; an instance whose other attributes are
expired; anything but a plain row insert or update) it returns None or False and the adapter
reads the user back as before.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import Column
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, class_mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value

from projections import UserProjection
from projections.folding import StreamChange
from registry.service.handlers import Outcome

T = TypeVar("T")


def _attributes(mapper: Mapper[Any], values: dict[str, Any]) -> dict[str, Any] | None:
    """The inserted row's values by attribute key: `values` (by column name), and for a column
    they leave out what the INSERT gave it (its scalar default, else NULL). None when that is
    not known here (a server default, a default computed at insert time)."""
    found: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        columns = prop.columns
        if len(columns) != 1 or not isinstance(columns[0], Column):
            return None
        column = columns[0]
        if column.key in values:
            found[prop.key] = values[column.key]
        elif column.server_default is not None:
            return None
        elif column.default is None:
            found[prop.key] = None
        elif column.default.is_scalar:
            found[prop.key] = cast(Any, column.default).arg
        else:
            return None
    return found


def _folded(projection: UserProjection, outcome: Outcome, *, before: int) -> StreamChange:
    change = StreamChange(outcome.user_id, version=before, in_db=before > 0)
    projection.fold({outcome.user_id: change}, outcome.events)
    return change


def created(
    session: AsyncSession, model: type[T], projection: UserProjection, outcome: Outcome
) -> T | None:
    """The user a registration projected, as a persistent instance of `session`; None when it
    cannot be built exactly (then read it back)."""
    if outcome.duplicate or not outcome.events or outcome.events[0].stream_version != 1:
        return None
    change = _folded(projection, outcome, before=0)
    if change.insert is None or change.oauth_insert or change.deleted:
        return None
    mapper: Mapper[Any] = class_mapper(model)
    values = _attributes(mapper, change.insert)
    if values is None:
        return None
    user: T = mapper.class_manager.new_instance()
    for key, value in values.items():
        set_committed_value(user, key, value)
    for rel in mapper.relationships:  # a new user has no related rows yet
        set_committed_value(user, rel.key, [] if rel.uselist else None)
    make_transient_to_detached(user)
    try:
        session.add(user)
    except InvalidRequestError:  # the session holds another instance of this user
        return None
    return user


def updated(
    session: AsyncSession, user: object, projection: UserProjection, outcome: Outcome
) -> bool:
    """Apply the columns an update projected to `user` as loaded values; False (nothing
    changed) when that cannot make it exactly the row (then read it back)."""
    if outcome.duplicate or not outcome.events:
        return False
    state = instance_state(user)
    if state.session is not session.sync_session or state.expired_attributes or state.modified:
        return False
    before = outcome.events[0].stream_version - 1
    if state.dict.get("version") != before:
        return False
    change = _folded(projection, outcome, before=before)
    if (
        change.insert is not None
        or change.deleted
        or change.wipe
        or change.oauth_insert
        or change.oauth_update
        or not change.update
    ):
        return False
    mapper: Mapper[Any] = state.mapper
    keys: dict[str, str] = {}
    for name in change.update:
        column = mapper.local_table.c.get(name)
        if column is None:
            return False
        keys[name] = mapper.get_property_by_column(column).key
    for name, value in change.update.items():
        set_committed_value(user, keys[name], value)
    return True
