"""The protocol-neutral broker core: messages, destinations, routing and delivery.

The core knows no wire protocol. Listeners and bridges call it with ``Message``
objects through the ``Broker`` facade; it calls them back through ``Sink``.
Routing is a synchronous function call, never an ``await``.
"""

from .broker import Broker, CloseReason, Session, Sink
from .message import Kind, Message, Origin

__all__ = ["Broker", "CloseReason", "Kind", "Message", "Origin", "Session", "Sink"]
