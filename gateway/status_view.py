"""Human view of ``gridedge status`` (rich tables); scripts use ``--json``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_status"]


def render_status(status: dict[str, Any], db: str, console: Console | None = None) -> None:
    """Print the store summary and the per-device table."""
    con = console or Console()
    summary = Table(title=f"gridedge store {db}", show_header=False)
    for key in ("points", "readings", "events", "alerts", "outbox"):
        summary.add_row(key, f"{status.get(key, 0):,}")
    for key, val in status.items():
        if key not in ("points", "readings", "events", "alerts", "outbox", "devices") and not isinstance(
            val, dict | list
        ):
            summary.add_row(key, str(val))
    con.print(summary)
    devices = Table(title="devices")
    for col in ("device", "state", "points", "good"):
        devices.add_column(col)
    for name, d in sorted(status.get("devices", {}).items()):
        colour = "green" if d.get("state") == "up" else "red"
        devices.add_row(name, f"[{colour}]{d.get('state')}[/]", str(d.get("points")), str(d.get("good")))
    con.print(devices)
