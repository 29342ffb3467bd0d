"""Human view of ``gridedge status`` (rich tables); scripts use ``--json``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_status"]


def _human(key: str, val: Any) -> str:
    """Times as ISO 8601 UTC, byte counts as MiB, everything else as it is."""
    if isinstance(val, int | float) and not isinstance(val, bool):
        if key.endswith("_reading") or key in ("updated", "last_commit_ts"):
            return datetime.fromtimestamp(val, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if key.endswith("_bytes"):
            return f"{val / 2**20:,.1f} MiB"
    return str(val)


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
            summary.add_row(key, _human(key, val))
    scoring = status.get("scoring")
    if isinstance(scoring, dict):
        line = str(scoring.get("state"))
        if scoring.get("state") in ("compiling", "catching_up"):
            line += f" since {_human('updated', scoring.get('since'))}, {scoring.get('readings_waiting', 0):,} readings waiting"
        if scoring.get("readings_unscored"):
            line += f", {scoring['readings_unscored']:,} stored but never scored"
        summary.add_row("scoring", line)
    con.print(summary)
    devices = Table(title="devices")
    for col in ("device", "state", "points", "good", "retry in", "last error"):
        devices.add_column(col, overflow="fold")
    for name, d in sorted(status.get("devices", {}).items()):
        colour = {"up": "green", "degraded": "yellow"}.get(str(d.get("state")), "red")
        backoff = d.get("backoff")
        devices.add_row(
            name, f"[{colour}]{d.get('state')}[/]", str(d.get("points")), str(d.get("good")),
            f"{backoff:.1f} s" if isinstance(backoff, int | float) and d.get("state") == "down" else "",
            str(d.get("last_error") or ""),
        )  # fmt: skip
    con.print(devices)
