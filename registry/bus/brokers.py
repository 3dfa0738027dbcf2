"""A FastStream broker from a URL: the scheme picks NATS, RabbitMQ, Redis or Kafka."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from faststream.nats import NatsBroker
    from faststream.rabbit import RabbitBroker
    from faststream.redis import RedisBroker
    from typing_extensions import TypeIs

# A process talks to one broker: each broker's client library (FastStream's broker module,
# nats-py, aiormq) is imported in the function that uses that broker, because importing them
# all measurably slows the start of every process, `registry` commands included.

Kind = Literal["nats", "rabbit", "redis", "kafka"]

#: a FastStream broker of one of the four kinds
Broker: TypeAlias = "NatsBroker | RabbitBroker | RedisBroker | KafkaBroker"

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


def create_broker(
    url: str,
    **options: Any,  # noqa: ANN401 the broker's constructor keywords, which differ by broker
) -> Any:  # noqa: ANN401 a `Broker` of the URL's kind: callers use that kind's API unnarrowed
    """A new, unconnected FastStream broker for `url` (`options` go to its constructor).

    FastStream's own lines go through the standard `registry.bus.broker` logger (so they
    share the service's log format), its per-message access lines at DEBUG."""
    kind = broker_kind(url)
    options.setdefault("logger", logging.getLogger("registry.bus.broker"))
    options.setdefault("log_level", logging.DEBUG)
    if kind == "nats":
        from faststream.nats import NatsBroker  # noqa: PLC0415 broker client, loaded on use

        return NatsBroker(url, **options)
    if kind == "rabbit":
        from faststream.rabbit import RabbitBroker  # noqa: PLC0415 broker client, loaded on use

        return RabbitBroker(url, **options)
    if kind == "redis":
        from faststream.redis import RedisBroker  # noqa: PLC0415 broker client, loaded on use

        return RedisBroker(url, **options)
    from faststream.kafka import KafkaBroker  # noqa: PLC0415 broker client, loaded on use

    parts = urlsplit(url)
    servers = [s for s in (parts.netloc.split("@")[-1]).split(",") if s] or ["localhost:9092"]
    return KafkaBroker(servers, **options)


def broker_kind_of(broker: object) -> Kind:
    module = type(broker).__module__
    for kind in ("nats", "rabbit", "redis", "kafka"):
        if f"faststream.{kind}." in module:
            return kind
    raise TypeError(f"not a FastStream NATS/RabbitMQ/Redis/Kafka broker: {broker!r}")


# Narrowing a `Broker` to its kind, for what only that broker has; the kind is read from the
# class's module (as `broker_kind_of` does), so no broker's client is imported to tell.


def is_nats(broker: Broker) -> TypeIs[NatsBroker]:
    return "faststream.nats." in type(broker).__module__


def is_rabbit(broker: Broker) -> TypeIs[RabbitBroker]:
    return "faststream.rabbit." in type(broker).__module__


def is_redis(broker: Broker) -> TypeIs[RedisBroker]:
    return "faststream.redis." in type(broker).__module__


def is_kafka(broker: Broker) -> TypeIs[KafkaBroker]:
    return "faststream.kafka." in type(broker).__module__
