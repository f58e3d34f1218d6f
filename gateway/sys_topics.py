"""`$SYS/broker/...` statistics, published as retained messages like Mosquitto's.

Clients subscribe to `$SYS/#` (wildcards at the first level never match `$`
topics, so `#` alone does not see them). Publishing to `$SYS` is refused.
"""

from __future__ import annotations

from . import __version__
from .core import Broker, Message, Origin

SYS_ORIGIN = Origin(protocol="internal", client_id="$SYS")


def sys_messages(broker: Broker, uptime: float) -> list[Message]:
    values = {
        "$SYS/broker/version": f"gateway {__version__}",
        "$SYS/broker/uptime": f"{int(uptime)} seconds",
        "$SYS/broker/clients/connected": broker.connected_count(),
        "$SYS/broker/clients/total": len(broker.sessions),
        "$SYS/broker/messages/received": broker.stats.published,
        "$SYS/broker/messages/sent": broker.delivered_total(),
        "$SYS/broker/messages/dropped": sum(broker.stats.drops.values()),
        "$SYS/broker/subscriptions/count": broker.subscription_count,
        "$SYS/broker/retained messages/count": len(broker.retained),
    }
    return [
        Message(destination=topic, payload=str(value).encode(), retain=True, origin=SYS_ORIGIN)
        for topic, value in values.items()
    ]


def publish_sys(broker: Broker, uptime: float) -> None:
    for message in sys_messages(broker, uptime):
        broker.publish(message)
