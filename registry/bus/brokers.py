"""A FastStream broker from a URL: the scheme picks NATS, RabbitMQ, Redis or Kafka."""

from __future__ import annotations

import logging
from typing import Any, Literal
from urllib.parse import urlsplit

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.

Kind = Literal["nats", "rabbit", "redis", "kafka"]

SCHEMES: dict[str, Kind] = {
    "nats": "nats",
    "tls": "nats",
    "amqp": "rabbit",
    "amqps": "rabbit",
    "redis": "redis",
    "rediss": "redis",
    "kafka": "kafka",
}


def broker_kind(url: str) -> Kind:
    scheme = urlsplit(url).scheme.lower()
    try:
        return SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"unsupported broker URL scheme {scheme!r}: use nats://, amqp://, redis:// or kafka://"
        ) from None


def create_broker(url: str, **options: Any) -> Any:
    """A new, unconnected FastStream broker for `url` (`options` go to its constructor).

    FastStream's own lines go through the standard `registry.bus.broker` logger (so they
    share the service's log format), its per-message access lines at DEBUG."""
    kind = broker_kind(url)
    options.setdefault("logger", logging.getLogger("registry.bus.broker"))
    options.setdefault("log_level", logging.DEBUG)
    if kind == "nats":
        from faststream.nats import NatsBroker

        return NatsBroker(url, **options)
    if kind == "rabbit":
        from faststream.rabbit import RabbitBroker

        return RabbitBroker(url, **options)
    if kind == "redis":
        from faststream.redis import RedisBroker

        return RedisBroker(url, **options)
    from faststream.kafka import KafkaBroker

    parts = urlsplit(url)
    servers = [s for s in (parts.netloc.split("@")[-1]).split(",") if s] or ["localhost:9092"]
    return KafkaBroker(servers, **options)


def broker_kind_of(broker: Any) -> str:
    module = type(broker).__module__
    for kind in ("nats", "rabbit", "redis", "kafka"):
        if f"faststream.{kind}." in module:
            return kind
    raise TypeError(f"not a FastStream NATS/RabbitMQ/Redis/Kafka broker: {broker!r}")
