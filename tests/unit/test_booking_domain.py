"""Unit tests of the booking rules (services/booking/domain.py): pure Python, fixed dates, explicit ``now``.

Calendar facts used below (2027): 1 March is a Monday; Europe/Oslo springs forward on Sunday 28 March
(01:00Z, CET +01:00 -> CEST +02:00) and falls back on Sunday 31 October (01:00Z); the USA springs forward
on Sunday 14 March. ISO week 1 of 2027 starts on Monday 4 January, so 1 January 2027 is in week 53 of 2026.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from services.booking import domain
from services.booking.domain import (
    Place,
    Policy,
    RRuleError,
    check_rules,
    expand_series,
    free_intervals,
    iso_week_hours,
    merge,
    open_intervals,
    overlaps,
    quota_violation,
    slot_starts,
    subtract,
)

UTC = dt.UTC
OSLO = ZoneInfo("Europe/Oslo")
KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")

WORKDAYS = ("mon", "tue", "wed", "thu", "fri")
OFFICE_HOURS = {day: [["08:00", "16:00"]] for day in WORKDAYS}
ALL_RULES = {
    "status", "min_minutes", "max_minutes", "slot_minutes", "lead_minutes", "horizon_days",
    "opening_hours", "outage", "qualification",
}

# Monday 1 March 2027, 07:00 in Oslo.
NOW = dt.datetime(2027, 3, 1, 6, 0, tzinfo=UTC)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def at(tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> dt.datetime:
    """Wall-clock time in ``tz`` as an aware UTC datetime (what the service works with)."""
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=tz).astimezone(UTC)


def oslo(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> dt.datetime:
    return at(OSLO, y, mo, d, h, mi, s)


def make_place(policy: Policy | None = None, *, status: str = "active", timezone: str = "Europe/Oslo") -> Place:
    return Place(
        resource_id="res-1",
        resource_name="Zeiss LSM 980 confocal",
        category="microscopy/confocal",
        status=status,
        policy=policy if policy is not None else Policy(),
        rates={"internal": 450, "external": 1200, "currency": "NOK"},
        lab_id="lab-1",
        lab_name="Cell imaging lab",
        lab_org="ntnu",
        timezone=timezone,
        managers=frozenset({"mgr-1"}),
    )


def rule_names(
    place: Place,
    start: dt.datetime,
    end: dt.datetime,
    *,
    now: dt.datetime = NOW,
    outages=(),
    qualified: bool = False,
    exempt: bool = False,
) -> list[str]:
    found = check_rules(place, start, end, now=now, outages=list(outages), qualified=qualified, exempt=exempt)
    for v in found:
        assert set(v) >= {"rule", "message"}
        assert v["rule"] in ALL_RULES
        assert isinstance(v["message"], str) and v["message"]
    return [v["rule"] for v in found]


def local_wall(intervals, tz: ZoneInfo = OSLO) -> list[tuple[str, str]]:
    """Intervals as local wall-clock strings, for readable assertions."""
    return [(a.astimezone(tz).strftime("%Y-%m-%d %H:%M"), b.astimezone(tz).strftime("%Y-%m-%d %H:%M"))
            for a, b in intervals]


# --------------------------------------------------------------------------------------------------
# Policy / Place / small helpers
# --------------------------------------------------------------------------------------------------


class TestPolicyAndPlace:
    def test_defaults_match_the_public_contract(self):
        p = Policy()
        assert (p.slot_minutes, p.min_minutes, p.max_minutes) == (15, 15, 480)
        assert (p.lead_minutes, p.horizon_days, p.buffer_minutes) == (0, 90, 0)
        assert p.requires_approval is False and p.requires_qualification is False
        assert p.opening_hours is None and p.max_hours_per_week is None
        assert p.checkin_required is False and p.checkin_grace_minutes == 15

    def test_from_dict_ignores_unknown_members_and_none(self):
        p = Policy.from_dict({"slot_minutes": 30, "buffer_minutes": 10, "future_member": "x"})
        assert p.slot_minutes == 30 and p.buffer_minutes == 10
        assert p.min_minutes == 15
        assert Policy.from_dict(None) == Policy()

    def test_buffer_is_a_timedelta(self):
        assert Policy(buffer_minutes=25).buffer == dt.timedelta(minutes=25)
        assert Policy().buffer == dt.timedelta(0)

    def test_place_tz(self):
        assert make_place(timezone="Asia/Kolkata").tz == KOLKATA

    def test_violation_shape(self):
        assert domain.violation("quota", "too much", week=3) == {"rule": "quota", "message": "too much", "week": 3}

    def test_overlaps_is_half_open(self):
        a, b, c, d = utc(2027, 3, 1, 8), utc(2027, 3, 1, 9), utc(2027, 3, 1, 10), utc(2027, 3, 1, 11)
        assert overlaps(a, c, b, d)
        assert overlaps(a, d, b, c)
        assert not overlaps(a, b, b, c)  # touching
        assert not overlaps(b, c, a, b)
        assert not overlaps(a, b, c, d)


# --------------------------------------------------------------------------------------------------
# open_intervals
# --------------------------------------------------------------------------------------------------


class TestOpenIntervals:
    def test_none_means_always_open(self):
        start, end = utc(2027, 3, 27), utc(2027, 4, 3)
        assert open_intervals(None, OSLO, start, end) == [(start, end)]

    def test_weekday_hours_before_and_after_spring_forward(self):
        # Friday 26 March is CET (+01:00), Monday 29 March is CEST (+02:00); the weekend is closed.
        got = open_intervals(OFFICE_HOURS, OSLO, utc(2027, 3, 26), utc(2027, 3, 30))
        assert got == [
            (utc(2027, 3, 26, 7), utc(2027, 3, 26, 15)),
            (utc(2027, 3, 29, 6), utc(2027, 3, 29, 14)),
        ]
        assert local_wall(got) == [
            ("2027-03-26 08:00", "2027-03-26 16:00"),
            ("2027-03-29 08:00", "2027-03-29 16:00"),
        ]

    def test_weekday_hours_before_and_after_fall_back(self):
        # Friday 29 October is CEST (+02:00), Monday 1 November is CET (+01:00).
        got = open_intervals(OFFICE_HOURS, OSLO, utc(2027, 10, 29), utc(2027, 11, 2))
        assert got == [
            (utc(2027, 10, 29, 6), utc(2027, 10, 29, 14)),
            (utc(2027, 11, 1, 7), utc(2027, 11, 1, 15)),
        ]

    def test_other_zone_changes_on_its_own_date(self):
        # New York is already on EDT (-04:00) from 14 March; Oslo is still on CET then.
        got = open_intervals({"mon": [["08:00", "16:00"]]}, NEW_YORK, utc(2027, 3, 8), utc(2027, 3, 16))
        assert got == [
            (utc(2027, 3, 8, 13), utc(2027, 3, 8, 21)),  # EST -05:00
            (utc(2027, 3, 15, 12), utc(2027, 3, 15, 20)),  # EDT -04:00
        ]

    def test_interval_across_the_change_on_the_day_itself(self):
        spring = open_intervals({"sun": [["01:00", "04:00"]]}, OSLO, utc(2027, 3, 27), utc(2027, 3, 29))
        assert spring == [(utc(2027, 3, 28, 0), utc(2027, 3, 28, 2))]  # 3 wall-clock hours, 2 real ones
        autumn = open_intervals({"sun": [["01:00", "04:00"]]}, OSLO, utc(2027, 10, 30), utc(2027, 11, 1))
        assert autumn == [(utc(2027, 10, 30, 23), utc(2027, 10, 31, 3))]  # 3 wall-clock hours, 4 real ones

    def test_end_2400_is_next_local_midnight(self):
        got = open_intervals({"mon": [["16:00", "24:00"]]}, OSLO, utc(2027, 3, 1), utc(2027, 3, 3))
        assert got == [(utc(2027, 3, 1, 15), utc(2027, 3, 1, 23))]

    def test_whole_day_on_dst_sundays_is_23_and_25_hours(self):
        hours = {"sun": [["00:00", "24:00"]]}
        spring = open_intervals(hours, OSLO, utc(2027, 3, 26), utc(2027, 3, 30))
        assert spring == [(utc(2027, 3, 27, 23), utc(2027, 3, 28, 22))]
        autumn = open_intervals(hours, OSLO, utc(2027, 10, 29), utc(2027, 11, 2))
        assert autumn == [(utc(2027, 10, 30, 22), utc(2027, 10, 31, 23))]
        assert autumn[0][1] - autumn[0][0] == dt.timedelta(hours=25)

    def test_several_intervals_per_day(self):
        hours = {"mon": [["08:00", "12:00"], ["13:00", "17:00"]]}
        got = open_intervals(hours, OSLO, utc(2027, 3, 1), utc(2027, 3, 2))
        assert local_wall(got) == [
            ("2027-03-01 08:00", "2027-03-01 12:00"),
            ("2027-03-01 13:00", "2027-03-01 17:00"),
        ]

    def test_touching_intervals_of_a_day_are_merged(self):
        hours = {"mon": [["08:00", "12:00"], ["12:00", "16:00"]]}
        got = open_intervals(hours, OSLO, utc(2027, 3, 1), utc(2027, 3, 2))
        assert local_wall(got) == [("2027-03-01 08:00", "2027-03-01 16:00")]

    def test_midnight_crossing_days_are_merged(self):
        hours = {"mon": [["20:00", "24:00"]], "tue": [["00:00", "06:00"]]}
        got = open_intervals(hours, OSLO, utc(2027, 3, 1), utc(2027, 3, 3))
        assert local_wall(got) == [("2027-03-01 20:00", "2027-03-02 06:00")]

    def test_all_week_round_the_clock_is_one_interval(self):
        hours = {day: [["00:00", "24:00"]] for day in domain.WEEKDAYS}
        start, end = utc(2027, 3, 20, 5, 30), utc(2027, 4, 5, 17, 45)
        assert open_intervals(hours, OSLO, start, end) == [(start, end)]

    def test_result_is_clipped_to_the_window(self):
        got = open_intervals(OFFICE_HOURS, OSLO, oslo(2027, 3, 1, 10), oslo(2027, 3, 2, 9))
        assert local_wall(got) == [
            ("2027-03-01 10:00", "2027-03-01 16:00"),
            ("2027-03-02 08:00", "2027-03-02 09:00"),
        ]

    def test_closed_days_and_empty_lists_give_nothing(self):
        hours = {"mon": [], "tue": [["08:00", "16:00"]]}
        assert open_intervals(hours, OSLO, utc(2027, 3, 1), utc(2027, 3, 2)) == []
        # Saturday and Sunday are not listed at all
        assert open_intervals(OFFICE_HOURS, OSLO, utc(2027, 3, 6), utc(2027, 3, 8)) == []

    def test_half_hour_offset_zone(self):
        got = open_intervals({"mon": [["09:00", "17:00"]]}, KOLKATA, utc(2027, 3, 1), utc(2027, 3, 2))
        assert got == [(utc(2027, 3, 1, 3, 30), utc(2027, 3, 1, 11, 30))]


# --------------------------------------------------------------------------------------------------
# merge / subtract
# --------------------------------------------------------------------------------------------------


def h(hour: int, minute: int = 0) -> dt.datetime:
    return utc(2027, 3, 1, hour, minute)


class TestMergeSubtract:
    def test_merge_sorts_and_joins_overlapping_touching_and_nested(self):
        got = merge([(h(14), h(15)), (h(8), h(10)), (h(9), h(11)), (h(11), h(12)), (h(8, 30), h(9))])
        assert got == [(h(8), h(12)), (h(14), h(15))]

    def test_merge_keeps_gaps(self):
        assert merge([(h(8), h(9)), (h(9, 1), h(10))]) == [(h(8), h(9)), (h(9, 1), h(10))]
        assert merge([]) == []

    def test_subtract_hole_in_the_middle(self):
        assert subtract([(h(8), h(16))], [(h(10), h(11))]) == [(h(8), h(10)), (h(11), h(16))]

    def test_subtract_touching_hole_changes_nothing(self):
        assert subtract([(h(8), h(16))], [(h(6), h(8)), (h(16), h(18))]) == [(h(8), h(16))]

    def test_subtract_covering_hole_removes_everything(self):
        assert subtract([(h(8), h(10)), (h(12), h(14))], [(h(7), h(15))]) == []

    def test_subtract_edges_and_several_holes(self):
        base = [(h(8), h(12)), (h(13), h(17))]
        holes = [(h(11), h(14)), (h(7), h(8, 30)), (h(15), h(15, 30)), (h(15, 15), h(16))]
        assert subtract(base, holes) == [(h(8, 30), h(11)), (h(14), h(15)), (h(16), h(17))]


# --------------------------------------------------------------------------------------------------
# check_rules
# --------------------------------------------------------------------------------------------------

OFFICE = Policy(opening_hours=OFFICE_HOURS)


class TestCheckRulesBaseline:
    def test_a_valid_booking_breaks_nothing(self):
        assert rule_names(make_place(OFFICE), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10)) == []

    def test_the_whole_opening_day_at_max_length_is_fine(self):
        assert rule_names(make_place(OFFICE), oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 16)) == []


class TestStatusRule:
    @pytest.mark.parametrize("status", ["maintenance", "retired"])
    def test_inactive_resources_take_no_bookings(self, status):
        place = make_place(OFFICE, status=status)
        found = check_rules(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), now=NOW, outages=[],
                            qualified=False, exempt=False)
        assert [v["rule"] for v in found] == ["status"]
        assert status in found[0]["message"]

    def test_active_passes(self):
        assert "status" not in rule_names(make_place(OFFICE), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10))


class TestDurationRules:
    def test_too_short(self):
        place = make_place(Policy(min_minutes=30))
        assert rule_names(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 9, 15)) == ["min_minutes"]
        assert rule_names(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 9, 30)) == []

    def test_too_long(self):
        place = make_place(Policy(max_minutes=60))
        assert rule_names(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10, 15)) == ["max_minutes"]
        assert rule_names(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10)) == []

    def test_duration_is_real_time_across_spring_forward(self):
        # 00:00-04:00 local on 28 March is 3 real hours: fits max 180, not min 240.
        start, end = oslo(2027, 3, 28, 0), oslo(2027, 3, 28, 4)
        assert end - start == dt.timedelta(hours=3)
        assert rule_names(make_place(Policy(max_minutes=180)), start, end) == []
        assert rule_names(make_place(Policy(min_minutes=240, max_minutes=480)), start, end) == ["min_minutes"]


class TestSlotRule:
    def test_start_off_the_grid(self):
        place = make_place(Policy(slot_minutes=15))
        assert rule_names(place, oslo(2027, 3, 2, 9, 5), oslo(2027, 3, 2, 10, 5)) == ["slot_minutes"]

    def test_duration_not_a_multiple(self):
        place = make_place(Policy(slot_minutes=15))
        assert rule_names(place, oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 9, 50)) == ["slot_minutes"]

    def test_seconds_are_off_the_grid(self):
        place = make_place(Policy(slot_minutes=15))
        assert rule_names(place, oslo(2027, 3, 2, 9, 0, 30), oslo(2027, 3, 2, 10, 0, 30)) == ["slot_minutes"]

    def test_grid_is_measured_from_local_midnight_in_a_half_hour_zone(self):
        place = make_place(Policy(slot_minutes=60), timezone="Asia/Kolkata")
        # 09:00-10:00 IST = 03:30-04:30Z: on the lab's grid although not on a UTC hour.
        assert rule_names(place, utc(2027, 3, 2, 3, 30), utc(2027, 3, 2, 4, 30)) == []
        # 03:00-04:00Z is on the UTC hour but 08:30 IST: off the lab's grid.
        assert rule_names(place, utc(2027, 3, 2, 3), utc(2027, 3, 2, 4)) == ["slot_minutes"]

    def test_grid_follows_the_wall_clock_after_dst(self):
        place = make_place(Policy(slot_minutes=60))
        assert rule_names(place, oslo(2027, 4, 6, 9), oslo(2027, 4, 6, 10)) == []  # 07:00Z in summer
        assert rule_names(place, utc(2027, 4, 6, 7, 30), utc(2027, 4, 6, 8, 30)) == ["slot_minutes"]

    def test_message_names_the_grid_and_zone(self):
        place = make_place(Policy(slot_minutes=30), timezone="Asia/Kolkata")
        # 03:15Z is 08:45 IST: off the 30-minute grid of the lab's day.
        found = check_rules(place, utc(2027, 3, 2, 3, 15), utc(2027, 3, 2, 4, 15), now=NOW, outages=[],
                            qualified=False, exempt=False)
        assert [v["rule"] for v in found] == ["slot_minutes"]
        assert "30" in found[0]["message"] and "Asia/Kolkata" in found[0]["message"]


class TestLeadRule:
    def test_start_in_the_past(self):
        found = check_rules(make_place(), oslo(2027, 3, 1, 6), oslo(2027, 3, 1, 7), now=NOW, outages=[],
                            qualified=False, exempt=False)
        assert [v["rule"] for v in found] == ["lead_minutes"]
        assert "past" in found[0]["message"]

    def test_too_soon(self):
        place = make_place(Policy(lead_minutes=120))
        found = check_rules(place, NOW + dt.timedelta(minutes=60), NOW + dt.timedelta(minutes=120), now=NOW,
                            outages=[], qualified=False, exempt=False)
        assert [v["rule"] for v in found] == ["lead_minutes"]
        assert "120" in found[0]["message"] and "past" not in found[0]["message"]

    def test_exactly_the_lead_time_ahead_is_fine(self):
        place = make_place(Policy(lead_minutes=120))
        assert rule_names(place, NOW + dt.timedelta(minutes=120), NOW + dt.timedelta(minutes=180)) == []

    def test_starting_now_is_fine_without_lead(self):
        assert rule_names(make_place(), NOW, NOW + dt.timedelta(minutes=60)) == []


class TestHorizonRule:
    def test_ending_exactly_at_the_horizon_is_fine(self):
        place = make_place(Policy(horizon_days=7))
        end = NOW + dt.timedelta(days=7)
        assert rule_names(place, end - dt.timedelta(hours=1), end) == []

    def test_ending_beyond_the_horizon(self):
        place = make_place(Policy(horizon_days=7))
        end = NOW + dt.timedelta(days=7, minutes=15)
        assert rule_names(place, end - dt.timedelta(hours=1), end) == ["horizon_days"]


class TestOpeningHoursRule:
    def test_partially_after_closing(self):
        assert rule_names(make_place(OFFICE), oslo(2027, 3, 2, 15), oslo(2027, 3, 2, 17)) == ["opening_hours"]

    def test_partially_before_opening(self):
        assert rule_names(make_place(OFFICE), oslo(2027, 3, 2, 7, 30), oslo(2027, 3, 2, 8, 30)) == ["opening_hours"]

    def test_closed_day(self):
        assert rule_names(make_place(OFFICE), oslo(2027, 3, 6, 9), oslo(2027, 3, 6, 10)) == ["opening_hours"]

    def test_spanning_a_lunch_gap(self):
        place = make_place(Policy(opening_hours={"tue": [["08:00", "12:00"], ["13:00", "17:00"]]}))
        assert rule_names(place, oslo(2027, 3, 2, 11), oslo(2027, 3, 2, 14)) == ["opening_hours"]
        assert rule_names(place, oslo(2027, 3, 2, 13), oslo(2027, 3, 2, 17)) == []

    def test_uses_local_hours_after_dst(self):
        # 08:00-09:00 CEST on Tuesday 30 March is 06:00-07:00Z; in winter that would be before opening.
        assert rule_names(make_place(OFFICE), utc(2027, 3, 30, 6), utc(2027, 3, 30, 7)) == []
        assert rule_names(make_place(OFFICE), utc(2027, 3, 30, 14), utc(2027, 3, 30, 15)) == ["opening_hours"]

    def test_booking_across_midnight_inside_merged_hours(self):
        place = make_place(Policy(opening_hours={"mon": [["20:00", "24:00"]], "tue": [["00:00", "06:00"]]}))
        assert rule_names(place, oslo(2027, 3, 1, 22), oslo(2027, 3, 2, 2)) == []
        assert rule_names(place, oslo(2027, 3, 1, 20), oslo(2027, 3, 2, 4)) == []
        assert rule_names(place, oslo(2027, 3, 1, 19), oslo(2027, 3, 1, 21)) == ["opening_hours"]
        assert rule_names(place, oslo(2027, 3, 2, 5), oslo(2027, 3, 2, 7)) == ["opening_hours"]

    def test_none_is_always_open(self):
        assert rule_names(make_place(Policy(opening_hours=None)), oslo(2027, 3, 6, 2), oslo(2027, 3, 6, 4)) == []


class TestOutageRule:
    OUTAGE = (oslo(2027, 3, 2, 10), oslo(2027, 3, 2, 12))

    def test_overlapping_outage(self):
        assert rule_names(make_place(), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 11), outages=[self.OUTAGE]) == [
            "outage"
        ]
        assert rule_names(make_place(), oslo(2027, 3, 2, 10, 30), oslo(2027, 3, 2, 11), outages=[self.OUTAGE]) == [
            "outage"
        ]

    def test_touching_outage_is_fine(self):
        assert rule_names(make_place(), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), outages=[self.OUTAGE]) == []
        assert rule_names(make_place(), oslo(2027, 3, 2, 12), oslo(2027, 3, 2, 13), outages=[self.OUTAGE]) == []

    def test_reported_once_for_several_outages(self):
        outages = [self.OUTAGE, (oslo(2027, 3, 2, 12), oslo(2027, 3, 2, 14))]
        assert rule_names(make_place(), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 15), outages=outages) == ["outage"]

    def test_unrelated_outage_is_ignored(self):
        outages = [(oslo(2027, 3, 3, 10), oslo(2027, 3, 3, 12))]
        assert rule_names(make_place(), oslo(2027, 3, 2, 10), oslo(2027, 3, 2, 12), outages=outages) == []


class TestQualificationRule:
    TRAINED_ONLY = Policy(requires_qualification=True)

    def test_required_and_not_qualified(self):
        found = rule_names(make_place(self.TRAINED_ONLY), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), qualified=False)
        assert found == ["qualification"]

    def test_qualified_user_passes(self):
        found = rule_names(make_place(self.TRAINED_ONLY), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), qualified=True)
        assert found == []

    def test_exempt_manager_passes(self):
        found = rule_names(make_place(self.TRAINED_ONLY), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10),
                           qualified=False, exempt=True)
        assert found == []

    def test_not_required(self):
        assert rule_names(make_place(), oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10), qualified=False) == []


class TestSeveralViolations:
    def test_every_broken_rule_is_listed(self):
        policy = Policy(min_minutes=30, slot_minutes=15, opening_hours=OFFICE_HOURS, requires_qualification=True)
        place = make_place(policy, status="retired")
        start, end = oslo(2027, 2, 27, 7, 50), oslo(2027, 2, 27, 8, 0)  # Saturday, in the past, 10 minutes
        found = rule_names(place, start, end, outages=[(oslo(2027, 2, 27, 7), oslo(2027, 2, 27, 9))])
        assert set(found) == {
            "status", "min_minutes", "slot_minutes", "lead_minutes", "opening_hours", "outage", "qualification"
        }
        assert len(found) == len(set(found))

    def test_too_long_too_far_and_too_soon_together(self):
        place = make_place(Policy(max_minutes=60, horizon_days=1, lead_minutes=60 * 24 * 7))
        found = rule_names(place, NOW + dt.timedelta(hours=23), NOW + dt.timedelta(hours=25))
        assert set(found) == {"max_minutes", "horizon_days", "lead_minutes"}


# --------------------------------------------------------------------------------------------------
# iso_week_hours / quota_violation
# --------------------------------------------------------------------------------------------------


class TestIsoWeekHours:
    def test_local_monday_midnight_is_the_boundary_not_utc(self):
        # Monday 8 March 00:00-02:00 in Oslo is Sunday 23:00Z - Monday 01:00Z.
        booking = [(oslo(2027, 3, 8, 0), oslo(2027, 3, 8, 2))]
        assert iso_week_hours(booking, OSLO) == {(2027, 10): 2.0}
        assert iso_week_hours(booking, UTC) == {(2027, 9): 1.0, (2027, 10): 1.0}

    def test_sunday_to_monday_splits(self):
        booking = [(oslo(2027, 3, 7, 22), oslo(2027, 3, 8, 2))]
        assert iso_week_hours(booking, OSLO) == {(2027, 9): 2.0, (2027, 10): 2.0}

    def test_half_hour_zone(self):
        # Monday 00:00 IST is Sunday 18:30Z.
        booking = [(utc(2027, 3, 7, 18), utc(2027, 3, 7, 19, 30))]
        assert iso_week_hours(booking, KOLKATA) == {(2027, 9): 0.5, (2027, 10): 1.0}

    def test_several_weeks_and_intervals_add_up(self):
        got = iso_week_hours(
            [
                (oslo(2027, 3, 6, 0), oslo(2027, 3, 16, 0)),  # Sat 6 .. Tue 16 March
                (oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 10, 30)),
            ],
            OSLO,
        )
        assert got == {(2027, 9): 49.5, (2027, 10): 168.0, (2027, 11): 24.0}

    def test_week_with_spring_forward_has_167_hours(self):
        got = iso_week_hours([(oslo(2027, 3, 22), oslo(2027, 3, 29))], OSLO)
        assert got == {(2027, 12): 167.0}

    def test_iso_year_differs_from_calendar_year(self):
        got = iso_week_hours([(oslo(2027, 1, 1, 10), oslo(2027, 1, 1, 12))], OSLO)
        assert got == {(2026, 53): 2.0}

    def test_empty(self):
        assert iso_week_hours([], OSLO) == {}


class TestQuota:
    def place(self, limit, timezone="Europe/Oslo"):
        return make_place(Policy(max_hours_per_week=limit), timezone=timezone)

    def test_no_limit(self):
        big = [(oslo(2027, 3, 1), oslo(2027, 3, 8))]
        assert quota_violation(self.place(None), big, big) is None

    def test_exactly_at_the_limit_is_allowed(self):
        existing = [(oslo(2027, 3, 8, 9), oslo(2027, 3, 8, 12))]
        new = [(oslo(2027, 3, 10, 9), oslo(2027, 3, 10, 10))]
        assert quota_violation(self.place(4), new, existing) is None

    def test_just_over_is_refused(self):
        existing = [(oslo(2027, 3, 8, 9), oslo(2027, 3, 8, 12))]
        new = [(oslo(2027, 3, 10, 9), oslo(2027, 3, 10, 10, 15))]
        v = quota_violation(self.place(4), new, existing)
        assert v is not None and v["rule"] == "quota"
        assert "week 10 of 2027" in v["message"] and "4.25" in v["message"]

    def test_fractional_limit(self):
        existing = [(oslo(2027, 3, 8, 9), oslo(2027, 3, 8, 10))]
        assert quota_violation(self.place(2.5), [(oslo(2027, 3, 9, 9), oslo(2027, 3, 9, 10, 30))], existing) is None
        assert quota_violation(self.place(2.5), [(oslo(2027, 3, 9, 9), oslo(2027, 3, 9, 10, 45))], existing)

    def test_other_weeks_do_not_count(self):
        existing = [(oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 12))]  # week 9, full
        new = [(oslo(2027, 3, 9, 8), oslo(2027, 3, 9, 12))]  # week 10
        assert quota_violation(self.place(4), new, existing) is None

    def test_span_over_sunday_midnight_counts_in_both_weeks(self):
        existing = [(oslo(2027, 3, 2, 9), oslo(2027, 3, 2, 12))]  # 3 h in week 9
        # Sun 23:00 - Mon 03:00: 1 h in week 9 (= 4, allowed) and 3 h in week 10.
        assert quota_violation(self.place(4), [(oslo(2027, 3, 7, 23), oslo(2027, 3, 8, 3))], existing) is None
        # Sun 22:00 - Mon 02:00: 2 h in week 9 (= 5, refused).
        v = quota_violation(self.place(4), [(oslo(2027, 3, 7, 22), oslo(2027, 3, 8, 2))], existing)
        assert v is not None and v["rule"] == "quota" and "week 9 of 2027" in v["message"]

    def test_week_boundary_is_local_not_utc(self):
        existing = [(oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 12))]  # week 9 is full
        # Monday 00:00-01:00 in Oslo (Sunday 23:00-24:00Z) belongs to week 10 in the lab's zone.
        assert quota_violation(self.place(4), [(oslo(2027, 3, 8, 0), oslo(2027, 3, 8, 1))], existing) is None
        # Sunday 23:00-24:00 in Oslo is still week 9.
        assert quota_violation(self.place(4), [(oslo(2027, 3, 7, 23), oslo(2027, 3, 8, 0))], existing) is not None

    def test_week_boundary_in_a_half_hour_zone(self):
        place = self.place(1, timezone="Asia/Kolkata")
        existing = [(at(KOLKATA, 2027, 3, 5, 9), at(KOLKATA, 2027, 3, 5, 10))]  # week 9 full
        # Sunday 19:00-20:00Z is Monday 00:30-01:30 IST: week 10.
        assert quota_violation(place, [(utc(2027, 3, 7, 19), utc(2027, 3, 7, 20))], existing) is None
        # Sunday 18:00-19:00Z is Sunday 23:30 - Monday 00:30 IST: half an hour in the full week 9.
        assert quota_violation(place, [(utc(2027, 3, 7, 18), utc(2027, 3, 7, 19))], existing) is not None

    def test_series_occurrences_in_one_week_add_up(self):
        two_by_two = [(oslo(2027, 3, 8, 9), oslo(2027, 3, 8, 11)), (oslo(2027, 3, 10, 9), oslo(2027, 3, 10, 11))]
        assert quota_violation(self.place(4), two_by_two, []) is None
        three = [*two_by_two, (oslo(2027, 3, 12, 9), oslo(2027, 3, 12, 9, 15))]
        assert quota_violation(self.place(4), three, []) is not None
        spread = [(oslo(2027, 3, 8 + 7 * i, 9), oslo(2027, 3, 8 + 7 * i, 13)) for i in range(3)]
        assert quota_violation(self.place(4), spread, []) is None


# --------------------------------------------------------------------------------------------------
# expand_series
# --------------------------------------------------------------------------------------------------


def series_local(rule: str, start: dt.datetime, end: dt.datetime, tz: ZoneInfo = OSLO) -> list[str]:
    return [a.astimezone(tz).strftime("%a %Y-%m-%d %H:%M") for a, _ in expand_series(rule, start, end, tz)]


class TestExpandSeries:
    def test_weekly_count_keeps_wall_clock_across_spring_forward(self):
        start, end = oslo(2027, 3, 16, 9), oslo(2027, 3, 16, 10)
        occ = expand_series("FREQ=WEEKLY;COUNT=8", start, end, OSLO)
        assert len(occ) == 8
        assert occ[0] == (start, end)
        assert [a.astimezone(OSLO).strftime("%Y-%m-%d %H:%M") for a, _ in occ] == [
            "2027-03-16 09:00", "2027-03-23 09:00", "2027-03-30 09:00", "2027-04-06 09:00",
            "2027-04-13 09:00", "2027-04-20 09:00", "2027-04-27 09:00", "2027-05-04 09:00",
        ]
        assert [a.hour for a, _ in occ] == [8, 8, 7, 7, 7, 7, 7, 7]  # UTC hour moves
        assert all(a.tzinfo is not None and a.utcoffset() == dt.timedelta(0) for a, _ in occ)
        assert all(b - a == dt.timedelta(hours=1) for a, b in occ)

    def test_weekly_keeps_wall_clock_across_fall_back(self):
        start, end = oslo(2027, 10, 19, 9), oslo(2027, 10, 19, 11)
        occ = expand_series("RRULE:FREQ=WEEKLY;COUNT=4", start, end, OSLO)
        assert [(a, b) for a, b in occ] == [
            (utc(2027, 10, 19, 7), utc(2027, 10, 19, 9)),
            (utc(2027, 10, 26, 7), utc(2027, 10, 26, 9)),
            (utc(2027, 11, 2, 8), utc(2027, 11, 2, 10)),
            (utc(2027, 11, 9, 8), utc(2027, 11, 9, 10)),
        ]

    def test_byday_monday_and_wednesday(self):
        got = series_local("FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4", oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10))
        assert got == ["Mon 2027-03-01 09:00", "Wed 2027-03-03 09:00", "Mon 2027-03-08 09:00", "Wed 2027-03-10 09:00"]

    def test_interval_two(self):
        got = series_local("FREQ=WEEKLY;INTERVAL=2;COUNT=3", oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10))
        assert got == ["Mon 2027-03-01 09:00", "Mon 2027-03-15 09:00", "Mon 2027-03-29 09:00"]

    def test_monthly_second_tuesday(self):
        start, end = oslo(2027, 1, 12, 9), oslo(2027, 1, 12, 10)
        occ = expand_series("FREQ=MONTHLY;BYDAY=2TU;COUNT=4", start, end, OSLO)
        assert local_wall(occ) == [
            ("2027-01-12 09:00", "2027-01-12 10:00"),
            ("2027-02-09 09:00", "2027-02-09 10:00"),
            ("2027-03-09 09:00", "2027-03-09 10:00"),
            ("2027-04-13 09:00", "2027-04-13 10:00"),
        ]
        assert occ[-1][0] == utc(2027, 4, 13, 7)

    def test_monthly_by_month_day(self):
        got = series_local("FREQ=MONTHLY;BYMONTHDAY=15;COUNT=3", oslo(2027, 1, 15, 14), oslo(2027, 1, 15, 15))
        assert got == ["Fri 2027-01-15 14:00", "Mon 2027-02-15 14:00", "Mon 2027-03-15 14:00"]
        got = series_local("FREQ=MONTHLY;BYMONTHDAY=31;COUNT=3", oslo(2027, 1, 31, 9), oslo(2027, 1, 31, 10))
        assert got == ["Sun 2027-01-31 09:00", "Wed 2027-03-31 09:00", "Mon 2027-05-31 09:00"]

    def test_until_in_utc_is_an_instant(self):
        # 09:00 Oslo on 6 April is 07:00Z; UNTIL 07:30Z includes it although 07:30 < 09:00 as wall-clock numbers.
        start, end = oslo(2027, 3, 16, 9), oslo(2027, 3, 16, 10)
        got = series_local("FREQ=WEEKLY;UNTIL=20270406T073000Z", start, end)
        assert got == ["Tue 2027-03-16 09:00", "Tue 2027-03-23 09:00", "Tue 2027-03-30 09:00", "Tue 2027-04-06 09:00"]

    def test_until_is_inclusive_and_exact(self):
        start, end = oslo(2027, 3, 16, 9), oslo(2027, 3, 16, 10)
        assert len(expand_series("FREQ=WEEKLY;UNTIL=20270406T070000Z", start, end, OSLO)) == 4
        assert len(expand_series("FREQ=WEEKLY;UNTIL=20270406T065959Z", start, end, OSLO)) == 3

    def test_until_in_a_half_hour_zone(self):
        start, end = at(KOLKATA, 2027, 3, 1, 9), at(KOLKATA, 2027, 3, 1, 10)  # 03:30Z
        assert len(expand_series("FREQ=DAILY;UNTIL=20270303T033000Z", start, end, KOLKATA)) == 3
        assert len(expand_series("FREQ=DAILY;UNTIL=20270303T032959Z", start, end, KOLKATA)) == 2

    def test_lower_case_rule_is_accepted(self):
        assert len(expand_series("freq=daily;count=3", oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10), OSLO)) == 3

    def test_first_occurrence_is_the_requested_booking_overnight_across_spring_forward(self):
        # Saturday 22:00 CET -> Sunday 06:00 CEST (7 real hours), weekly: the user asked for 22:00-06:00.
        start, end = oslo(2027, 3, 27, 22), oslo(2027, 3, 28, 6)
        occ = expand_series("FREQ=WEEKLY;COUNT=2", start, end, OSLO)
        assert occ[0] == (start, end)
        assert local_wall(occ) == [
            ("2027-03-27 22:00", "2027-03-28 06:00"),
            ("2027-04-03 22:00", "2027-04-04 06:00"),
        ]

    def test_first_occurrence_is_the_requested_booking_overnight_across_fall_back(self):
        start, end = oslo(2027, 10, 30, 22), oslo(2027, 10, 31, 6)  # 9 real hours
        occ = expand_series("FREQ=WEEKLY;COUNT=2", start, end, OSLO)
        assert occ[0] == (start, end)
        assert local_wall(occ)[1] == ("2027-11-06 22:00", "2027-11-07 06:00")

    def test_at_most_366_occurrences(self):
        start, end = oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10)
        assert len(expand_series("FREQ=DAILY;COUNT=366", start, end, OSLO)) == 366
        with pytest.raises(RRuleError):
            expand_series("FREQ=DAILY;COUNT=367", start, end, OSLO)
        with pytest.raises(RRuleError):
            expand_series("FREQ=DAILY;UNTIL=20290101T000000Z", start, end, OSLO)

    @pytest.mark.parametrize("rule", ["FREQ=WEEKLY", "FREQ=DAILY;INTERVAL=2", "RRULE:FREQ=MONTHLY;BYDAY=2TU"])
    def test_count_or_until_required(self, rule):
        with pytest.raises(RRuleError, match="COUNT or UNTIL"):
            expand_series(rule, oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10), OSLO)

    @pytest.mark.parametrize(
        "rule",
        [
            "FREQ=WEEKLY;COUNT=8;DTSTART=20270101T090000Z",
            "DTSTART=20270101T090000Z;FREQ=WEEKLY;COUNT=8",
            "RRULE:FREQ=WEEKLY;COUNT=3\nDTSTART:20270607T080000Z",
            "FREQ=WEEKLY;COUNT=3\nDTSTART:20270607T080000Z",
        ],
    )
    def test_dtstart_inside_the_rule_is_refused(self, rule):
        with pytest.raises(RRuleError):
            expand_series(rule, oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10), OSLO)

    @pytest.mark.parametrize(
        "rule",
        [
            "",
            "hello",
            "COUNT=8",
            "FREQ=FORTNIGHTLY;COUNT=3",
            "FREQ=WEEKLY;COUNT=abc",
            "FREQ=WEEKLY;COUNT=3;BYDAY=XX",
            "FREQ=WEEKLY;COUNT=3;FOO=1",
            "FREQ=WEEKLY;UNTIL=garbage",
            "FREQ=WEEKLY;UNTIL=20270401",  # a floating UNTIL cannot be compared with the lab-zone start
            "FREQ=WEEKLY;COUNT=0",
            "FREQ=YEARLY;COUNT=2;BYMONTH=2;BYMONTHDAY=30",  # never happens
            "FREQ=WEEKLY;COUNT=2;INTERVAL=0",
            "FREQ=WEEKLY;COUNT=2;INTERVAL=-1",
            "FREQ=MONTHLY;COUNT=3;BYDAY=9TU",
            "FREQ=MONTHLY;COUNT=3;BYMONTHDAY=0",
            "FREQ=WEEKLY;COUNT=2\nFREQ=DAILY;COUNT=3",
            "FREQ=WEEKLY;COUNT=2\nRDATE:20270615T080000Z",
        ],
    )
    def test_garbage_is_an_rrule_error(self, rule):
        with pytest.raises(RRuleError):
            expand_series(rule, oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10), OSLO)


# --------------------------------------------------------------------------------------------------
# free_intervals
# --------------------------------------------------------------------------------------------------


class TestFreeIntervals:
    DAY = (oslo(2027, 3, 1), oslo(2027, 3, 2))  # Monday

    def test_opening_hours_minus_outages_minus_holds_with_buffer(self):
        place = make_place(Policy(opening_hours=OFFICE_HOURS, buffer_minutes=30))
        outages = [(oslo(2027, 3, 1, 10), oslo(2027, 3, 1, 11))]
        # An existing 13:00-14:00 booking holds until 14:30 (its end plus the buffer).
        holds = [(oslo(2027, 3, 1, 13), oslo(2027, 3, 1, 14, 30))]
        got = free_intervals(place, *self.DAY, outages, holds)
        assert local_wall(got) == [
            ("2027-03-01 08:00", "2027-03-01 10:00"),
            ("2027-03-01 11:00", "2027-03-01 12:30"),  # a new booking must end 30 min before 13:00
            ("2027-03-01 14:30", "2027-03-01 16:00"),
        ]

    def test_buffer_is_applied_to_each_hold(self):
        place = make_place(Policy(buffer_minutes=15))
        holds = [(oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10, 15)), (oslo(2027, 3, 1, 12), oslo(2027, 3, 1, 13, 15))]
        got = free_intervals(place, oslo(2027, 3, 1, 8), oslo(2027, 3, 1, 14), [], holds)
        assert local_wall(got) == [
            ("2027-03-01 08:00", "2027-03-01 08:45"),
            ("2027-03-01 10:15", "2027-03-01 11:45"),
            ("2027-03-01 13:15", "2027-03-01 14:00"),
        ]

    def test_touching_is_allowed_without_buffer(self):
        place = make_place(Policy(opening_hours=OFFICE_HOURS))
        holds = [(oslo(2027, 3, 1, 12), oslo(2027, 3, 1, 13))]
        got = free_intervals(place, *self.DAY, [], holds)
        assert local_wall(got) == [
            ("2027-03-01 08:00", "2027-03-01 12:00"),
            ("2027-03-01 13:00", "2027-03-01 16:00"),
        ]

    def test_always_open_minus_holds(self):
        place = make_place(Policy())
        holds = [(oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 10))]
        got = free_intervals(place, oslo(2027, 3, 1, 8), oslo(2027, 3, 1, 12), [], holds)
        assert local_wall(got) == [
            ("2027-03-01 08:00", "2027-03-01 09:00"),
            ("2027-03-01 10:00", "2027-03-01 12:00"),
        ]

    def test_outage_over_the_whole_day_leaves_nothing(self):
        place = make_place(Policy(opening_hours=OFFICE_HOURS))
        assert free_intervals(place, *self.DAY, [(oslo(2027, 2, 28), oslo(2027, 3, 3))], []) == []

    def test_holds_and_outages_outside_the_window_are_ignored(self):
        place = make_place(Policy(opening_hours=OFFICE_HOURS, buffer_minutes=60))
        got = free_intervals(
            place, *self.DAY,
            [(oslo(2027, 3, 2, 8), oslo(2027, 3, 2, 9))],
            [(oslo(2027, 3, 1, 17), oslo(2027, 3, 1, 18))],  # widened to 16:00-18:00: touches closing time
        )
        assert local_wall(got) == [("2027-03-01 08:00", "2027-03-01 16:00")]

    def test_free_time_across_dst(self):
        place = make_place(Policy(opening_hours=OFFICE_HOURS))
        got = free_intervals(place, utc(2027, 3, 26), utc(2027, 3, 30), [], [])
        assert got == [(utc(2027, 3, 26, 7), utc(2027, 3, 26, 15)), (utc(2027, 3, 29, 6), utc(2027, 3, 29, 14))]


# --------------------------------------------------------------------------------------------------
# slot_starts
# --------------------------------------------------------------------------------------------------


class TestSlotStarts:
    def test_aligned_to_the_local_grid_and_fitting(self):
        place = make_place(Policy(slot_minutes=15))
        free = (oslo(2027, 3, 1, 10, 7), oslo(2027, 3, 1, 11))
        got = list(slot_starts(place, free, 30, free[0]))
        assert local_wall([(s, s) for s in got]) == [
            ("2027-03-01 10:15", "2027-03-01 10:15"),
            ("2027-03-01 10:30", "2027-03-01 10:30"),  # ends exactly at 11:00
        ]

    def test_start_on_the_grid_is_kept(self):
        place = make_place(Policy(slot_minutes=30))
        free = (oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 11))
        assert list(slot_starts(place, free, 60, free[0])) == [
            oslo(2027, 3, 1, 9), oslo(2027, 3, 1, 9, 30), oslo(2027, 3, 1, 10)
        ]

    def test_never_before_not_before(self):
        place = make_place(Policy(slot_minutes=15))
        free = (oslo(2027, 3, 1, 8), oslo(2027, 3, 1, 10))
        got = list(slot_starts(place, free, 60, oslo(2027, 3, 1, 8, 40, 10)))
        assert got == [oslo(2027, 3, 1, 8, 45), oslo(2027, 3, 1, 9)]
        assert all(s >= oslo(2027, 3, 1, 8, 40, 10) for s in got)

    def test_not_before_after_the_interval_gives_nothing(self):
        place = make_place(Policy(slot_minutes=15))
        free = (oslo(2027, 3, 1, 8), oslo(2027, 3, 1, 10))
        assert list(slot_starts(place, free, 15, oslo(2027, 3, 1, 10))) == []

    def test_too_short_interval_gives_nothing(self):
        place = make_place(Policy(slot_minutes=15))
        free = (oslo(2027, 3, 1, 8), oslo(2027, 3, 1, 8, 45))
        assert list(slot_starts(place, free, 60, free[0])) == []

    def test_grid_of_a_half_hour_zone(self):
        place = make_place(Policy(slot_minutes=60), timezone="Asia/Kolkata")
        free = (utc(2027, 3, 1, 3), utc(2027, 3, 1, 6))  # 08:30-11:30 IST
        assert list(slot_starts(place, free, 60, free[0])) == [utc(2027, 3, 1, 3, 30), utc(2027, 3, 1, 4, 30)]

    def test_grid_after_dst(self):
        place = make_place(Policy(slot_minutes=60))
        free = (utc(2027, 4, 6, 6, 20), utc(2027, 4, 6, 9))  # 08:20-11:00 CEST
        assert list(slot_starts(place, free, 60, free[0])) == [utc(2027, 4, 6, 7), utc(2027, 4, 6, 8)]

    @pytest.mark.parametrize(
        ("slot", "free"),
        [
            (15, (utc(2027, 3, 1, 6, 7), utc(2027, 3, 1, 20))),
            (60, (utc(2027, 3, 27, 12), utc(2027, 3, 29, 12))),  # over spring-forward
            (90, (utc(2027, 3, 1, 0), utc(2027, 3, 4, 0))),  # several ordinary days
            (90, (utc(2027, 3, 27, 12), utc(2027, 3, 29, 12))),  # over spring-forward
            (45, (utc(2027, 10, 30, 12), utc(2027, 11, 1, 12))),  # over fall-back
        ],
    )
    def test_every_offered_start_passes_the_slot_rule(self, slot, free):
        # Whatever slot_starts offers (here a resource open round the clock) check_rules must accept.
        place = make_place(Policy(slot_minutes=slot, min_minutes=slot, max_minutes=slot * 4))
        starts = list(slot_starts(place, free, slot, free[0]))
        assert starts, "expected some starts"
        refused = [
            s.astimezone(OSLO).isoformat()
            for s in starts
            if "slot_minutes" in rule_names(place, s, s + dt.timedelta(minutes=slot), now=utc(2027, 1, 1))
        ]
        assert refused == [], f"{len(refused)} of {len(starts)} offered starts are refused, first {refused[:3]}"


# --------------------------------------------------------------------------------------------------
# expand_series: more DST, BYDAY and UNTIL cases
# --------------------------------------------------------------------------------------------------


class TestExpandSeriesAcrossZones:
    def test_byday_across_spring_forward_keeps_each_days_wall_clock(self):
        start, end = oslo(2027, 3, 24, 9), oslo(2027, 3, 24, 10, 30)  # Wednesday before the change
        occ = expand_series("FREQ=WEEKLY;BYDAY=MO,WE,FR;COUNT=5", start, end, OSLO)
        assert local_wall(occ) == [
            ("2027-03-24 09:00", "2027-03-24 10:30"), ("2027-03-26 09:00", "2027-03-26 10:30"),
            ("2027-03-29 09:00", "2027-03-29 10:30"), ("2027-03-31 09:00", "2027-03-31 10:30"),
            ("2027-04-02 09:00", "2027-04-02 10:30"),
        ]
        assert [a.hour for a, _ in occ] == [8, 8, 7, 7, 7]

    def test_byday_across_fall_back(self):
        occ = expand_series("FREQ=WEEKLY;BYDAY=TU,TH;COUNT=4", oslo(2027, 10, 26, 18), oslo(2027, 10, 26, 20), OSLO)
        assert [a for a, _ in occ] == [utc(2027, 10, 26, 16), utc(2027, 10, 28, 16), utc(2027, 11, 2, 17),
                                       utc(2027, 11, 4, 17)]

    def test_daily_over_both_changes_of_a_year(self):
        occ = expand_series("FREQ=DAILY;INTERVAL=7;UNTIL=20271110T000000Z", oslo(2027, 3, 21, 12),
                            oslo(2027, 3, 21, 13), OSLO)
        assert {a.astimezone(OSLO).strftime("%H:%M") for a, _ in occ} == {"12:00"}
        assert {a.hour for a, _ in occ} == {10, 11}  # UTC: 11:00 in winter, 10:00 in summer

    def test_until_in_utc_on_another_date_than_the_labs(self):
        # New York (EDT, -04:00): 21:00 local is 01:00Z the next day. UNTIL 01:00Z on 17 June includes the
        # evening of 16 June; a minute earlier it does not.
        start, end = at(NEW_YORK, 2027, 6, 2, 21), at(NEW_YORK, 2027, 6, 2, 22)
        got = series_local("FREQ=WEEKLY;UNTIL=20270617T010000Z", start, end, NEW_YORK)
        assert got == ["Wed 2027-06-02 21:00", "Wed 2027-06-09 21:00", "Wed 2027-06-16 21:00"]
        assert len(expand_series("FREQ=WEEKLY;UNTIL=20270617T005900Z", start, end, NEW_YORK)) == 2

    def test_until_across_the_zones_change(self):
        # The lab's clocks change between the first occurrence and UNTIL: the instant still decides.
        start, end = at(NEW_YORK, 2027, 3, 2, 9), at(NEW_YORK, 2027, 3, 2, 10)  # EST
        got = series_local("FREQ=WEEKLY;UNTIL=20270316T130000Z", start, end, NEW_YORK)
        assert got == ["Tue 2027-03-02 09:00", "Tue 2027-03-09 09:00", "Tue 2027-03-16 09:00"]  # 13:00Z = 09:00 EDT

    def test_monthly_last_friday_across_spring_forward(self):
        got = series_local("FREQ=MONTHLY;BYDAY=-1FR;COUNT=3", oslo(2027, 2, 26, 15), oslo(2027, 2, 26, 16))
        assert got == ["Fri 2027-02-26 15:00", "Fri 2027-03-26 15:00", "Fri 2027-04-30 15:00"]


# --------------------------------------------------------------------------------------------------
# quota: the edges of an ISO week
# --------------------------------------------------------------------------------------------------


class TestQuotaWeekEdges:
    def place(self, limit=4):
        return make_place(Policy(max_hours_per_week=limit))

    FULL_WEEK_10 = [(oslo(2027, 3, 9, 8), oslo(2027, 3, 9, 12))]  # 4 h on Tuesday of week 10

    def test_ending_exactly_at_local_monday_midnight_counts_only_in_the_old_week(self):
        assert iso_week_hours([(oslo(2027, 3, 14, 22), oslo(2027, 3, 15, 0))], OSLO) == {(2027, 10): 2.0}
        assert quota_violation(self.place(), [(oslo(2027, 3, 14, 22), oslo(2027, 3, 15))], self.FULL_WEEK_10)
        assert quota_violation(self.place(), [(oslo(2027, 3, 15), oslo(2027, 3, 15, 2))], self.FULL_WEEK_10) is None

    def test_the_week_after_spring_forward_starts_at_local_midnight(self):
        # Monday 29 March 00:00 CEST is 22:00Z on Sunday.
        full = [(oslo(2027, 3, 23, 8), oslo(2027, 3, 23, 12))]  # week 12
        assert quota_violation(self.place(), [(utc(2027, 3, 28, 22), utc(2027, 3, 28, 23))], full) is None
        assert quota_violation(self.place(), [(utc(2027, 3, 28, 21), utc(2027, 3, 28, 22))], full) is not None

    def test_the_week_after_fall_back_starts_at_local_midnight(self):
        # Monday 1 November 00:00 CET is 23:00Z on Sunday.
        full = [(oslo(2027, 10, 26, 8), oslo(2027, 10, 26, 12))]  # week 43
        assert quota_violation(self.place(), [(utc(2027, 10, 31, 23), utc(2027, 11, 1, 0))], full) is None
        assert quota_violation(self.place(), [(utc(2027, 10, 31, 22), utc(2027, 10, 31, 23))], full) is not None

    def test_the_night_the_clocks_go_back_has_an_extra_hour(self):
        # Sunday 31 October 00:00-04:00 on the wall clock is five real hours.
        assert iso_week_hours([(oslo(2027, 10, 31, 0), oslo(2027, 10, 31, 4))], OSLO) == {(2027, 43): 5.0}
        assert quota_violation(self.place(), [(oslo(2027, 10, 31, 0), oslo(2027, 10, 31, 4))], []) is not None

    def test_iso_year_boundary_splits_at_monday(self):
        # Sunday 2 January 2028 is in week 52 of 2027; Monday 3 January starts week 1 of 2028.
        got = iso_week_hours([(oslo(2028, 1, 2, 23), oslo(2028, 1, 3, 1))], OSLO)
        assert got == {(2027, 52): 1.0, (2028, 1): 1.0}
        full_52 = [(oslo(2027, 12, 28, 8), oslo(2027, 12, 28, 12))]
        v = quota_violation(self.place(), [(oslo(2028, 1, 2, 23), oslo(2028, 1, 3, 1))], full_52)
        assert v is not None and "week 52 of 2027" in v["message"]

    def test_existing_bookings_of_neighbouring_weeks_do_not_count(self):
        existing = [(oslo(2027, 3, 7, 20), oslo(2027, 3, 8, 0)), (oslo(2027, 3, 15), oslo(2027, 3, 15, 4))]
        assert quota_violation(self.place(), [(oslo(2027, 3, 10, 8), oslo(2027, 3, 10, 12))], existing) is None


class TestQuotaFit:
    def test_fills_each_week_in_time_order_and_skips_what_does_not_fit(self):
        place = make_place(Policy(max_hours_per_week=5))
        daily = [(oslo(2027, 3, 8 + i, 9), oslo(2027, 3, 8 + i, 11)) for i in range(8)]  # Mon 8 .. Mon 15
        existing = [(oslo(2027, 3, 12, 13), oslo(2027, 3, 12, 14))]
        got = domain.quota_fit(place, daily, existing)
        assert [v is None for v in got] == [True, True, False, False, False, False, False, True]
        assert all(v["rule"] == "quota" for v in got if v)

    def test_a_skipped_long_one_leaves_room_for_later_short_ones(self):
        place = make_place(Policy(max_hours_per_week=3))
        new = [(oslo(2027, 3, 8, 9), oslo(2027, 3, 8, 11)), (oslo(2027, 3, 9, 9), oslo(2027, 3, 9, 11)),
               (oslo(2027, 3, 10, 9), oslo(2027, 3, 10, 10))]
        assert [v is None for v in domain.quota_fit(place, new, [])] == [True, False, True]

    def test_no_limit_fits_everything(self):
        assert domain.quota_fit(make_place(Policy()), [(oslo(2027, 3, 8), oslo(2027, 3, 9))], []) == [None]


# --------------------------------------------------------------------------------------------------
# moving and re-planning a series
# --------------------------------------------------------------------------------------------------


class TestWallClockShift:
    def test_a_day_later_keeps_the_wall_clock_across_spring_forward(self):
        got = domain.shift_wall(oslo(2027, 3, 27, 9), dt.timedelta(days=1), OSLO)
        assert got == oslo(2027, 3, 28, 9) and got - oslo(2027, 3, 27, 9) == dt.timedelta(hours=23)

    def test_an_hour_later_across_fall_back(self):
        assert domain.shift_wall(oslo(2027, 10, 31, 12), dt.timedelta(hours=1), OSLO) == oslo(2027, 10, 31, 13)

    def test_wall_delta_ignores_the_zones_change(self):
        assert domain.wall_delta(oslo(2027, 3, 27, 9), oslo(2027, 3, 28, 10), OSLO) == dt.timedelta(hours=25)
        assert oslo(2027, 3, 28, 10) - oslo(2027, 3, 27, 9) == dt.timedelta(hours=24)


def occurrence(i: str, slot: dt.datetime, start: dt.datetime | None = None, live: bool = True):
    return domain.Occurrence(i, slot, start or slot, live)


class TestReplanSeries:
    NOW = oslo(2027, 3, 1)

    def slots(self, n: int, first=(2027, 3, 2)):
        start = oslo(*first, 9)
        return [(start + dt.timedelta(weeks=i), start + dt.timedelta(weeks=i, hours=1)) for i in range(n)]

    def test_extending_keeps_what_is_there_and_adds_the_rest(self):
        slots = self.slots(6)
        existing = [occurrence(f"o{i}", s) for i, (s, _) in enumerate(slots[:4])]
        plan = domain.replan_series(slots, existing, self.NOW)
        assert plan.keep == ["o0", "o1", "o2", "o3"] and plan.cancel == [] and plan.add == slots[4:]

    def test_shortening_cancels_live_ones_past_the_new_end(self):
        slots = self.slots(4)
        existing = [occurrence(f"o{i}", s) for i, (s, _) in enumerate(slots)]
        plan = domain.replan_series(slots[:2], existing, self.NOW)
        assert plan.keep == ["o0", "o1"] and plan.cancel == ["o2", "o3"] and plan.add == []

    def test_moved_ones_follow_their_slot_and_cancelled_ones_stay_cancelled(self):
        slots = self.slots(3)
        existing = [occurrence("moved", slots[0][0], slots[0][0] + dt.timedelta(hours=5)),
                    occurrence("gone", slots[1][0], live=False)]
        plan = domain.replan_series(slots, existing, self.NOW)
        assert plan.keep == ["moved"] and plan.cancel == [] and plan.add == [slots[2]]

    def test_nothing_that_has_started_is_touched_or_booked(self):
        slots = self.slots(3)
        existing = [occurrence("past", slots[0][0] - dt.timedelta(weeks=1))]
        plan = domain.replan_series(slots, existing, slots[1][0])
        assert plan.cancel == [] and plan.add == [slots[2]]


class TestSelfClashes:
    def test_overlapping_and_buffer_gaps(self):
        a, b, c = (h(8), h(9)), (h(9), h(10)), (h(10, 10), h(11))
        assert domain.self_clashes([a, b, c], dt.timedelta(0)) == []
        assert domain.self_clashes([c, b, a], dt.timedelta(minutes=15)) == [(a, b), (b, c)]

    def test_a_long_one_clashes_with_a_later_one_past_its_neighbour(self):
        long, short, later = (h(8), h(12)), (h(9), h(10)), (h(11), h(13))
        assert domain.self_clashes([long, short, later], dt.timedelta(0)) == [(long, short), (long, later)]


# --------------------------------------------------------------------------------------------------
# check-in, waitlist positions
# --------------------------------------------------------------------------------------------------


class TestCheckinAndWaitlist:
    def test_checkin_due_only_where_required(self):
        assert domain.checkin_due(Policy(), h(9)) is None
        assert domain.checkin_due(Policy(checkin_required=True, checkin_grace_minutes=20), h(9)) == h(9, 20)

    def test_positions_count_earlier_waiters_for_overlapping_time(self):
        w = domain.Waiter
        got = domain.waitlist_positions([
            w("late", h(9), h(10), h(3)), w("first", h(9), h(11), h(1)), w("other", h(12), h(13), h(2)),
            w("touching", h(11), h(12), h(2, 30)),
        ])
        assert got == {"first": 1, "other": 1, "touching": 1, "late": 2}


# --------------------------------------------------------------------------------------------------
# usage and utilisation
# --------------------------------------------------------------------------------------------------

RATES = {"internal": 450, "external": 1200, "currency": "NOK"}


class TestUsageArithmetic:
    def line(self, org, seconds, rates=RATES, lab_org="ntnu", bookings=1):
        return domain.usage_line(resource_id="r", resource_name="Scope", rates=rates, lab_org=lab_org, org=org,
                                 project="P", bookings=bookings, seconds=seconds)

    def test_internal_rate_for_the_labs_own_org_external_for_others(self):
        assert (self.line("ntnu", 5400)["rate"], self.line("ntnu", 5400)["amount"]) == (450, 675.0)
        assert (self.line("sintef", 5400)["rate"], self.line("sintef", 5400)["amount"]) == (1200, 1800.0)
        assert self.line("sintef", 5400)["currency"] == "NOK" and self.line("sintef", 5400)["hours"] == 1.5

    def test_amount_uses_exact_hours_and_rounds_to_cents(self):
        got = self.line("sintef", 1000)  # 0.2777... h
        assert got["hours"] == 0.28 and got["amount"] == 333.33

    def test_no_rate_means_no_amount(self):
        got = self.line("sintef", 3600, rates={"internal": 450})
        assert (got["rate"], got["amount"], got["currency"]) == (None, None, None)
        assert self.line("ntnu", 3600, rates={"internal": True})["rate"] is None

    def test_clipping_to_the_window(self):
        lo, hi = h(10), h(12)
        assert domain.clipped_seconds(h(9), h(11), lo, hi) == 3600
        assert domain.clipped_seconds(h(11), h(13), lo, hi) == 3600
        assert domain.clipped_seconds(h(9), h(13), lo, hi) == 7200
        assert domain.clipped_seconds(h(12), h(13), lo, hi) == 0

    def test_open_seconds_minus_outages_and_always_open(self):
        week = (oslo(2027, 3, 1), oslo(2027, 3, 8))
        outage = [(oslo(2027, 3, 3, 12), oslo(2027, 3, 3, 20))]  # 4 h of Wednesday's opening hours
        assert domain.open_seconds(OFFICE_HOURS, OSLO, *week, outage) == 36 * 3600
        assert domain.open_seconds(None, OSLO, *week, []) == 168 * 3600
        assert domain.utilisation(9 * 3600, 36 * 3600) == 0.25
        assert domain.utilisation(3600, 0) is None

    def test_open_hours_of_a_week_with_a_dst_change(self):
        assert domain.open_seconds(None, OSLO, oslo(2027, 3, 22), oslo(2027, 3, 29), []) == 167 * 3600
