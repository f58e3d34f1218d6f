"""The prefixes that give a destination name its meaning in the core."""

from __future__ import annotations

SHARE_PREFIX = "$share/"
QUEUE_PREFIX = "$queue/"
SESSION_QUEUE_PREFIX = "$session/"
TEMP_QUEUE_PREFIX = "$temp/"
# Bridges' outboxes (gateway/bridges): only the gateway's own sessions consume them.
BRIDGE_QUEUE_PREFIX = "$bridge/"
