"""The /ws endpoint, its connection registry and heartbeat."""
