"""Commands over NATS JetStream, on the nats-py client of a connected FastStream `NatsBroker`
(`broker.connection`).

Both ends keep FastStream's wire format, so either side can still be FastStream's own: a
command is a JetStream message whose `reply_to` header names where its reply goes (what
`NatsBroker.request(..., stream=...)` sends), and the reply is JSON with `content-type` and
`correlation_id` headers (what a FastStream subscriber answers).

Why not FastStream's subscriber and request here: its per-message path (middlewares, context
scopes, FastDepends, a task group and a memory stream per message) costs the consumer several
times the CPU of this loop per message, and its JetStream request subscribes and
unsubscribes a reply inbox per request. RabbitMQ, Redis and Kafka stay on
FastStream's subscribers (`registry.bus.consumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.bus.replies import bus_id
from registry.bus.retention import declare_command_stream, stream_name, unhandled

if TYPE_CHECKING:
    from faststream.nats import NatsBroker
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig, StreamInfo

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.

log = logging.getLogger("registry.bus")

#: how long one fetch waits for commands before asking again
FETCH_TIMEOUT = 5.0
#: pause after the server or the connection failed a fetch, before the next one
RETRY_PAUSE = 1.0


async def declare_stream(broker: NatsBroker, config: StreamConfig) -> None:
    """Create the JetStream stream of `config`, or bring an existing one to it."""
    from nats.js.errors import BadRequestError  # noqa: PLC0415 broker client, loaded on use

    js = broker.connection.jetstream()
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with another config
        await js.update_stream(config)


#: runs one fetched message: the message, its identity on the broker, and when the fetch
#: returned it (`time.time()`)
Run = Callable[["Msg", str, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerTiming:
    """One command's way through the NATS consumer, wall-clock seconds (`time.time()`, so
    they compare with another process's on the same machine): when the stream stored it (the
    server's timestamp), when the fetch returned it, when its handling began and ended (body
    to typed reply), and when its reply was handed to the connection."""

    correlation_id: str
    stored: float
    fetched: float
    started: float
    handled: float
    replied: float


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """One request's times at the client, wall-clock seconds (`time.time()`): sent, confirmed
    by the stream (its PubAck), and answered."""

    correlation_id: str
    sent: float
    acked: float
    replied: float


def _incarnation(info: StreamInfo) -> str:
    """When the stream was created: sequences start again at 1 in a stream created again, so
    a message's identity is its stream, this, and its sequence."""
    created = getattr(info, "created", None)
    return created.strftime("%Y%m%dT%H%M%S.%f") if created is not None else "0"


class NatsCommandLoop:
    """A durable pull consumer on the command stream (`stream`: its StreamConfig, work-queue
    retention) served by `max_workers` workers, each on a pull subscription of its own: a
    worker asks for one message, hands it to `run` with the message's identity on the broker
    (`bus:nats:<stream>:<created>:<sequence>`), which replies and acknowledges
    (`registry.bus.consumer.CommandConsumer._run_nats`), and asks again once it is done. A
    message `run` did not acknowledge is redelivered after `ack_wait`.

    One pull request of one message per free worker, rather than one fetch of as many
    messages as there are free workers: nats-py's fetch of several messages returns only
    when all of them have come (or its timeout passed), so the first would wait in the client
    for the last; here each message is run as soon as it arrives."""

    def __init__(
        self,
        broker: NatsBroker,
        *,
        stream: StreamConfig,
        subject: str,
        durable: str,
        run: Run,
        max_workers: int,
        ack_wait: float,
        max_deliver: int = 20,
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.run = run
        self.max_workers = max_workers
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self._workers: set[asyncio.Task[None]] = set()
        #: the workers waiting for a message, not running one
        self._idle: set[asyncio.Task[None]] = set()
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._stopping = asyncio.Event()
        self.incarnation = "0"

    async def start(self) -> None:
        from nats.js.api import ConsumerConfig  # noqa: PLC0415 broker client, loaded on use

        js = self.broker.connection.jetstream()
        info = await declare_command_stream(js, self.stream, self.durable, self._drain)
        self.incarnation = _incarnation(info)
        first = await js.pull_subscribe(
            self.subject,
            durable=self.durable,
            stream=self.stream.name,
            config=ConsumerConfig(ack_wait=self.ack_wait, max_deliver=self.max_deliver),
        )
        await self._serve(js, first, stream_name(self.stream), f"{self.durable}-fetch")

    async def _serve(
        self, js: JetStreamContext, first: JetStreamContext.PullSubscription, stream: str, name: str
    ) -> None:
        """Start the workers: `first` and a pull subscription bound to the durable consumer
        on `stream` for each of the others."""
        self._stopping = stopping = asyncio.Event()
        self._subs = [first]
        for _ in range(self.max_workers - 1):
            self._subs.append(await js.pull_subscribe_bind(durable=self.durable, stream=stream))
        self._workers = {
            asyncio.create_task(self._worker(sub, stopping), name=f"{name}-{i}")
            for i, sub in enumerate(self._subs)
        }

    async def _drain(self, old: StreamInfo) -> None:
        """Handle what the old stream `old` (its subjects moved aside) still holds, through
        the usual path, until nothing is left or a deadline passes."""
        from nats.js.api import (  # noqa: PLC0415 broker client, loaded on use
            AckPolicy,
            ConsumerConfig,
        )
        from nats.js.errors import NotFoundError  # noqa: PLC0415 broker client, loaded on use

        js = self.broker.connection.jetstream()
        name = stream_name(old.config)
        try:
            ack_wait = (await js.consumer_info(name, self.durable)).config.ack_wait or 30.0
        except NotFoundError:
            ack_wait = self.ack_wait
            await js.add_consumer(
                name,
                ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=self.max_deliver,
                ),
            )
        self.incarnation = _incarnation(old)
        first = await js.pull_subscribe_bind(durable=self.durable, stream=name)
        await self._serve(js, first, name, f"{self.durable}-drain")
        # a message a dead consumer took comes back after the old consumer's ack wait
        deadline = time.monotonic() + ack_wait + 15.0
        try:
            while await unhandled(js, await js.stream_info(name), self.durable):
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)
        finally:
            await self.stop(grace=ack_wait)

    async def stop(self, grace: float) -> None:
        """Fetch no more, then give the commands already running up to `grace` seconds (one
        cut short is redelivered after `ack_wait`, and its identity deduplicates it)."""
        if self._workers:
            self._stopping.set()
            for worker in self._idle:
                worker.cancel()
            _, late = await asyncio.wait(self._workers, timeout=grace)
            busy = late - self._idle
            for worker in busy:
                worker.cancel()
            if busy:
                log.warning("commands cut short at shutdown", extra={"count": len(busy)})
                await asyncio.wait(busy)
            if late - busy:
                # a fetch in flight ends within its timeout even when the cancel is lost
                await asyncio.wait(late - busy, timeout=FETCH_TIMEOUT + 1.0)
            self._workers = set()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # the durable consumer stays on the server
        self._subs = []

    async def _worker(
        self, sub: JetStreamContext.PullSubscription, stopping: asyncio.Event
    ) -> None:
        from nats.errors import ConnectionClosedError  # noqa: PLC0415 broker client, loaded on use

        me = asyncio.current_task()
        assert me is not None
        # a stop flag as well as the cancellation: on Python 3.11 nats-py's fetch (an
        # asyncio.wait_for) can swallow a cancel that lands as a message arrives, and the
        # worker would go on fetching for ever
        while not stopping.is_set():
            # idle while it waits for a message: `stop` cancels it then, never mid-command
            self._idle.add(me)
            try:
                messages = await sub.fetch(1, timeout=FETCH_TIMEOUT)
            except TimeoutError:  # nats-py's own timeouts are TimeoutErrors too
                continue
            except ConnectionClosedError:
                return
            except Exception as exc:  # noqa: BLE001 refused, or connection down: fetch again
                log.warning("command fetch failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(RETRY_PAUSE)
                continue
            finally:
                self._idle.discard(me)
            fetched = time.time()
            for message in messages:
                # run here rather than in a task of its own: its reply and acknowledgement
                # then leave in the same write as this worker's next pull request
                await self._run_one(message, fetched)

    async def _run_one(self, message: Msg, fetched: float) -> None:
        try:
            meta = message.metadata
            await self.run(
                message,
                bus_id("nats", meta.stream, self.incarnation, meta.sequence.stream),
                fetched,
            )
        except Exception:  # whatever the handler raised, the loop goes on
            # left unacknowledged: redelivered after ack_wait
            log.exception("command message not handled", extra={"subject": message.subject})


class NatsRequester:
    """Request/reply over JetStream with one reply subscription per connection (a wildcard
    under a private inbox), where FastStream's request subscribes and unsubscribes once per
    request. Get it with `for_broker`."""

    _by_connection: weakref.WeakKeyDictionary[Client, NatsRequester] = weakref.WeakKeyDictionary()

    def __init__(self, connection: Client) -> None:
        self.connection = connection
        self.prefix = connection.new_inbox()
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._js = connection.jetstream()
        self._subscribed = asyncio.Lock()
        self._sub: Subscription | None = None
        #: called with each answered request's times when set (the benchmark's breakdown)
        self.observe: Callable[[RequestTiming], None] | None = None

    @classmethod
    def for_broker(cls, broker: NatsBroker) -> NatsRequester:
        connection = broker.connection
        found = cls._by_connection.get(connection)
        if found is None:
            found = cls._by_connection[connection] = cls(connection)
        return found

    async def _on_reply(self, message: Msg) -> None:
        waiter = self._waiting.pop(message.subject, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def _subscribe(self) -> None:
        async with self._subscribed:
            if self._sub is None:
                self._sub = await self.connection.subscribe(f"{self.prefix}.*", cb=self._on_reply)

    async def request(
        self, subject: str, body: bytes, *, stream: str, timeout: float, correlation_id: str
    ) -> Msg:
        """Publish `body` to `stream` and return the raw reply message; `TimeoutError` when
        the stream does not confirm it or no reply comes within `timeout` seconds."""
        if self._sub is None:
            await self._subscribe()
        inbox = f"{self.prefix}.{next(self._ids)}"
        waiter: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[inbox] = waiter
        observe = self.observe
        sent = time.time() if observe is not None else 0.0
        try:
            async with asyncio.timeout(timeout):
                await self._js.publish(
                    subject,
                    body,
                    stream=stream,
                    timeout=timeout,
                    headers={
                        "content-type": "application/json",
                        "correlation_id": correlation_id,
                        "reply_to": inbox,
                    },
                )
                if observe is None:
                    return await waiter
                acked = time.time()
                reply = await waiter
                observe(RequestTiming(correlation_id, sent, acked, time.time()))
                return reply
        finally:
            self._waiting.pop(inbox, None)


__all__ = [
    "ConsumerTiming",
    "NatsCommandLoop",
    "NatsRequester",
    "RequestTiming",
    "declare_stream",
]
