"""gateway: a Trio-based messaging gateway for MQTT, STOMP, WebSocket and HTTP clients."""

__version__ = "0.1.0"
