"""Unit tests of the inventory rules (services/inventory/domain.py): policy checks, time zones, who may manage."""

from __future__ import annotations

import datetime as dt

import pytest

from services.inventory import domain
from services.inventory.domain import (
    DEFAULT_POLICY,
    check_interval,
    check_policy,
    check_timezone,
    ensure_can_manage,
    manager_subs,
    merged_policy,
    minutes_of,
)
from shared.auth import Principal
from shared.errors import Forbidden, ValidationFailed

MANAGERS = [
    {"sub": "mgr-1", "name": "Imaging lab manager", "email": "imaging-manager@example.org"},
    {"sub": "mgr-2", "name": "Deputy", "email": "deputy@example.org"},
]


def policy(**changes) -> dict:
    p = dict(DEFAULT_POLICY)
    p.update(changes)
    return p


def errors_of(pol: dict) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as info:
        check_policy(pol)
    assert info.value.status == 422
    assert info.value.errors, "a refusal must list its faults"
    for e in info.value.errors:
        assert set(e) == {"field", "message"} and e["field"].startswith("policy.") and e["message"]
    return info.value.errors


def fields_of(pol: dict) -> list[str]:
    return [e["field"] for e in errors_of(pol)]


# --------------------------------------------------------------------------------------------------
# check_policy
# --------------------------------------------------------------------------------------------------


class TestCheckPolicyDurations:
    def test_defaults_are_valid(self):
        check_policy(dict(DEFAULT_POLICY))

    def test_contract_example_is_valid(self):
        check_policy(policy(opening_hours={"mon": [["08:00", "16:00"]], "tue": [["08:00", "16:00"]]}))

    def test_max_below_min(self):
        assert fields_of(policy(min_minutes=60, max_minutes=30)) == ["policy.max_minutes"]

    def test_max_equal_min_is_fine(self):
        check_policy(policy(min_minutes=60, max_minutes=60))

    def test_min_not_a_multiple_of_slot(self):
        assert fields_of(policy(slot_minutes=15, min_minutes=20, max_minutes=60)) == ["policy.min_minutes"]

    def test_max_not_a_multiple_of_slot(self):
        assert fields_of(policy(slot_minutes=15, min_minutes=15, max_minutes=100)) == ["policy.max_minutes"]

    def test_odd_slot_with_matching_bounds(self):
        check_policy(policy(slot_minutes=25, min_minutes=50, max_minutes=500))

    def test_several_faults_are_all_listed(self):
        fields = fields_of(policy(slot_minutes=30, min_minutes=45, max_minutes=40,
                                  opening_hours={"funday": [], "mon": [["16:00", "08:00"]]}))
        assert sorted(fields) == sorted([
            "policy.max_minutes",  # below min
            "policy.min_minutes",  # not a multiple
            "policy.max_minutes",  # not a multiple
            "policy.opening_hours",  # unknown weekday
            "policy.opening_hours.mon",  # backwards
        ])


class TestCheckPolicyOpeningHours:
    def test_none_is_always_open(self):
        check_policy(policy(opening_hours=None))

    def test_missing_member_is_always_open(self):
        p = policy()
        del p["opening_hours"]
        check_policy(p)

    def test_all_days_and_2400(self):
        check_policy(policy(opening_hours={
            "mon": [["00:00", "24:00"]],
            "tue": [["08:00", "12:00"], ["13:00", "16:30"]],
            "wed": [["08:00", "12:00"], ["12:00", "16:00"]],  # touching is fine
            "thu": [],
            "fri": [["20:00", "24:00"]],
            "sat": [["00:00", "06:00"]],
            "sun": [["23:59", "24:00"]],
        }))

    @pytest.mark.parametrize(
        "pair",
        [
            ["8:00", "16:00"],
            ["08:00", "16:0"],
            ["08:00", "25:00"],
            ["08:00", "24:01"],
            ["08:60", "16:00"],
            ["08.00", "16.00"],
            ["08:00:00", "16:00"],
            [" 08:00", "16:00"],
            ["08:00"],
            ["08:00", "12:00", "16:00"],
            [],
            [800, 1600],
            [None, "16:00"],
        ],
    )
    def test_bad_formats(self, pair):
        errors = errors_of(policy(opening_hours={"tue": [pair]}))
        assert [e["field"] for e in errors] == ["policy.opening_hours.tue"]
        assert "HH:MM" in errors[0]["message"]

    @pytest.mark.parametrize("pair", [["16:00", "08:00"], ["08:00", "08:00"], ["24:00", "24:00"], ["24:00", "08:00"]])
    def test_end_not_after_start(self, pair):
        errors = errors_of(policy(opening_hours={"wed": [pair]}))
        assert [e["field"] for e in errors] == ["policy.opening_hours.wed"]
        assert "before it starts" in errors[0]["message"]

    def test_overlapping_intervals(self):
        errors = errors_of(policy(opening_hours={"mon": [["08:00", "12:00"], ["11:00", "14:00"]]}))
        assert [e["field"] for e in errors] == ["policy.opening_hours.mon"]
        assert "overlap" in errors[0]["message"]

    def test_out_of_order_intervals(self):
        assert fields_of(policy(opening_hours={"mon": [["13:00", "16:00"], ["08:00", "12:00"]]})) == [
            "policy.opening_hours.mon"
        ]

    def test_interval_inside_an_earlier_one(self):
        assert fields_of(policy(opening_hours={"fri": [["08:00", "16:00"], ["09:00", "10:00"]]})) == [
            "policy.opening_hours.fri"
        ]

    def test_overlap_with_a_non_adjacent_earlier_interval(self):
        # The third interval starts before the end of the first (long) one.
        hours = {"thu": [["08:00", "16:00"], ["16:00", "17:00"], ["15:00", "18:00"]]}
        assert fields_of(policy(opening_hours=hours)) == ["policy.opening_hours.thu"]

    def test_every_interval_overlapping_a_long_earlier_one_is_reported(self):
        # 09-10 lies inside 08-16, and so does 12-13, although it starts after 09-10 ended.
        hours = {"thu": [["08:00", "16:00"], ["09:00", "10:00"], ["12:00", "13:00"]]}
        assert fields_of(policy(opening_hours=hours)) == ["policy.opening_hours.thu"] * 2

    @pytest.mark.parametrize("day", ["monday", "Mon", "MON", "mo", "", "8"])
    def test_unknown_weekday(self, day):
        errors = errors_of(policy(opening_hours={day: [["08:00", "16:00"]]}))
        assert [e["field"] for e in errors] == ["policy.opening_hours"]
        assert repr(day) in errors[0]["message"]

    def test_each_bad_day_is_reported(self):
        hours = {"mon": [["08:00", "16:00"]], "tue": [["9:00", "16:00"]], "sat": [["10:00", "09:00"]]}
        fields = sorted(fields_of(policy(opening_hours=hours)))
        assert fields == ["policy.opening_hours.sat", "policy.opening_hours.tue"]


# --------------------------------------------------------------------------------------------------
# merged_policy
# --------------------------------------------------------------------------------------------------


class TestMergedPolicy:
    def test_no_current_policy_gives_defaults(self):
        assert merged_policy(None, {}) == DEFAULT_POLICY
        assert merged_policy({}, {}) == DEFAULT_POLICY

    def test_defaults_match_the_public_contract(self):
        assert DEFAULT_POLICY == {
            "slot_minutes": 15, "min_minutes": 15, "max_minutes": 480, "lead_minutes": 0, "horizon_days": 90,
            "buffer_minutes": 0, "requires_approval": False, "requires_qualification": False,
            "opening_hours": None, "max_hours_per_week": None, "checkin_required": False,
            "checkin_grace_minutes": 15,
        }

    def test_changes_fill_in_defaults(self):
        got = merged_policy(None, {"slot_minutes": 30, "min_minutes": 30})
        assert got["slot_minutes"] == 30 and got["min_minutes"] == 30
        assert got["max_minutes"] == 480 and got["horizon_days"] == 90 and got["opening_hours"] is None

    def test_patch_merges_member_by_member(self):
        current = merged_policy(None, {"slot_minutes": 30, "min_minutes": 60, "requires_approval": True,
                                       "opening_hours": {"mon": [["08:00", "16:00"]]}})
        got = merged_policy(current, {"buffer_minutes": 15, "max_hours_per_week": 10})
        assert got == {**current, "buffer_minutes": 15, "max_hours_per_week": 10}
        assert got["requires_approval"] is True and got["slot_minutes"] == 30

    def test_changes_override_current(self):
        current = merged_policy(None, {"horizon_days": 30, "opening_hours": {"mon": [["08:00", "16:00"]]}})
        got = merged_policy(current, {"horizon_days": 60, "opening_hours": None})
        assert got["horizon_days"] == 60
        assert got["opening_hours"] is None

    def test_opening_hours_are_replaced_not_merged_by_day(self):
        current = merged_policy(None, {"opening_hours": {"mon": [["08:00", "16:00"]], "tue": [["08:00", "16:00"]]}})
        got = merged_policy(current, {"opening_hours": {"wed": [["10:00", "12:00"]]}})
        assert got["opening_hours"] == {"wed": [["10:00", "12:00"]]}

    def test_merged_result_is_checked(self):
        current = merged_policy(None, {"slot_minutes": 15, "min_minutes": 15, "max_minutes": 60})
        with pytest.raises(ValidationFailed) as info:
            merged_policy(current, {"min_minutes": 120})  # now above the current max
        assert [e["field"] for e in info.value.errors] == ["policy.max_minutes"]

    def test_change_that_breaks_the_slot_grid_of_the_current_bounds(self):
        current = merged_policy(None, {"slot_minutes": 15, "min_minutes": 45, "max_minutes": 90})
        with pytest.raises(ValidationFailed) as info:
            merged_policy(current, {"slot_minutes": 30})
        assert [e["field"] for e in info.value.errors] == ["policy.min_minutes"]

    def test_inputs_and_defaults_are_not_mutated(self):
        before = dict(DEFAULT_POLICY)
        current = {"slot_minutes": 30, "min_minutes": 30}
        changes = {"max_minutes": 120}
        got = merged_policy(current, changes)
        assert before == DEFAULT_POLICY
        assert current == {"slot_minutes": 30, "min_minutes": 30} and changes == {"max_minutes": 120}
        got["slot_minutes"] = 5
        assert DEFAULT_POLICY["slot_minutes"] == 15


# --------------------------------------------------------------------------------------------------
# check_timezone
# --------------------------------------------------------------------------------------------------


class TestCheckTimezone:
    @pytest.mark.parametrize("name", ["Europe/Oslo", "Asia/Kolkata", "America/New_York", "UTC"])
    def test_known_zones(self, name):
        check_timezone(name)

    @pytest.mark.parametrize(
        "name",
        [
            "Mars/Olympus",
            "Europe/oslo",
            "europe/Oslo",
            " Europe/Oslo",
            "",
            "../etc/passwd",
            "/etc/localtime",
            "Europe/",
            "Europe",  # a folder of zones, not a zone
            "America",
        ],
    )
    def test_unknown_zones_are_a_422_on_timezone(self, name):
        with pytest.raises(ValidationFailed) as info:
            check_timezone(name)
        assert info.value.status == 422
        assert [e["field"] for e in info.value.errors] == ["timezone"]
        assert repr(name) in info.value.errors[0]["message"]


# --------------------------------------------------------------------------------------------------
# ensure_can_manage
# --------------------------------------------------------------------------------------------------


class TestEnsureCanManage:
    def test_admin_manages_every_lab(self):
        ensure_can_manage(Principal(sub="root", roles=("admin",)), MANAGERS)
        ensure_can_manage(Principal(sub="root", roles=("admin",)), [])

    def test_listed_manager(self):
        ensure_can_manage(Principal(sub="mgr-1", roles=("manager",)), MANAGERS)
        ensure_can_manage(Principal(sub="mgr-2", roles=("researcher", "manager")), MANAGERS)

    def test_unlisted_manager_is_forbidden(self):
        with pytest.raises(Forbidden) as info:
            ensure_can_manage(Principal(sub="mgr-9", roles=("manager",)), MANAGERS)
        assert info.value.status == 403

    def test_manager_of_a_lab_without_managers_is_forbidden(self):
        with pytest.raises(Forbidden):
            ensure_can_manage(Principal(sub="mgr-1", roles=("manager",)), [])

    def test_researcher_is_forbidden(self):
        with pytest.raises(Forbidden):
            ensure_can_manage(Principal(sub="user-1", roles=("researcher",)), MANAGERS)

    def test_listed_researcher_without_manager_role_is_forbidden(self):
        with pytest.raises(Forbidden):
            ensure_can_manage(Principal(sub="mgr-1", roles=("researcher",)), MANAGERS)

    def test_no_roles_is_forbidden(self):
        with pytest.raises(Forbidden):
            ensure_can_manage(Principal(sub="mgr-1"), MANAGERS)

    def test_matched_by_sub_not_name_or_email(self):
        with pytest.raises(Forbidden):
            ensure_can_manage(
                Principal(sub="someone-else", name="Imaging lab manager", email="imaging-manager@example.org",
                          roles=("manager",)),
                MANAGERS,
            )

    def test_manager_subs(self):
        assert manager_subs(MANAGERS) == {"mgr-1", "mgr-2"}
        assert manager_subs([]) == set()


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


class TestHelpers:
    @pytest.mark.parametrize(("text", "minutes"), [("00:00", 0), ("08:30", 510), ("23:59", 1439), ("24:00", 1440)])
    def test_minutes_of(self, text, minutes):
        assert minutes_of(text) == minutes

    def test_check_interval(self):
        start = dt.datetime(2027, 3, 1, 9, tzinfo=dt.UTC)
        check_interval(start, start + dt.timedelta(minutes=1))
        for end in (start, start - dt.timedelta(minutes=1)):
            with pytest.raises(ValidationFailed) as info:
                check_interval(start, end)
            assert [e["field"] for e in info.value.errors] == ["end"]

    def test_constants(self):
        assert domain.WEEKDAYS == ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        assert domain.KINDS == ("equipment", "room")
        assert domain.STATUSES == ("active", "maintenance", "retired")
