"""Horizontal bar charts laid out for a server-rendered SVG (``templates/charts.html`` draws them).

Pure functions: the caller gives each bar its label, its value and the value as
the user reads it; this decides the scale, the gridlines and where each bar and
text go. Each bar's name sits above it, so long instrument names need no left
margin and the chart stays readable when a phone shrinks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: The drawing's own units (the SVG's viewBox); the page scales it to the width it has.
WIDTH = 480
ROW = 46
BAR = 18
LABEL_BASELINE = 16
BAR_TOP = 22
VALUE_BASELINE = 36
TOP = 4
AXIS = 26
#: Room right of the longest bar for its value.
VALUE_ROOM = 88
MAX_LABEL = 56


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    y: float
    width: float


@dataclass(frozen=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ticks: list[Tick]
    width: int
    height: int
    plot_width: int
    axis_y: int
    bar_height: int = BAR
    bar_top: int = BAR_TOP
    label_baseline: int = LABEL_BASELINE
    value_baseline: int = VALUE_BASELINE


def nice_step(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def nice_scale(largest: float, ticks: int = 4) -> tuple[float, int]:
    """A scale from 0 that holds ``largest``: its end and how many gridline steps of a round size it has
    (at most ``ticks``, at least one)."""
    step = nice_step(largest / ticks)
    count = max(1, math.ceil(largest / step - 1e-9))
    return step * count, count


def short(label: str, limit: int = MAX_LABEL) -> str:
    return label if len(label) <= limit else label[: limit - 1].rstrip() + "…"


def bar_chart(rows: Sequence[tuple[str, float, str]], tick_text: Callable[[float], str],
              scale_max: float | None = None, ticks: int = 4) -> Chart:
    """Bars for ``(label, value, value as text)`` rows, in the order given, on a scale from 0 to
    ``scale_max`` in ``ticks`` steps (by default: round steps up to the largest value)."""
    if scale_max is not None:
        top = scale_max
    else:
        top, ticks = nice_scale(max((v for _l, v, _t in rows), default=0), ticks)
    plot = WIDTH - VALUE_ROOM
    bars = [
        Bar(label=short(label), value=value, text=text, y=TOP + i * ROW,
            width=round(plot * min(max(value, 0) / top, 1), 2))
        for i, (label, value, text) in enumerate(rows)
    ]
    marks = [Tick(x=round(plot * n / ticks, 2), text=tick_text(top * n / ticks)) for n in range(ticks + 1)]
    axis_y = TOP + len(bars) * ROW
    return Chart(bars=bars, ticks=marks, width=WIDTH, height=axis_y + AXIS, plot_width=plot, axis_y=axis_y)
