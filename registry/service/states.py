"""The users this process wrote last, as their streams left them: a command on one of them is
decided without reading its stream again.

Only ever a guess: a write decided on a cached state appends guarded on its version, so if
another writer (another process, or the transaction path) moved the stream meanwhile, the
append conflicts and the command is decided again on the stream as read. A state is taken out
while a command uses it (two commands on one user do not share it) and put back after the
command's events, so the cache never holds a state the stream did not reach.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence

from events import Event
from registry.domain.decisions import UserState, evolve

#: users remembered per command handlers (the least recently written are forgotten first)
STATES_LIMIT = 4096


class States:
    """A bounded map of user id → the state at its stream's head as last written here."""

    def __init__(self, limit: int = STATES_LIMIT) -> None:
        self.limit = limit
        self._states: OrderedDict[uuid.UUID, UserState] = OrderedDict()

    def take(self, user_id: uuid.UUID) -> UserState | None:
        return self._states.pop(user_id, None)

    def put(self, state: UserState, new_events: Sequence[Event], version: int) -> None:
        """Remember `state` (owned by the cache from now on) once `new_events` took it to
        `version`."""
        for event in new_events:
            evolve(state, event)
        state.version = version
        self._states[state.user_id] = state
        while len(self._states) > self.limit:
            self._states.popitem(last=False)
