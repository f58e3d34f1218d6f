"""Sessions: a client's identity, subscriptions, private queue, consumers and will."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Final

from .delivery import Consumer, Delivery, Sink
from .message import Message
from .selector import Selector

if TYPE_CHECKING:
    from ..auth.acl import Principal
    from .queue import Queue

NEVER = math.inf


class Trust(Enum):
    """An identity the core does not check: the caller checked it itself (an HTTP pull
    consumer shared by many requests, a signed webhook) or it is not known yet (a
    session recovered from the store, checked again when a client resumes it)."""

    TRUSTED = "trusted"


TRUSTED: Final = Trust.TRUSTED


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeOptions:
    """Per-subscription options (MQTT 5 names; other protocols use the defaults).

    ``retain_handling``: 0 sends retained messages on subscribe, 1 only if the
    subscription is new, 2 never.
    """

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None
    # Only messages it matches are delivered through this subscription (docs/selectors.md).
    selector: Selector | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The message published when a connection ends without a clean goodbye."""

    message: Message
    delay: float = 0.0


@dataclass(slots=True, eq=False)
class Session:
    """State the core keeps for one client id, across connections while it lives.

    ``expiry`` is how long the session outlives its connection, in seconds:
    0 ends it with the connection, ``NEVER`` keeps it until a clean start.
    ``incomplete`` holds the protocol ids of inbound exactly-once messages the
    client has not released yet (MQTT QoS 2 awaiting PUBREL): a resent one is
    not published twice, even across connections.
    """

    client_id: str
    expiry: float
    queue: Queue
    consumer: Consumer = field(init=False)
    subscriptions: dict[str, SubscribeOptions] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    temporary: list[str] = field(default_factory=list)
    incomplete: set[int] = field(default_factory=set)
    window: int = 65535
    will: Will | None = None
    will_due: float | None = None
    expires_at: float | None = None
    # Who the client is, for authorization (docs/security.md): None is anonymous.
    identity: Principal | Trust | None = None

    def __post_init__(self) -> None:
        self.consumer = Consumer(self.queue, self, qos=2)
        self.queue.attach(self.consumer)

    @property
    def sink(self) -> Sink | None:
        return self.consumer.sink

    @property
    def connected(self) -> bool:
        return self.consumer.sink is not None

    @property
    def durable(self) -> bool:
        return self.expiry > 0

    def inflight(self) -> list[Delivery]:
        """Deliveries sent on the private queue and not yet acknowledged, oldest first."""
        return sorted(self.consumer.unacked.values(), key=lambda d: d.tag)

    def all_consumers(self) -> list[Consumer]:
        return [self.consumer, *self.consumers.values()]

    def in_flight(self) -> int:
        """Deliveries awaiting acknowledgement over all this session's consumers."""
        return len(self.consumer.unacked) + sum(len(c.unacked) for c in self.consumers.values())
