"""gridedge scoring: per-slot baselines, group composites, grid rules and sensor-fault checks.

Pure computation (numpy, numba); no I/O, no asyncio. The same :class:`Detector` serves the live daemon
and ``gridedge replay``.
"""

from .detector import STATE_VERSION, Detector
from .slots import N_SLOTS, SlotClock

__all__ = ["N_SLOTS", "STATE_VERSION", "Detector", "SlotClock"]
