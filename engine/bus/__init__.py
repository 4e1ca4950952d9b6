"""Event buses: in-memory for backtests, Redis Streams for daemons, one contract for both."""

from engine.bus.base import Bus, Consumer, DeadLetter, Delivery, check_topic, stream_id_order
from engine.bus.embedded import EmbeddedRedis, find_redis_server
from engine.bus.memory import MemoryBus
from engine.bus.processing import ConsumerLoop, ConsumeSettings, ConsumeStats, Handler
from engine.bus.redis_streams import RedisBus

__all__ = [
    "Bus",
    "ConsumeSettings",
    "ConsumeStats",
    "Consumer",
    "ConsumerLoop",
    "DeadLetter",
    "Delivery",
    "EmbeddedRedis",
    "Handler",
    "MemoryBus",
    "RedisBus",
    "check_topic",
    "find_redis_server",
    "stream_id_order",
]
