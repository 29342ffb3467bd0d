"""One log line per event, ``key=value``, to stderr (journald adds time and unit)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["kv", "setup_logging"]


def _fmt_value(v: Any) -> str:
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    if s == "" or any(c in s for c in ' ="\n'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def kv(event: str, **fields: Any) -> str:
    """``kv("device_down", device="rtu1", error="refused")`` → ``event=device_down device=rtu1 error=refused``."""
    parts = [f"event={event}"]
    parts += [f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once. Under systemd (JOURNAL_STREAM set) timestamps are left to journald."""
    under_journald = "JOURNAL_STREAM" in os.environ
    fmt = "level=%(levelname)s logger=%(name)s %(message)s"
    if not under_journald:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter (pymodbus logs every reconnect attempt at error level) stays at warning.
    for noisy in ("asyncio", "numba", "matplotlib", "flwr"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pymodbus logs an ERROR of its own next to every timeout the driver already reports with context.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
