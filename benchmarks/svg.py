"""Two small chart kinds written straight to SVG (no plotting library to install): lines over a
(log) x axis, and grouped bars. Enough for RESULTS.md; every chart is plain text in git."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 50


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}" if abs(v) >= 1 else f"{v:.2g}"


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-12)))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


class _Axis:
    def __init__(self, lo: float, hi: float, log: bool, a: float, b: float):
        self.log, self.a, self.b = log, a, b
        ticks = _ticks(lo, hi, log)
        self.lo, self.hi = (min(ticks[0], lo), max(ticks[-1], hi))
        self.ticks = [t for t in ticks if self.lo <= t <= self.hi]

    def __call__(self, v: float) -> float:
        f = (lambda x: math.log10(x)) if self.log else (lambda x: x)
        return self.a + (f(v) - f(self.lo)) / (f(self.hi) - f(self.lo)) * (self.b - self.a)


def _frame(title: str, xlabel: str, ylabel: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<text x="{LEFT + (W - LEFT - RIGHT) / 2}" y="{H - 10}" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text x="16" y="{TOP + (H - TOP - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + (H - TOP - BOTTOM) / 2})">{escape(ylabel)}</text>',
    ]


def _legend(names: Sequence[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 10 + 18 * i
        out.append(f'<rect x="{W - RIGHT + 12}" y="{y - 9}" width="12" height="10" fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{W - RIGHT + 30}" y="{y}">{escape(name)}</text>')
    return out


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
               logx: bool = True, logy: bool = True) -> str:
    """Points joined by lines, one colour per series."""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts if y > 0 or not logy]
    fx = _Axis(min(xs), max(xs), logx, LEFT, W - RIGHT)
    fy = _Axis(min(ys), max(ys), logy, H - BOTTOM, TOP)
    out = _frame(title, xlabel, ylabel)
    for t in fx.ticks:
        out.append(f'<line x1="{fx(t):.1f}" y1="{TOP}" x2="{fx(t):.1f}" y2="{H - BOTTOM}" stroke="#ddd"/>')
        out.append(f'<text x="{fx(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in fy.ticks:
        out.append(f'<line x1="{LEFT}" y1="{fy(t):.1f}" x2="{W - RIGHT}" y2="{fy(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{fy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for i, pts in enumerate(series.values()):
        c = COLORS[i % len(COLORS)]
        pts = [(x, y) for x, y in pts if y > 0 or not logy]
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{c}"/>' for x, y in pts]
    out += _legend(list(series))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def bar_chart(groups: dict[str, dict[str, float]], *, title: str, ylabel: str, ref: float | None = None,
              ref_label: str = "", errors: dict[str, dict[str, tuple[float, float]]] | None = None) -> str:
    """Bars grouped by category (`groups[category][series] = value`), an optional reference line
    and optional (low, high) whiskers per bar."""
    names = list(dict.fromkeys(s for g in groups.values() for s in g))
    vals = [v for g in groups.values() for v in g.values()]
    highs = [hi for g in (errors or {}).values() for _, hi in g.values()]
    lows = [lo for g in (errors or {}).values() for lo, _ in g.values()]
    top = max([*vals, *highs, ref or 0.0, 0.0])
    bottom = min([*vals, *lows, ref or 0.0, 0.0])
    pad = 0.05 * (top - bottom or 1.0)
    fy = _Axis(bottom - (pad if bottom < 0 else 0.0), top + pad, False, H - BOTTOM, TOP)
    out = _frame(title, "", ylabel)
    for t in fy.ticks:
        out.append(f'<line x1="{LEFT}" y1="{fy(t):.1f}" x2="{W - RIGHT}" y2="{fy(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{fy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    span = (W - LEFT - RIGHT) / max(len(groups), 1)
    bw = span * 0.8 / max(len(names), 1)
    for gi, (cat, g) in enumerate(groups.items()):
        x0 = LEFT + gi * span + span * 0.1
        for si, name in enumerate(names):
            if name not in g:
                continue
            x, y = x0 + si * bw, min(fy(g[name]), fy(0))
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw * 0.92:.1f}" height="{abs(fy(0) - fy(g[name])):.1f}" '
                       f'fill="{COLORS[si % len(COLORS)]}"/>')
            if errors and cat in errors and name in errors[cat]:
                lo, hi = errors[cat][name]
                cx = x + bw * 0.46
                out.append(f'<line x1="{cx:.1f}" y1="{fy(lo):.1f}" x2="{cx:.1f}" y2="{fy(hi):.1f}" stroke="black"/>')
        out.append(f'<text x="{LEFT + gi * span + span / 2:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" '
                   f'font-size="11">{escape(cat)}</text>')
    out.append(f'<line x1="{LEFT}" y1="{fy(0):.1f}" x2="{W - RIGHT}" y2="{fy(0):.1f}" stroke="#888"/>')
    if ref is not None:
        out.append(f'<line x1="{LEFT}" y1="{fy(ref):.1f}" x2="{W - RIGHT}" y2="{fy(ref):.1f}" stroke="black" '
                   'stroke-dasharray="5,4"/>')
        out.append(f'<text x="{W - RIGHT + 12}" y="{fy(ref) + 4:.1f}">{escape(ref_label)}</text>')
    out += _legend(names)
    out.append("</svg>")
    return "\n".join(out) + "\n"
