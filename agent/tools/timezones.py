"""Places to IANA time zones: "what time is it in Tokyo?" names a city, the clock needs "Asia/Tokyo"."""

from __future__ import annotations

import re
import zoneinfo
from functools import cache

_REGIONS = ("Europe", "Asia", "America", "Africa", "Australia", "Pacific", "Atlantic", "Indian", "Antarctica")


@cache
def _zones_by_place() -> dict[str, str]:
    """Each zone by its place name ("tokyo": "Asia/Tokyo", "new york": "America/New_York"); the shortest
    zone name wins where two share a place ("Asia/Istanbul" and "Europe/Istanbul")."""
    places: dict[str, str] = {"utc": "UTC", "gmt": "UTC"}
    for zone in sorted(zoneinfo.available_timezones(), key=len, reverse=True):
        if zone.split("/", 1)[0] in _REGIONS and "/" in zone:
            places[zone.rsplit("/", 1)[1].replace("_", " ").lower()] = zone
    return places


def zone_in(question: str) -> str | None:
    """The IANA zone of a place the question names, or None."""
    words = re.findall(r"[a-z]+", question.lower())
    places = _zones_by_place()
    for size in (3, 2, 1):
        for i in range(len(words) - size + 1):
            zone = places.get(" ".join(words[i : i + size]))
            if zone is not None:
                return zone
    return None
