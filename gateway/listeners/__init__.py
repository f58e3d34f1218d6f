"""Listeners: one module per protocol, owning sockets, TLS, time and cancellation.

``_serve`` accepts connections and owns their tasks; each protocol module
turns codec events into core calls through a session adapter.
"""

from ._serve import BoundAddress, Connection, StartupError, TCPServer

__all__ = ["BoundAddress", "Connection", "StartupError", "TCPServer"]
