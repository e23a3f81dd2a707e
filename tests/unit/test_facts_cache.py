"""booking's per-process cache of place-and-facts: an entry counts only at the read-model version it was read at."""

from __future__ import annotations

import datetime as dt

from services.booking.domain import Place, Policy
from services.booking.store import Facts, FactsCache

T0 = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


def _entry(name: str) -> tuple[Place, Facts]:
    place = Place(resource_id=name, resource_name=name, category="x", status="active", policy=Policy.from_dict({}),
                  rates={}, lab_id="lab", lab_name="Lab", lab_org="ntnu", timezone="Europe/Oslo",
                  managers=frozenset())
    return place, Facts((T0, T0 + dt.timedelta(days=1)), (), "ada", True, None)


def test_an_entry_counts_only_at_its_version_and_per_user():
    cache = FactsCache()
    place, facts = _entry("r1")
    cache.put("r1", "ada", 7, place, facts)
    assert cache.get("r1", "ada", 7) == (place, facts)
    assert cache.get("r1", "ada", 8) is None  # the read model changed since
    assert cache.get("r1", "bob", 7) is None  # another user's qualification was not read
    cache.put("r1", "ada", 8, *_entry("r1-new"))
    assert cache.get("r1", "ada", 7) is None
    assert cache.get("r1", "ada", 8)[0].resource_name == "r1-new"


def test_the_least_recently_used_entry_goes_first():
    cache = FactsCache(size=2)
    for name in ("a", "b"):
        cache.put(name, "ada", 1, *_entry(name))
    assert cache.get("a", "ada", 1) is not None  # a is now the most recently used
    cache.put("c", "ada", 1, *_entry("c"))
    assert cache.get("b", "ada", 1) is None
    assert cache.get("a", "ada", 1) is not None and cache.get("c", "ada", 1) is not None
