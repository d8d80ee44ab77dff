"""Charts drawn on the server as SVG: no script, nothing loaded from anywhere.

Every text in a chart (a skill's or an agent's name, a label) goes through
``markupsafe.escape``, so the markup returned is safe to put in a page as is.
Colours are presentation attributes, not ``style``, so the console's
Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

from collections.abc import Callable

from markupsafe import Markup, escape

# Distinguishable on white and for the common colour blindnesses (Okabe-Ito), then greys.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER = "#999999"
MOST_SERIES = len(PALETTE)


def nice_top(value: int) -> int:
    """A round number at or above ``value`` for the axis's top (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for mark in (1, 2, 5):
            if mark * step >= value:
                return mark * step
        step *= 10


def axis_amount(micros: int) -> str:
    """A short amount for the axis (the currency is in the chart's title): 0.0125, 2, 0."""
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")


def stacked_bars(
    title: str,
    labels: list[str],
    series: dict[str, list[int]],
    money: Callable[[int], str],
    width: int = 640,
    height: int = 240,
) -> Markup:
    """Bars over ``labels`` (days), each stacked from ``series`` (name -> one value per label),
    the largest series first and the rest folded into one; a legend with each one's total
    (``money`` formats an amount in full)."""
    ranked = sorted(series.items(), key=lambda item: -sum(item[1]))
    if len(ranked) > MOST_SERIES:
        rest = [sum(values) for values in zip(*(v for _, v in ranked[MOST_SERIES - 1 :]), strict=True)]
        ranked = [*ranked[: MOST_SERIES - 1], ("other", rest)]
    totals = [sum(values[i] for _, values in ranked) for i in range(len(labels))]
    top = nice_top(max(totals, default=0))
    left, right, above, below = 56, 10, 10, 40
    plot_w, plot_h = width - left - right, height - above - below
    slot = plot_w / max(len(labels), 1)
    bar = max(slot * 0.7, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'class="chart" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for tick in range(5):
        value = top * tick // 4
        y = above + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
            f"{escape(axis_amount(value))}</text>"
        )
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        base: float = above + plot_h
        for index, (name, values) in enumerate(ranked):
            if not values[i]:
                continue
            h = plot_h * values[i] / top
            base -= h
            colour = PALETTE[index] if name != "other" else OTHER
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(name)} {escape(label)}: {escape(money(values[i]))}</title></rect>"
            )
        if i % max(1, len(labels) // 7) == 0 or i == len(labels) - 1:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - below + 16}" text-anchor="middle" font-size="11" '
                f'fill="#555">{escape(label[5:])}</text>'
            )
    parts.append("</svg>")
    legend = ['<ul class="legend">']
    for index, (name, values) in enumerate(ranked):
        colour = PALETTE[index] if name != "other" else OTHER
        legend.append(
            f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" fill="{colour}"/></svg> '
            f"{escape(name)}: {escape(money(sum(values)))}</li>"
        )
    if not ranked:
        legend.append("<li>No spend in these days.</li>")
    legend.append("</ul>")
    return Markup("".join(parts + legend))
