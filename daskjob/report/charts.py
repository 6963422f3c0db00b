"""The report's charts, as inline SVG: they need no script and no network, and they
print."""

from __future__ import annotations

import html
from typing import Iterable

WIDTH, HEIGHT = 900, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 26, 30
PHASE_LEFT = 140  # room for the phase names
PALETTE = ["#3b6fb6", "#2a9d5c", "#d1495b", "#edae49", "#7b5ea7", "#00798c", "#8c564b"]
MARKER_COLOURS = {"worker died": "#d1495b", "worker paused": "#edae49",
                  "worker resumed": "#2a9d5c", "worker left": "#999999"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round steps from 0 to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    step = next((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), raw)
    if raw < 1:
        step = next(s for s in (0.1, 0.2, 0.25, 0.5, 1.0) if s >= raw)
    ticks, value = [], 0.0
    while value < top + step:
        ticks.append(round(value, 3))
        value += step
    return ticks


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class _Frame:
    """An x (seconds) by y plot area with its axes."""

    def __init__(self, x_max: float, y_max: float, integer_y: bool = True, left: int = LEFT):
        self.left = left
        self.x_ticks = _ticks(x_max)
        self.y_ticks = _ticks(y_max, 4)
        if integer_y:
            self.y_ticks = sorted({int(round(t)) for t in self.y_ticks}) or [0, 1]
            if len(self.y_ticks) < 2:
                self.y_ticks = [0, 1]
        self.x_top = self.x_ticks[-1] or 1.0
        self.y_top = self.y_ticks[-1] or 1.0

    def x(self, t: float) -> float:
        return self.left + (WIDTH - self.left - RIGHT) * t / self.x_top

    def y(self, v: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * v / self.y_top

    def axes(self, y_label: str) -> str:
        parts = []
        for t in self.x_ticks:
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" class="grid"/>'
                         f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
        for v in self.y_ticks:
            y = self.y(v)
            parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" class="grid"/>'
                         f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
        parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 2}" text-anchor="end">seconds since the run started</text>'
                     f'<text x="12" y="{TOP + 4}" transform="rotate(90 12 {TOP + 4})">{_e(y_label)}</text>')
        return "".join(parts)


def _svg(body: str, label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(label)}" '
            f'xmlns="http://www.w3.org/2000/svg">{body}</svg>')


def phase_chart(phases: dict[str, dict[str, float]]) -> str:
    """One bar per phase, placed at its start: a Gantt chart of the run."""
    rows = list(phases.items())
    height = TOP + BOTTOM + 24 * len(rows)
    end = max((p["start_s"] + p["seconds"] for _, p in rows), default=1.0)
    frame = _Frame(end, 1, left=PHASE_LEFT)
    parts = []
    for t in frame.x_ticks:
        x = frame.x(t)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{height - BOTTOM}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for i, (name, p) in enumerate(rows):
        y = TOP + 24 * i
        x0, x1 = frame.x(p["start_s"]), frame.x(p["start_s"] + p["seconds"])
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="{PHASE_LEFT - 6}" y="{y + 15}" text-anchor="end" class="phase-name">{_e(name.replace("_", " "))}</text>'
                     f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1.5):.1f}" height="16" fill="{colour}">'
                     f'<title>{_e(name)}: {p["seconds"]:.3f} s from {p["start_s"]:.3f} s</title></rect>'
                     + _bar_label(x0, x1, y + 15, f'{p["seconds"]:.2f} s'))
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{height - 2}" text-anchor="end">seconds since the run started</text>')
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="phase timeline" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _bar_label(x0: float, x1: float, y: float, text: str) -> str:
    """After the bar, or before it when the bar reaches the right edge."""
    if x1 + 50 < WIDTH:
        return f'<text x="{max(x1, x0 + 1.5) + 4:.1f}" y="{y}">{_e(text)}</text>'
    return f'<text x="{x0 - 4:.1f}" y="{y}" text-anchor="end">{_e(text)}</text>'


def step_chart(series: dict[str, list[tuple[float, float]]], *, end: float, y_label: str,
               markers: Iterable[tuple[float, str, str]] = (), label: str = "") -> str:
    """Lines that hold their value until the next point (counts over time), with
    vertical marks for single moments (a worker died, paused, resumed)."""
    markers = list(markers)
    x_max = max([end] + [t for pts in series.values() for t, _ in pts] + [m[0] for m in markers])
    y_max = max([1] + [v for pts in series.values() for _, v in pts])
    frame = _Frame(x_max, y_max)
    parts = [frame.axes(y_label)]
    legend = []
    for i, (name, points) in enumerate(series.items()):
        if not points:
            continue
        colour = PALETTE[i % len(PALETTE)]
        path = _step_path(frame, points, x_max)
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2">'
                     f"<title>{_e(name)}</title></path>")
        legend.append((name, colour))
    for t, what, worker in markers:
        colour = MARKER_COLOURS.get(what)
        if colour is None:
            continue
        x = frame.x(t)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" '
                     f'stroke="{colour}" stroke-width="2" stroke-dasharray="4 3" class="marker">'
                     f"<title>{_e(what)}: {_e(worker)} at {t:.2f} s</title></line>")
        legend.append((what, colour))
    seen: dict[str, str] = {}
    for name, colour in legend:
        seen.setdefault(name, colour)
    for i, (name, colour) in enumerate(seen.items()):
        x = LEFT + 10 + 150 * i
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="13">{_e(name)}</text>')
    return _svg("".join(parts), label or y_label)


def _step_path(frame: _Frame, points: list[tuple[float, float]], x_end: float) -> str:
    t, v = points[0]
    d = [f"M{frame.x(t):.1f},{frame.y(v):.1f}"]
    for t, v in points[1:]:
        d.append(f"H{frame.x(t):.1f}V{frame.y(v):.1f}")
    d.append(f"H{frame.x(x_end):.1f}")
    return "".join(d)
