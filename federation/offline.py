"""Flower stays offline: substations (and the control centre's fleet network) have no internet.

Every flwr process gridedge starts — SuperNode, ``flwr run`` / ``flwr ls`` / ``flwr supernode``, the
simulation — gets these variables, so Flower's telemetry and its update check never try to reach out.
"""

from __future__ import annotations

__all__ = ["OFFLINE_ENV"]

OFFLINE_ENV: dict[str, str] = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
