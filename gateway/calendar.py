"""Public holidays: days whose load follows a Sunday, whatever weekday they fall on.

``scoring.holidays`` lists ISO dates (``2026-12-24``) and/or region codes of the ``holidays`` package
(``DE`` for Germany's national holidays, ``DE-BY`` for Bavaria's): an office feeder on Easter Monday
draws a Sunday's load, and scoring it against a Monday's slots would look like a load drop at every
opening hour. The slot clock (:mod:`gridedge.scoring.slots`) maps such a day to Sunday's slots; the config models
validate the entries with the same function. A shared leaf: it imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import holidays as holidays_lib

__all__ = ["HolidayError", "day_numbers", "resolve_holidays"]

_YEARS = range(2015, 2061)  # the service life of a gateway installed today, and history replayed into it
_EPOCH = date(1970, 1, 1)


class HolidayError(ValueError):
    """A holiday entry that is neither an ISO date nor a known region code."""


def resolve_holidays(spec: Iterable[str]) -> frozenset[date]:
    """The dates ``spec`` names (ISO dates and region codes like ``DE`` / ``DE-BY``)."""
    out: set[date] = set()
    for item in spec:
        text = str(item).strip()
        try:
            out.add(date.fromisoformat(text))
            continue
        except ValueError:
            pass
        country, _, subdiv = text.partition("-")
        try:
            cal = holidays_lib.country_holidays(country.upper(), subdiv=subdiv.upper() or None, years=_YEARS)
        except (NotImplementedError, KeyError, ValueError) as exc:
            raise HolidayError(
                f"holiday entry {text!r} is neither a date (YYYY-MM-DD) nor a region code such as DE or DE-BY"
                f" ({exc})"
            ) from exc
        out.update(cal.keys())
    return frozenset(out)


def day_numbers(days: Iterable[date]) -> list[int]:
    """Local day numbers (days since 1970-01-01) of ``days``, sorted."""
    return sorted((d - _EPOCH).days for d in days)
