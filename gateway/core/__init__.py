"""The protocol-neutral broker core: messages, destinations, routing and delivery.

The core knows no wire protocol. Listeners and bridges call it with ``Message``
objects through the ``Broker`` facade; it calls them back through ``Sink``.
Routing is a synchronous function call, never an ``await``.
"""

from .broker import Broker, PublishResult, Status
from .delivery import CloseReason, Consumer, Delivery, Sink
from .headers import Headers, header_pairs
from .message import Kind, Message, Origin
from .queue import Overflow, Queue, QueuePolicy
from .session import NEVER, Session, SubscribeOptions, Will
from .topics import InvalidFilter, check_filter

__all__ = [
    "NEVER",
    "Broker",
    "CloseReason",
    "Consumer",
    "Delivery",
    "Headers",
    "InvalidFilter",
    "Kind",
    "Message",
    "Origin",
    "Overflow",
    "PublishResult",
    "Queue",
    "QueuePolicy",
    "Session",
    "Sink",
    "Status",
    "SubscribeOptions",
    "Will",
    "check_filter",
    "header_pairs",
]
