"""The Pareto plot of a report (and of `compress search`): metric vs latency, one colour and marker per run, each
run's frontier drawn, every point labelled where its label covers nothing else.

`pareto_front` is the maths (which points no other beats on both axes); `pareto_plot` draws `RunTable` rows
(`compress.report`) with matplotlib; `_spread_labels` places the labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from compress.report import RunTable


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency x, higher metric y), by latency; exact
    ties (same latency and metric) do not beat each other: all are on it."""
    # a nan (a constant prediction's correlation) is never on it, and left in the sort it scrambled the order of the
    # points of its latency: a point beaten at that latency by a higher one could be put on the front before it
    order = sorted((i for i in range(len(points)) if math.isfinite(points[i][0]) and math.isfinite(points[i][1])),
                   key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best or (front and tuple(points[i]) == tuple(points[front[-1]])):
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(tables: Sequence[RunTable], path: Path, threads: Optional[int] = None,
                budget_ms: Optional[float] = None, best: Optional[str] = None) -> Optional[Path]:
    """PNG: metric vs p50 latency (log x) at ``threads`` (default: each run's headline), one colour and marker per
    run, its frontier drawn as a step line, every point labelled (no label over another or the legend, nor over a
    point where there is room; one moved away from its point is joined to it by a thin line); ``budget_ms``: a dashed
    vertical line there; ``best``: the row of that name starred and named in the legend (the search's pick). None
    when no row has both numbers.
    Names are drawn as written: a ``$`` in a run or student name is no maths formula (one was a parse traceback)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False}):
        return _pareto_plot(plt, tables, path, threads, budget_ms, best)


MARKER_SIZE = 7  # points


def _pareto_plot(plt, tables, path, threads, budget_ms, best) -> Optional[Path]:
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    markers = "os^Dvp*"
    drawn = 0
    metric_names = set()
    labels = []
    points = []  # (x, y, metric std, marker radius in points): what a label must not cover
    starred = None
    for k, table in enumerate(tables):
        t = threads or table.headline_threads
        rows = [r for r in table.rows if r.metric is not None and math.isfinite(r.metric) and t in r.latency
                and r.latency[t].p50_ms > 0]  # the x axis is logarithmic
        if not rows:
            continue
        metric_names.add(table.metric_name)
        color = f"C{k % 10}"
        xs = [r.latency[t].p50_ms for r in rows]
        ys = [r.metric for r in rows]
        errs = [r.metric_std or 0.0 for r in rows]
        seeds = max(r.seeds for r in rows)  # several seeds merged: the bars are the metric's std over them
        bars = f", bars: ± std over {seeds} seeds" if any(errs) else ""
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, fmt=markers[k % len(markers)], color=color,
                    ms=MARKER_SIZE,
                    # a label starting with "_" is one matplotlib leaves out of the legend: a zero-width space first
                    capsize=3, label=f"{chr(0x200b) if table.run.startswith('_') else ''}{table.run} "
                                     f"({t} thread{'s' if t != 1 else ''}{bars})", zorder=3)
        front = pareto_front(list(zip(xs, ys)))
        fx, fy = [xs[i] for i in front] + [max(xs)], [ys[i] for i in front] + [ys[front[-1]]]
        ax.step(fx, fy, where="post", color=color, alpha=0.6, lw=1.5, zorder=2)  # best metric at <= x ms
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=160, facecolors="none", edgecolors=color,
                   lw=1.2, zorder=4)
        for i, (r, x, y) in enumerate(zip(rows, xs, ys)):
            name = f"{r.name} · torch" if r.fmt == "torch" and "·" not in r.name else r.name
            labels.append(ax.annotate(name, (x, y), textcoords="offset points", xytext=(9, 5), fontsize=7.5,
                                      color=color, fontweight="bold" if r.name == best else "normal",
                                      arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "alpha": 0.7,
                                                  "shrinkA": 1, "shrinkB": 5}))
            points.append((x, y, errs[i], 6.3 if i in front else 3.5))
            if r.name == best and starred is None:
                starred = (x, y, name)
        drawn += len(rows)
    if not drawn:
        plt.close(fig)
        return None
    if budget_ms is not None:
        ax.axvline(budget_ms, color="0.35", ls="--", lw=1.2, zorder=1)
        ax.annotate(f"budget {budget_ms:g} ms", (budget_ms, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=8, color="0.25")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    units = {t.unit for t in tables}
    ax.set_xlabel(f"p50 latency per {units.pop() if len(units) == 1 else 'input (sentence or pair)'}, batch 1 "
                  f"(ms, log scale)")
    ax.set_ylabel(" / ".join(sorted(metric_names)) + " (dev)")
    ax.set_title(f"{' / '.join(sorted(metric_names))} vs latency; circled and joined: each run's Pareto frontier")
    ax.grid(True, which="both", alpha=0.3)
    if starred is not None:
        ax.scatter([starred[0]], [starred[1]], marker="*", s=260, color="gold", edgecolors="black", lw=0.8, zorder=5,
                   label=f"best: {starred[2]}")
        points.append((starred[0], starred[1], 0.0, 9.0))
    ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.15, y=0.08)
    fig.tight_layout()
    _spread_labels(fig, ax, _merge_coincident(fig, ax, labels, MARKER_SIZE), points)
    from compress.manifest import write_atomic

    path = Path(path)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def _merge_coincident(fig, ax, labels: list, size: float) -> list:
    """The labels of one run's points whose markers overlap (centres less than a marker's width, ``size`` points,
    apart) made one, a name a line, at the first of them: two labels beside one blot (an int8 model and the Optimum
    peer of the same latency) each read as the circled one's. Returns the labels kept."""
    fig.canvas.draw()  # the axis limits are settled at draw time
    width = size * fig.dpi / 72.0
    kept = []
    for label in labels:
        here = ax.transData.transform(label.xy)
        near = next((k for k in kept if k.get_color() == label.get_color()
                     and math.dist(ax.transData.transform(k.xy), here) < width), None)
        if near is None:
            kept.append(label)
        else:
            near.set_text(f"{near.get_text()}\n{label.get_text()}")
            if label.get_fontweight() == "bold":  # the search's pick stays bold
                near.set_fontweight("bold")
            label.remove()
    return kept


LABEL_OFFSETS = sorted(((dx, dy) for dx in (9, -9, 26, -26, 48, -48)
                        for dy in (5, -12, 16, -23, 27, -34, 38, -45, 49, -56, 60, -67, 71, -78, 82, -89)),
                       key=lambda o: (abs(o[0]) > 9, abs(o[1] + 3.5) + abs(o[0]) / 2, o[0] < 0))
"""Where a point's label may go (offset points from the point), nearest first: beside it, then above or below."""


def _spread_labels(fig, ax, labels, points=()) -> list:
    """Place each point label (left to right) at the first offset of `LABEL_OFFSETS` where it stays inside the axes
    and covers no label placed before, no point of ``points`` ((x, y, metric std, marker radius in points): the
    marker and its error bar) and not the legend; where none is free, where it covers least; among those, one whose
    line runs over no other marker. A label that ends up away from its point is joined to it by that thin line.
    Returns the labels' boxes (display units, padded)."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # the axis limits and the legend's place ("best") are settled at draw time
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pt = fig.dpi / 72.0
    blocked = []
    for x, y, err, radius in points:
        (px, lo), (_, hi) = ax.transData.transform([(x, y - err), (x, y + err)])
        r = radius * pt
        blocked.append(Bbox([[px - r, min(lo, hi) - r], [px + r, max(lo, hi) + r]]))
    legend = ax.get_legend()
    if legend is not None:
        blocked.append(legend.get_window_extent(renderer))

    def area(a, b) -> float:
        w, h = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def box_at(label, dx, dy):
        label.set_position((dx, dy))
        label.set_horizontalalignment("left" if dx > 0 else "right")
        label.set_verticalalignment("baseline")
        label.update_positions(renderer)
        return Text.get_window_extent(label, renderer).padded(3)  # labels that touch read as one

    def crossed(own, box, markers) -> int:
        """How many markers other than its own the line from the point ``own`` (display) to its label's ``box``
        passes over (the leader drawn when the label left the point's side read as joining another point). The line
        aims at the box's centre (matplotlib's) and ends at its edge."""
        line = [(own[0] + (box.x0 + box.x1 - 2 * own[0]) * k / 48, own[1] + (box.y0 + box.y1 - 2 * own[1]) * k / 48)
                for k in range(1, 24)]
        line = [(x, y) for x, y in line if not box.contains(x, y)]
        return sum(any(m.contains(x, y) for x, y in line) for m in markers if not m.contains(*own))

    markers = blocked[:len(points)]
    placed = []
    for label in sorted(labels, key=lambda a: a.xy[0]):
        best = None
        own = ax.transData.transform(label.xy)
        for dx, dy in LABEL_OFFSETS:
            box = box_at(label, dx, dy)
            outside = box.width * box.height - area(box, frame)
            cover = sum(area(box, other) for other in placed + blocked) + 10 * outside
            if best is not None and cover > best[0]:
                continue
            # then, among places that cover as little, one whose leader line (drawn when the label leaves the point's
            # side) runs over no other marker: one that did read as the label of the point it crossed
            lines = crossed(own, box, markers) if abs(dy) > 12 or abs(dx) > 9 else 0
            if best is None or (cover, lines) < best[:2]:
                best = (cover, lines, dx, dy)
            if cover == 0 and lines == 0:
                break
        dx, dy = best[2:]
        placed.append(box_at(label, dx, dy))
        if label.arrow_patch is not None:  # the line only when the label left the point's side
            label.arrow_patch.set_visible(abs(dy) > 12 or abs(dx) > 9)
    return placed
