"""Waiting for a condition: tests poll for the state they expect, with a deadline, never sleep
for a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    message: str,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    message: str,
    interval: float = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], object],
    *,
    timeout: float,
    message: str,
    interval: float = 0.05,
) -> object:
    """Call `condition` (a plain or an async function) every `interval` seconds until it returns
    a truthy value, and return that value.

    An exception from `condition` counts as "not yet" (the state may not exist yet), except an
    AssertionError: that is an invariant checked on every poll, and fails at once. After
    `timeout` seconds an AssertionError names `message` and the last value or exception (which
    is also its cause).
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: Exception | None = None
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError:
            raise
        # the condition may fail until the state it waits for exists; the last failure is
        # reported on timeout
        except Exception as exc:  # noqa: BLE001
            failure, value = exc, None
        if failure is None and value:
            return value
        if time.monotonic() >= deadline:
            last = f"last error: {failure!r}" if failure is not None else f"last value: {value!r}"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; {last}"
            ) from failure
        await asyncio.sleep(interval)
