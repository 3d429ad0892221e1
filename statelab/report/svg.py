"""Chart primitives for the HTML report: line charts with event markers and bar charts, as inline SVG.

Pure functions from numbers to SVG text, no I/O. Every text is escaped here. The palette is
Okabe-Ito (safe for the common colour-vision deficiencies), and no series is told apart by colour
alone: lines also differ by dash pattern, are named in a legend that wraps onto as many rows as its
names need, and carry a direct label at their end when every label fits there in full; bars carry
their value as text.
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
LEGEND_PX = SMALL_PX + 1
LEGEND_ROW_H = LEGEND_PX + 7
LEGEND_GAP = 24  # px between two keys of a legend row
# Advance widths of DejaVu Sans, the charts' first font (Verdana's are about the same), in thousandths
# of an em, as Chromium measures them: enough to lay a legend out to the pixel, no font file needed.
GLYPH_WIDTHS = {
    275: "'", 278: "ijl", 295: "IJ", 318: " ,.\u00a0", 337: "/:;\\|", 352: "f", 361: "-", 390: "()[]", 392: "t",
    401: "!", 411: "r", 460: '"', 500: "*_`", 521: "s", 525: "z", 531: "?", 550: "c", 557: "L", 575: "F", 579: "k",
    592: "vxy", 603: "P", 612: "oTY", 613: "a", 615: "e", 632: "E", 634: "hnu", 635: "bdgpqS",
    636: "0123456789${}", 656: "K", 684: "AV", 685: "XZ", 686: "B", 695: "R", 698: "C", 732: "U", 748: "N",
    752: "H", 770: "D", 775: "G", 780: "&", 787: "OQ", 818: "w", 838: "#+<=>^~→✓✗−±", 863: "M", 950: "%",
    974: "m", 989: "W", 1000: "@…",
}
GLYPH_EM = {ch: w / 1000 for w, chars in GLYPH_WIDTHS.items() for ch in chars}


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


def text_width(s: str, size: float) -> float:
    """Return the width in px of s set in DejaVu Sans at size px (an unknown glyph counts as a digit)."""
    return size * sum(GLYPH_EM.get(ch, 0.636) for ch in s)


def legend_rows(names: Sequence[str], x0: float, x1: float, swatch_w: int) -> list[tuple[float, int, list[str]]]:
    """Lay legend keys out left to right, starting a new row where the next would pass x1.

    Return per key (x, row, lines of its name): a name too long for a row of its own wraps onto
    the next rows (three at most, then shortened), so no key is ever cut at the chart's edge.
    """
    placed: list[tuple[float, int, list[str]]] = []
    x, row = x0, 0
    for name in names:
        lines = _wrap_px(name, x1 - x0 - swatch_w - 6, LEGEND_PX, max_lines=3)
        w = swatch_w + 6 + max(text_width(line, LEGEND_PX) for line in lines)
        if x > x0 and x + w > x1:
            x, row = x0, row + 1
        placed.append((x, row, lines))
        x += w + LEGEND_GAP
        row += len(lines) - 1
        if len(lines) > 1:
            x = x1  # the next key starts a row of its own, under the wrapped name
    return placed


def _legend(keys: Sequence[tuple[str, str, str | None]], x0: float, x1: float, y: float) -> tuple[str, int]:
    """Draw keys (name, colour, dash; None draws a box instead of a line) from x0 to x1; return SVG and rows used.

    y is the middle of the first row's swatches.
    """
    out = []
    placed = legend_rows([name for name, _, _ in keys], x0, x1, 30 if any(d is not None for _, _, d in keys) else 18)
    for (name, color, dash), (x, row, lines) in zip(keys, placed):
        yy = y + row * LEGEND_ROW_H
        if dash is None:
            out.append(f'<rect x="{x:.1f}" y="{yy - 7:.1f}" width="18" height="14" fill="{color}"/>')
            tx = x + 24
        else:
            out.append(f'<line x1="{x:.1f}" y1="{yy:.1f}" x2="{x + 30:.1f}" y2="{yy:.1f}" stroke="{color}" '
                       f'stroke-width="4" stroke-dasharray="{dash}"/>')
            tx = x + 36
        out.append(f'<g class="legend-key" data-name="{escape(name)}">'
                   + "".join(_text(tx, yy + 6 + i * LEGEND_ROW_H, line, LEGEND_PX) for i, line in enumerate(lines))
                   + "</g>")
    rows = max((row + len(lines) for _, row, lines in placed), default=1)
    return "".join(out), rows


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
    # the right margin holds each line's direct label, as wide as the longest one; a label that would
    # not fit in full is left out, with all the others (the legend names every line anyway)
    label_w = int(max((text_width(s.name, SMALL_PX) for s in series if s.points), default=0)) + 16
    direct = label_w <= MAX_LABEL_W
    right = max(30, label_w) if direct else 24
    left, plot_top, bottom, legend_y = (70, 54, 40, 36) if compact else (70, 96, 56, 50)
    legend, legend_rows_used = _legend([(s.name, s.color, s.dash) for s in series], 12, width - 12, legend_y)
    extra_h = (legend_rows_used - 1) * LEGEND_ROW_H
    plot_top, height = plot_top + extra_h, height + extra_h  # the plot keeps its height under a taller legend
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    tag_y = plot_top - 22
    # events before traffic started (the lab starting up) are not part of the story being drawn
    groups = _group_markers([m for m in markers if 0 <= m.x <= x_max], x_max, plot_w)
    chars = int((width - 50) / (SMALL_PX * CHAR_W))
    events = [_wrap(f"{fmt(round(x, 1))} s  " + "; ".join(labels), chars) for x, labels in groups] \
        if marker_legend else []
    line_h = SMALL_PX + 6
    total_h = height + sum(len(lines) * line_h + 4 for lines in events) + (8 if events else 0)

    def px(x: float) -> float:
        return left + plot_w * min(max(x, 0.0), x_max) / x_max

    def py(y: float) -> float:
        return plot_top + plot_h * (1 - min(max(y, 0.0), top) / top)

    out = [_svg_open(width, total_h, title, f"line-chart {cls}".strip(), compact)]
    # legend of series, above the plot: swatch with the dash pattern, then the name
    out.append(legend)
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
    # compact (few markers, no legend under the plot), the label itself, on the first of two rows
    # with room for it before the plot's edge, else the label without its detail in brackets
    row_ends = [0.0, 0.0]
    for num, (x, labels) in enumerate(groups, 1):
        xx = px(x)
        if compact:
            text, row = _event_name(labels, xx + 4, left + plot_w - 4, row_ends)
            row_ends[row] = xx + 4 + text_width(text, SMALL_PX - 1) + 8
            tag = _text(xx + 4, plot_top + 14 + row * (SMALL_PX + 2), text, SMALL_PX - 1, fill="#333333",
                        cls="event-name")
        else:
            tag = (f'<rect x="{xx - 11:.1f}" y="{tag_y}" width="22" height="20" rx="4" fill="#333333"/>'
                   + _text(xx, tag_y + 15, str(num), SMALL_PX - 1, "middle", "bold", "#ffffff"))
        out.append(f'<g class="event" data-t="{x:g}"><line x1="{xx:.1f}" y1="{plot_top}" x2="{xx:.1f}" '
                   f'y2="{plot_top + plot_h}" stroke="#555555" stroke-width="1.5" stroke-dasharray="4 4"/>'
                   + tag + f'<title>{escape("; ".join(labels))}</title></g>')
    # the series themselves, then a direct label at the end of each line
    ends: list[tuple[float, str]] = []
    for s in series:
        pts = [(px(x), py(y)) for x, y in s.points]
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{escape(s.name)}" points="{points}" fill="none" '
                   f'stroke="{s.color}" stroke-width="3" stroke-linejoin="round" stroke-dasharray="{s.dash}"/>')
        if pts and direct:
            ends.append((pts[-1][1], s.name))
    label_ys = _spread([y for y, _ in ends], SMALL_PX + 2, plot_top, plot_top + plot_h + 8)
    for y, (_, name) in zip(label_ys, ends):
        out.append(_text(left + plot_w + 8, y + 5, name, SMALL_PX, fill=BLACK, cls="direct-label"))
    # the event legend under the plot: the numbered tag, then what happened (wrapped, at most 3 lines)
    ty = height + 4 + SMALL_PX
    for num, lines in enumerate(events, 1):
        out.append(f'<g class="event-label"><rect x="12" y="{ty - SMALL_PX + 1:.1f}" width="20" height="18" rx="3" '
                   f'fill="#333333"/>' + _text(22, ty, str(num), SMALL_PX - 1, "middle", "bold", "#ffffff")
                   + "".join(_text(38, ty + i * line_h, line, SMALL_PX) for i, line in enumerate(lines)) + "</g>")
        ty += len(lines) * line_h + 4
    out.append("</svg>")
    return "".join(out)


def _event_name(labels: Sequence[str], x: float, x_max: float, row_ends: Sequence[float]) -> tuple[str, int]:
    """Choose an event label's text and its row on the plot.

    The text is the whole label if it fits before x_max, else the label without its detail in
    brackets, else its first clause, else that clause cut; the row is the first one free at x
    (else the one that frees first).
    """
    names = ["; ".join(labels), "; ".join(label.split(" (")[0] for label in labels),
             "; ".join(label.split(" (")[0].split("; ")[0] for label in labels)]
    free = [row for row, end in enumerate(row_ends) if end <= x] or [row_ends.index(min(row_ends))]
    for name in names:
        if x + text_width(name, SMALL_PX - 1) <= x_max:
            return name, free[0]
    return _wrap_px(names[-1], x_max - x, SMALL_PX - 1, max_lines=1)[0], free[0]


def _spread(ys: Sequence[float], gap: float, lo: float, hi: float) -> list[float]:
    """Move label positions apart by at least gap, as little as possible, keeping them within [lo, hi].

    Labels of lines that end together (several at zero) stack below the lowest and, where that
    would leave the chart, back up above it; their order stays the order of the lines' ends.
    """
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = [min(max(ys[i], lo), hi) for i in order]
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    if placed and placed[-1] > hi:
        placed[-1] = hi
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(ys)
    for k, i in enumerate(order):
        out[i] = placed[k]
    return out


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


def _wrap_px(s: str, max_w: float, size: float, max_lines: int) -> list[str]:
    """Break s at spaces into lines at most max_w px wide; shorten the last line if more are needed."""
    lines: list[str] = []
    for word in s.split(" "):
        if lines and text_width(lines[-1] + " " + word, size) <= max_w:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    out = []
    for line in lines:
        while text_width(line, size) > max_w and len(line) > 1:
            line = line[:-2] + "…"
        out.append(line)
    return out


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
    legend, rows = _legend([(name, color, None) for name, _, color in groups], 12, width - 12, legend_y + 7)
    plot_top += (rows - 1) * LEGEND_ROW_H
    height += (rows - 1) * LEGEND_ROW_H
    plot_w, plot_h = width - left - right, height - plot_top - bottom
    out = [_svg_open(width, height, title, f"bar-chart grouped {cls}".strip(), compact), legend]
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


__all__ = ["Series", "Marker", "line_chart", "bar_chart", "grouped_bar_chart", "legend_rows", "nice_ticks", "fmt",
           "text_width", "LEGEND_PX", "LEGEND_ROW_H",
           "BLUE", "VERMILLION", "PURPLE", "GREEN", "ORANGE", "SKY", "BLACK", "DASHES"]
