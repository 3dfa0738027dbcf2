"""Running the bus: the command consumer and the event relay on one broker connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from registry.bootstrap import Container
from registry.bus.brokers import Broker, create_broker
from registry.bus.channels import Channels
from registry.bus.consumer import CommandConsumer
from registry.bus.relay import RELAY_NAME, EventPublisher, EventRelay
from registry.bus.replies import Handle
from registry.service.handlers import CommandHandlers

log = logging.getLogger("registry.bus")


@dataclass
class BusRuntime:
    broker: Broker
    consumer: CommandConsumer
    publisher: EventPublisher
    relay: EventRelay | None


def command_handlers(container: Container) -> CommandHandlers:
    """The container's `CommandHandlers` (the one write path), built once and cached."""
    return container.handlers()


@contextlib.asynccontextmanager
async def relaying(container: Container, relay: EventRelay) -> AsyncIterator[None]:
    """Run `relay` on the projection worker machinery (`Container.relay_worker`)."""
    settings = container.settings
    worker = container.relay_worker(relay)
    task = asyncio.create_task(worker.run(), name=f"{relay.name}-worker")
    try:
        yield
    finally:
        if not await worker.shut_down(task, grace=settings.lease_ttl + 5):
            log.warning("relay did not stop in time; its lease will expire")
        elif not task.cancelled() and task.exception() is not None:
            log.error("relay stopped with an error", exc_info=task.exception())


@contextlib.asynccontextmanager
async def running_bus(
    container: Container,
    *,
    broker: Broker | None = None,
    handle: Handle | None = None,
    channels: Channels | None = None,
    relay: bool = True,
    relay_name: str = RELAY_NAME,
    max_workers: int | None = None,
    ack_wait: float | None = None,
) -> AsyncIterator[BusRuntime]:
    """Consume commands (and relay events) until the block exits. `broker` defaults to one
    built from `settings.broker_url`."""
    settings = container.settings
    if broker is None:
        if not settings.broker_url:
            raise ValueError("no broker configured: set REGISTRY_BROKER_URL")
        broker = create_broker(settings.broker_url)
    ch = channels or Channels(settings.bus_prefix)
    consumer = CommandConsumer(
        broker,
        handle or command_handlers(container).handle,
        channels=ch,
        max_payload_bytes=settings.max_payload_bytes,
        max_workers=max_workers if max_workers is not None else settings.bus_max_workers,
        ack_wait=ack_wait if ack_wait is not None else settings.bus_ack_wait,
    )
    publisher = EventPublisher(broker, ch, container.store)
    await broker.connect()
    try:
        await consumer.prepare()
        await publisher.prepare()
        await broker.start()
        await consumer.begin()
        log.info("bus consumer started", extra={"prefix": ch.prefix, "broker": consumer.kind})
        if not relay:
            yield BusRuntime(broker, consumer, publisher, None)
            return
        event_relay = EventRelay(publisher, relay_name)
        async with relaying(container, event_relay):
            yield BusRuntime(broker, consumer, publisher, event_relay)
    finally:
        await consumer.finish()
        await broker.stop()
        log.info("bus consumer stopped")
