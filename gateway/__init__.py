"""gridedge.gateway: composition root (CLI, config, runtime, store, MQTT, alert policy, health, demo)."""

__all__: list[str] = []
