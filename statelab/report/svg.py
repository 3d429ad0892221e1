"""Chart primitives for the HTML report: line charts with event markers and bar charts, as inline SVG.

Pure functions from numbers to SVG text, no I/O. Every text is escaped here. The palette is
Okabe-Ito (safe for the common colour-vision deficiencies), and no series is told apart by colour
alone: lines also differ by dash pattern and carry a direct label, bars carry their value as text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Okabe & Ito, "Color Universal Design" (2008).
BLUE, VERMILLION, PURPLE, GREEN, ORANGE, SKY, BLACK = (
    "#0072B2", "#D55E00", "#CC79A7", "#009E73", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "10 6", "3 5", "14 4 3 4")  # solid, dashed, dotted, dash-dot
FONT_PX = 17
TITLE_PX = 20
COMPACT_TITLE_PX = 17
SMALL_PX = 14
CHAR_W = 0.58  # average glyph width / font size for sans-serif: enough to lay labels out
MAX_LABEL_W = 190  # px kept right of a line chart's plot for direct labels


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points, drawn in colour with a dash pattern."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str = BLUE
    dash: str = ""


@dataclass(frozen=True)
class Marker:
    """A vertical event marker at x (same unit as the chart's x axis)."""

    x: float
    label: str


def nice_ticks(hi: float, count: int = 5) -> list[float]:
    """Return round tick values from 0 up to at least hi (about `count` of them)."""
    if not hi or hi <= 0 or not math.isfinite(hi):
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(hi / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def fmt(value: float) -> str:
    """Format a number for a label: integers without decimals, small numbers with a few."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _text(x: float, y: float, s: str, size: int = FONT_PX, anchor: str = "start", weight: str = "normal",
          fill: str = BLACK, cls: str = "", extra: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}"{c}{extra}>{escape(s)}</text>')


def _svg_open(width: int, height: int, title: str, cls: str, compact: bool = False) -> str:
    # a long title (a variant's name) gets a smaller font before it gets shortened
    top = COMPACT_TITLE_PX if compact else TITLE_PX
    size = max(min(15, top), min(top, int((width - 24) / (max(1, len(title)) * CHAR_W))))
    return (f'<svg class="chart {cls}" viewBox="0 0 {width} {height}" '
            f'width="100%" role="img" aria-label="{escape(title)}" '
            f'font-family="DejaVu Sans, Verdana, Arial, sans-serif"><title>{escape(title)}</title>'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>'
            + _text(12, 20 if compact else 26, _short(title, int((width - 24) / (size * CHAR_W))), size,
                    weight="bold", cls="chart-title"))


def line_chart(title: str, series: Sequence[Series], *, x_unit: str = "s",
               y_label: str = "", y_max: float | None = None, x_max: float | None = None,
               markers: Sequence[Marker] = (), marker_legend: bool = True, width: int = 640, height: int = 340,
               cls: str = "", compact: bool = False) -> str:
    """Draw series as polylines (one vertex per point) on 0-based axes, with numbered event markers.

    Markers are numbered on the plot and spelled out in a legend under it: a rolling deploy
    makes a dozen events within seconds, and direct labels would pile up on each other.
    `compact` keeps more of a short canvas for the plot (a report's first-screen chart).
    """
    x_max = x_max if x_max is not None else max([1.0, *(x for s in series for x, _ in s.points)])
    data_max = max((y for s in series for _, y in s.points), default=0.0)
    ticks = nice_ticks(y_max if y_max is not None else data_max)
    top = ticks[-1] or 1.0
    # the right margin holds each line's direct label: as wide as the longest one, within limits
    right = min(MAX_LABEL_W, max(30, int(max((len(s.name) for s in series if s.points), default=0)
                                         * SMALL_PX * CHAR_W) + 16))
    left, plot_top, bottom, legend_y = (70, 54, 40, 36) if compact else (70, 96, 56, 50)
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    tag_y = plot_top - 22
    # events before traffic started (the lab starting up) are not part of the story being drawn
    groups = _group_markers([m for m in markers if 0 <= m.x <= x_max], x_max, plot_w)
    chars = int((width - 50) / (SMALL_PX * CHAR_W))
    legend = [_wrap(f"{fmt(round(x, 1))} s  " + "; ".join(labels), chars) for x, labels in groups] \
        if marker_legend else []
    line_h = SMALL_PX + 6
    total_h = height + sum(len(lines) * line_h + 4 for lines in legend) + (8 if legend else 0)

    def px(x: float) -> float:
        return left + plot_w * min(max(x, 0.0), x_max) / x_max

    def py(y: float) -> float:
        return plot_top + plot_h * (1 - min(max(y, 0.0), top) / top)

    out = [_svg_open(width, total_h, title, f"line-chart {cls}".strip(), compact)]
    # legend of series, above the plot: swatch with the dash pattern, then the name
    lx = left
    for s in series:
        out.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 30}" y2="{legend_y}" stroke="{s.color}" '
                   f'stroke-width="4" stroke-dasharray="{s.dash}"/>')
        out.append(_text(lx + 36, legend_y + 6, s.name, SMALL_PX + 1))
        lx += 36 + int(len(s.name) * (SMALL_PX + 1) * CHAR_W) + 24
    # y grid and ticks
    for t in ticks:
        y = py(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#d9d9d9"/>')
        out.append(_text(left - 8, y + 5, fmt(t), SMALL_PX, "end"))
    if y_label:
        out.append(_text(16, plot_top + plot_h / 2, y_label, SMALL_PX, "middle",
                         extra=f' transform="rotate(-90 16 {plot_top + plot_h / 2:.1f})"'))
    # x ticks
    for t in nice_ticks(x_max, 6):
        if t > x_max + 1e-9:
            break
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{plot_top + plot_h}" x2="{x:.1f}" y2="{plot_top + plot_h + 6}" '
                   f'stroke="{BLACK}"/>')
        out.append(_text(x, plot_top + plot_h + (20 if compact else 24), fmt(t), SMALL_PX, "middle"))
    out.append(_text(left + plot_w / 2, plot_top + plot_h + (36 if compact else 46), f"time ({x_unit})", SMALL_PX,
                     "middle"))
    out.append(f'<line x1="{left}" y1="{plot_top + plot_h}" x2="{left + plot_w}" y2="{plot_top + plot_h}" '
               f'stroke="{BLACK}" stroke-width="1.5"/>')
    out.append(f'<line x1="{left}" y1="{plot_top}" x2="{left}" y2="{plot_top + plot_h}" stroke="{BLACK}" '
               f'stroke-width="1.5"/>')
    # event markers: a dashed line and a numbered tag per group of near-simultaneous events; when
    # compact (few markers, no legend under the plot), the label itself, as far as the next marker
    for num, (x, labels) in enumerate(groups, 1):
        xx = px(x)
        if compact:
            room = (px(groups[num][0]) if num < len(groups) else left + plot_w) - xx - 8
            tag = _text(xx + 4, plot_top + 14, _short("; ".join(labels), int(room / ((SMALL_PX - 1) * CHAR_W))),
                        SMALL_PX - 1, fill="#333333", cls="event-name")
        else:
            tag = (f'<rect x="{xx - 11:.1f}" y="{tag_y}" width="22" height="20" rx="4" fill="#333333"/>'
                   + _text(xx, tag_y + 15, str(num), SMALL_PX - 1, "middle", "bold", "#ffffff"))
        out.append(f'<g class="event" data-t="{x:g}"><line x1="{xx:.1f}" y1="{plot_top}" x2="{xx:.1f}" '
                   f'y2="{plot_top + plot_h}" stroke="#555555" stroke-width="1.5" stroke-dasharray="4 4"/>'
                   + tag + f'<title>{escape("; ".join(labels))}</title></g>')
    # the series themselves, then a direct label at the end of each line
    label_ys: list[float] = []
    for s in series:
        pts = [(px(x), py(y)) for x, y in s.points]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{escape(s.name)}" points="{points}" fill="none" '
                   f'stroke="{s.color}" stroke-width="3" stroke-linejoin="round" stroke-dasharray="{s.dash}"/>')
        if pts:
            y = pts[-1][1]
            while any(abs(y - other) < SMALL_PX + 2 for other in label_ys):
                y += SMALL_PX + 2
            label_ys.append(y)
            out.append(_text(left + plot_w + 8, y + 5, _short(s.name, int((right - 12) / (SMALL_PX * CHAR_W))),
                             SMALL_PX, fill=BLACK, cls="direct-label"))
    # the event legend under the plot: the numbered tag, then what happened (wrapped, at most 3 lines)
    ty = height + 4 + SMALL_PX
    for num, lines in enumerate(legend, 1):
        out.append(f'<g class="event-label"><rect x="12" y="{ty - SMALL_PX + 1:.1f}" width="20" height="18" rx="3" '
                   f'fill="#333333"/>' + _text(22, ty, str(num), SMALL_PX - 1, "middle", "bold", "#ffffff")
                   + "".join(_text(38, ty + i * line_h, line, SMALL_PX) for i, line in enumerate(lines)) + "</g>")
        ty += len(lines) * line_h + 4
    out.append("</svg>")
    return "".join(out)


def _group_markers(markers: Sequence[Marker], x_max: float, plot_w: float) -> list[tuple[float, list[str]]]:
    """Merge markers closer than a tag's width on the plot into one numbered group."""
    groups: list[tuple[float, list[str]]] = []
    min_dx = x_max * 24 / plot_w
    for m in sorted(markers, key=lambda m: m.x):
        if groups and m.x - groups[-1][0] < min_dx:
            groups[-1][1].append(m.label)
        else:
            groups.append((m.x, [m.label]))
    return groups


def _wrap(s: str, limit: int, max_lines: int = 3) -> list[str]:
    """Break s into lines of at most limit characters at spaces; shorten the last line if needed."""
    lines: list[str] = []
    for word in s.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= limit:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _short(lines[-1] + " …", limit)
    return [_short(line, limit) for line in lines]


def _short(s: str, limit: int) -> str:
    return s if len(s) <= limit else s[: max(1, limit - 1)] + "…"


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, unit: str = "", y_max: float | None = None,
              color: str = BLUE, width: int = 640, height: int = 300, cls: str = "",
              value_format: str = "{}") -> str:
    """Draw one bar per (label, value), each with its value written above it, on a 0-based axis."""
    ticks = nice_ticks(y_max if y_max is not None else max((v for _, v in bars), default=0.0))
    top = ticks[-1] or 1.0
    left, right, plot_top, bottom = 70, 20, 50, 50
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    out = [_svg_open(width, height, title, f"bar-chart {cls}".strip())]
    for t in ticks:
        y = plot_top + plot_h * (1 - t / top)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#d9d9d9"/>')
        out.append(_text(left - 8, y + 5, fmt(t) + unit, SMALL_PX, "end"))
    slot = plot_w / max(1, len(bars))
    bar_w = min(90.0, slot * 0.7)
    for i, (label, value) in enumerate(bars):
        h = plot_h * min(max(value, 0.0), top) / top
        x = left + slot * i + (slot - bar_w) / 2
        y = plot_top + plot_h - h
        out.append(f'<rect class="bar" data-label="{escape(label)}" data-value="{value:g}" x="{x:.1f}" y="{y:.1f}" '
                   f'width="{bar_w:.1f}" height="{h:.1f}" fill="{color}"><title>{escape(label)}: '
                   f'{escape(value_format.format(fmt(value)))}{escape(unit)}</title></rect>')
        out.append(_text(x + bar_w / 2, y - 6, value_format.format(fmt(value)) + unit, SMALL_PX, "middle", "bold"))
        out.append(_text(x + bar_w / 2, plot_top + plot_h + 22, _short(label, max(4, int(slot / (SMALL_PX * CHAR_W)))),
                         SMALL_PX, "middle"))
    out.append(f'<line x1="{left}" y1="{plot_top + plot_h}" x2="{left + plot_w}" y2="{plot_top + plot_h}" '
               f'stroke="{BLACK}" stroke-width="1.5"/>')
    if not bars:
        out.append(_text(left + plot_w / 2, plot_top + plot_h / 2, "no data recorded", FONT_PX, "middle"))
    out.append("</svg>")
    return "".join(out)


def grouped_bar_chart(title: str, categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float], str]], *,
                      unit: str = "", y_max: float | None = None, width: int = 640, height: int = 300,
                      cls: str = "", compact: bool = False) -> str:
    """Draw, per category, one bar for each group (name, values, colour), each bar with its value on top.

    Groups are told apart by colour and by a legend above the plot; bars of one group also carry
    its name in their tooltip and `data-group`.
    """
    values = [v for _, vals, _ in groups for v in vals]
    ticks = nice_ticks(y_max if y_max is not None else max(values, default=0.0))
    top = ticks[-1] or 1.0
    left, right, bottom = 70, 20, 30
    legend_y, plot_top = (28, 66) if compact else (40, 76)  # room for the value written above the tallest bar
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    out = [_svg_open(width, height, title, f"bar-chart grouped {cls}".strip(), compact)]
    lx = left
    for name, _, color in groups:
        out.append(f'<rect x="{lx}" y="{legend_y}" width="18" height="14" fill="{color}"/>')
        out.append(_text(lx + 24, legend_y + 13, name, SMALL_PX + 1))
        lx += 24 + int(len(name) * (SMALL_PX + 1) * CHAR_W) + 24
    for t in ticks:
        y = plot_top + plot_h * (1 - t / top)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#d9d9d9"/>')
        out.append(_text(left - 8, y + 5, fmt(t) + unit, SMALL_PX, "end"))
    slot = plot_w / max(1, len(categories))
    bar_w = min(60.0, slot * 0.8 / max(1, len(groups)))
    for i, category in enumerate(categories):
        x0 = left + slot * i + (slot - bar_w * len(groups)) / 2
        for g, (name, vals, color) in enumerate(groups):
            if i >= len(vals):
                continue
            value = vals[i]
            h = plot_h * min(max(value, 0.0), top) / top
            x, y = x0 + g * bar_w, plot_top + plot_h - h
            out.append(f'<rect class="bar" data-group="{escape(name)}" data-label="{escape(category)}" '
                       f'data-value="{value:g}" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="{color}"><title>{escape(name)}, {escape(category)}: {escape(fmt(value))}{escape(unit)}'
                       f'</title></rect>')
            if bar_w >= 30:
                out.append(_text(x + bar_w / 2 - 1, y - 5, fmt(round(value)) + unit, SMALL_PX - 2, "middle"))
        out.append(_text(left + slot * i + slot / 2, plot_top + plot_h + 20,
                         _short(category, max(4, int(slot / (SMALL_PX * CHAR_W)))), SMALL_PX, "middle"))
    out.append(f'<line x1="{left}" y1="{plot_top + plot_h}" x2="{left + plot_w}" y2="{plot_top + plot_h}" '
               f'stroke="{BLACK}" stroke-width="1.5"/>')
    if not categories:
        out.append(_text(left + plot_w / 2, plot_top + plot_h / 2, "no data recorded", FONT_PX, "middle"))
    out.append("</svg>")
    return "".join(out)


__all__ = ["Series", "Marker", "line_chart", "bar_chart", "grouped_bar_chart", "nice_ticks", "fmt",
           "BLUE", "VERMILLION", "PURPLE", "GREEN", "ORANGE", "SKY", "BLACK", "DASHES"]
