"""A bar chart drawn on the server as SVG, so a page shows it without JavaScript.

    bar_chart([("2026-12-01", 120), ("2026-12-02", 0)], label="Tokens per day")

returns the `<svg>` as Markup: every piece of text in it (labels, the title) is escaped
as it is put in, and the numbers are formatted by this module, so a page includes it with
`{{ chart }}` and never needs `|safe`. The look comes from console.css (`.chart .bar`,
`.chart .axis`, `.chart text`); each bar has a `<title>` (its tooltip) with its value.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 600  # the drawing's own units; it scales to its box (viewBox, width 100%)
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 14, 30  # room for the value and day labels
MAX_BAR = 40  # a bar's widest: two days are two bars, not two walls
MAX_LABELS = 7  # day labels under the bars: at most this many, evenly spread


def compact(value: float) -> str:
    """A number short enough for an axis: 950, 12.5k, 3.2M."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:g}"


def bar_chart(bars: Sequence[tuple[str, int]], *, label: str, unit: str = "") -> Markup:
    """An SVG bar chart of `bars` (each a label and a value >= 0), left to right.

    `label` names the chart for screen readers; `unit` follows each value in the tooltips
    ("tokens"). The tallest bar fills the height; the axis shows 0 and the top value."""
    top = max((value for _, value in bars), default=0)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(bars), 1)
    width = max(min(slot * 0.8, MAX_BAR), 1.0)
    every = max(1, -(-len(bars) // MAX_LABELS))  # ceiling: show every n-th day's label
    base = TOP + inner_h
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}"/>',
        f'<text x="{LEFT - 6}" y="{base}" text-anchor="end">0</text>',
        f'<text x="{LEFT - 6}" y="{TOP + 8}" text-anchor="end">{escape(compact(top))}</text>',
    ]
    for index, (name, value) in enumerate(bars):
        height = inner_h * value / top if top else 0.0
        middle = LEFT + (index + 0.5) * slot
        tip = f"{name}: {value:,}" + (f" {unit}" if unit else "")
        parts.append(
            f'<rect class="bar" x="{middle - width / 2:.1f}" y="{base - height:.1f}" '
            f'width="{width:.1f}" height="{height:.1f}"><title>{escape(tip)}</title></rect>')
        if index % every == 0:
            parts.append(f'<text x="{middle:.1f}" y="{HEIGHT - 10}" '
                         f'text-anchor="middle">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # each part above is escaped, or a number formatted here
