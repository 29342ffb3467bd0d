"""gridedge scoring: per-slot baselines, group composites, grid rules and sensor-fault checks.

Pure computation (numpy, numba); no I/O, no asyncio. The same :class:`Detector` serves the live daemon
and ``gridedge replay``.
"""

from .detector import STATE_VERSION, Detector
from .rules import RULE_NAMES
from .slots import N_SLOTS, SlotClock

__all__ = ["N_SLOTS", "RULE_NAMES", "STATE_VERSION", "Detector", "SlotClock"]
