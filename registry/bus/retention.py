"""What each broker keeps of a command, and for how long: commands carry passwords and OAuth
tokens in clear, so none stays at rest once handled.

- NATS: the commands stream has work-queue retention (a message is removed when acknowledged
  or terminated), a size bound (`COMMAND_STREAM_MAX_BYTES`, new commands refused when full,
  never old ones dropped) and `COMMAND_MAX_AGE` for a command nobody handles.
- RabbitMQ: a classic queue drops a message once acknowledged; the queue is bounded
  (`x-max-length-bytes`, publishes refused when full) and dead letters expire.
- Redis: the consumer deletes an entry (XDEL) once acknowledged (`registry.bus.consumer`),
  and trims entries older than `COMMAND_MAX_AGE` (`trim_redis_streams`: also those published
  before the consumer group existed, which the group never delivers).

An existing deployment is migrated at start-up, never crashed: a limits-retention commands
stream (JetStream cannot change retention in place) is sealed, drained of its unhandled
commands through the usual path, deleted and created again; a RabbitMQ queue declared with
other arguments is recreated when empty, else kept as it is with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustConnection
    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig, StreamInfo
    from pamqp.common import FieldTable
    from redis.asyncio import Redis

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.

log = logging.getLogger("registry.bus")

#: a command nobody handles is dropped after this long (seconds)
COMMAND_MAX_AGE = 24 * 3600.0
#: bytes of unhandled commands a stream or queue holds before refusing new ones
COMMAND_STREAM_MAX_BYTES = 256 * 1024 * 1024
#: a dead-lettered (malformed) command is kept this long for inspection (milliseconds)
DEAD_LETTER_TTL_MS = 24 * 3600 * 1000
DEAD_LETTER_MAX_BYTES = 16 * 1024 * 1024
#: seconds between two trims of the Redis command streams
TRIM_INTERVAL = 60.0


def max_message_size(max_payload_bytes: int) -> int:
    """The largest message the broker takes: room above the consumer's payload limit, so a
    payload a little too large is still answered PAYLOAD_TOO_LARGE; a larger one is refused
    to the publisher by the broker itself."""
    return 4 * max_payload_bytes + 16 * 1024


# ---------------------------------------------------------------------------- NATS


def command_stream_config(name: str, subjects: list[str], max_payload_bytes: int) -> StreamConfig:
    from nats.js.api import (  # noqa: PLC0415 broker client, loaded on use
        DiscardPolicy,
        RetentionPolicy,
        StreamConfig,
    )

    return StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.WORK_QUEUE,
        max_age=COMMAND_MAX_AGE,
        max_bytes=COMMAND_STREAM_MAX_BYTES,
        max_msg_size=max_message_size(max_payload_bytes),
        discard=DiscardPolicy.NEW,
    )


async def unhandled(js: JetStreamContext, stream: StreamInfo, durable: str) -> int:
    """Commands in `stream` its durable consumer has not settled."""
    from nats.js.errors import NotFoundError  # noqa: PLC0415 broker client, loaded on use

    try:
        info = await js.consumer_info(stream_name(stream.config), durable)
    except NotFoundError:  # never consumed: everything in it is unhandled
        return int(stream.state.messages)
    return int(info.num_pending + info.num_ack_pending)


Drain = Callable[["StreamInfo"], Awaitable[None]]


def stream_name(config: StreamConfig) -> str:
    """The name of a stream's `config` (optional in nats-py's type; a stream always has one)."""
    if config.name is None:
        raise ValueError("a JetStream stream config without a name")
    return config.name


async def declare_command_stream(
    js: JetStreamContext, config: StreamConfig, durable: str, drain: Drain
) -> StreamInfo:
    """Create the commands stream of `config` (work-queue retention), or bring an existing one
    to it; returns its StreamInfo.

    A stream left by an older version with limits retention is migrated: its subjects are
    moved aside (a command published meanwhile is refused to its publisher, never lost
    silently), `drain(stream_info)` handles what it still holds, then it is deleted and
    created again. If it cannot be drained, its subjects are put back and it keeps serving
    as it was (a warning says so); the next start tries again."""
    from nats.js.errors import (  # noqa: PLC0415 broker client, loaded on use
        BadRequestError,
        NotFoundError,
    )

    try:
        return await js.add_stream(config)
    except BadRequestError:  # exists with another config
        pass
    name = stream_name(config)
    old = await js.stream_info(name)
    if old.config.retention == config.retention:
        return await js.update_stream(config)
    log.warning(
        "command stream keeps handled commands (%s retention): migrating it to work-queue "
        "retention",
        old.config.retention,
        extra={"stream": name, "messages": old.state.messages},
    )
    sealed = dataclasses.replace(old.config, subjects=[f"_registry_migrating.{name}"])
    await js.update_stream(sealed)
    try:
        left = await unhandled(js, old, durable)
        if left:
            log.warning("draining unhandled commands before the migration", extra={"count": left})
            await drain(old)
            left = await unhandled(js, await js.stream_info(name), durable)
        if left:
            raise RuntimeError(f"{left} commands still unhandled")
        # another consumer process may have finished the same migration meanwhile: delete
        # only a stream that still has the old retention
        if (await js.stream_info(name)).config.retention == old.config.retention:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    except Exception as exc:  # noqa: BLE001 whatever failed, the old stream keeps serving
        with contextlib.suppress(Exception):
            await js.update_stream(old.config)
        log.warning(
            "command stream not migrated; it keeps serving with its old retention until the "
            "next start",
            extra={"stream": name, "error": f"{type(exc).__name__}: {exc}"},
        )
        return await js.stream_info(name)
    try:
        info = await js.add_stream(config)
    except BadRequestError:  # created by another consumer process just now
        info = await js.update_stream(config)
    log.warning("command stream migrated to work-queue retention", extra={"stream": name})
    return info


# ---------------------------------------------------------------------------- RabbitMQ


def command_queue_arguments(dead_letter_exchange: str) -> FieldTable:
    return {
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-max-length-bytes": COMMAND_STREAM_MAX_BYTES,
        "x-overflow": "reject-publish",
    }


def dead_letter_queue_arguments() -> FieldTable:
    return {
        "x-message-ttl": DEAD_LETTER_TTL_MS,
        "x-max-length-bytes": DEAD_LETTER_MAX_BYTES,
        "x-overflow": "drop-head",
    }


async def ensure_queue(
    connection: AbstractRobustConnection, name: str, arguments: FieldTable
) -> bool:
    """Declare the durable queue `name` with `arguments` on a channel of its own. True when it
    has them; False when it exists with other arguments and still holds messages: it is kept
    as it is (RabbitMQ cannot change a queue's arguments) and a warning says so. An empty one
    is deleted and declared again."""
    from aiormq.exceptions import (  # noqa: PLC0415 broker client, loaded on use
        ChannelPreconditionFailed,
    )

    try:
        async with connection.channel() as channel:
            await channel.declare_queue(name, durable=True, arguments=arguments)
        return True
    except ChannelPreconditionFailed:
        pass
    async with connection.channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        if count == 0:
            await channel.queue_delete(name, if_empty=True)
            await channel.declare_queue(name, durable=True, arguments=arguments)
            log.warning("queue declared again with bounded retention", extra={"queue": name})
            return True
    log.warning(
        "queue has other arguments and holds messages: kept as it is (unbounded) until it "
        "is empty at a start",
        extra={"queue": name, "messages": count},
    )
    return False


# ---------------------------------------------------------------------------- Redis


async def trim_redis_streams(
    client: Redis, streams: list[str], interval: float = TRIM_INTERVAL
) -> None:
    """Every `interval` seconds (and at once), remove the entries of `streams` older than
    `COMMAND_MAX_AGE` (an entry id starts with its time in milliseconds): the age bound NATS
    has, for commands nobody handled. Runs until cancelled; a failure is logged and retried."""
    while True:
        cutoff = int((time.time() - COMMAND_MAX_AGE) * 1000)
        for stream in streams:
            try:
                trimmed = await client.xtrim(stream, minid=f"{cutoff}-0", approximate=False)
            except Exception as exc:  # noqa: BLE001 the loop outlives any failure: tried again
                log.warning("command stream not trimmed", extra={"error": type(exc).__name__})
                continue
            if trimmed:
                log.warning(
                    "unhandled commands dropped after their maximum age",
                    extra={"stream": stream, "count": trimmed},
                )
        await asyncio.sleep(interval)
