"""Suite-wide settings. Area fixtures live in tests/fixtures_<area>.py."""

from __future__ import annotations

import os

# Substations are offline: no test may let Flower phone home.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
