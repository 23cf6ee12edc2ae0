"""Accuracy-privacy frontiers (`splitshield frontier GRID`): per defense, its strength knob alone against the knob
with CEM (or any later arm), compared at matched accuracy, as report sections built from stored results.

A frontier grid (spec.FrontierConfig) is a sweep grid whose sweeps are each one defense's knob. A point is one knob
setting in one arm at one seed: (test accuracy %, worst-case MSE over the grid's attacks, ``RunResult.worst_mse``);
a run where no attack counts, or one has not run yet, is no point. Both coordinates are maximised. The rules:

- **Pareto front** of an arm at a seed: its points that no other of its points beats (>= on both coordinates, > on
  one), in order of accuracy; along it the MSE falls as the accuracy rises. A dominated point is not on it.
- **Matched accuracy**: the knob-only front's MSE at an accuracy is linear between its two neighbouring front
  points; below its least or above its most accurate point it is "outside the front" (no value, no extrapolation).
- **A +CEM point's ratio**, paired over seeds: on each seed where the point is inside that seed's knob-only front,
  its MSE over the front's MSE at its accuracy; the point's ratio is that of the means over those seeds (as the
  tables' ``paired_change``), seed by seed in brackets. A point inside at no seed is "outside the front".
- **Verdict** per defense and arm, from its inside points' ratios: "dominates" when every one is >= 1 + margin
  (margin 0.10: +10%), "matches" when the lowest is within +-margin (>= 1 - margin), "below" otherwise; "no point
  inside" when no point is inside the front.
- **Area** (the issue's hypervolume): the integral over accuracy of each front (linear between its points, as
  above) over the accuracy range both fronts cover, per seed; the ratio of the mean areas over the seeds where that
  range is not empty, seed by seed in brackets. The bar a defense meets: "dominates" and an area ratio >= 1 + margin.

The figure per defense draws the points' means over seeds with their spread (sample standard deviations) as error
bars, and each arm's front through its mean points; the tables use the per-seed fronts.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from splitshield.experiments.columns import by_attack
from splitshield.experiments.grid import StoredGrid
from splitshield.experiments.results import RunResult
from splitshield.experiments.sections import Section, SimpleTable
from splitshield.experiments.spec import shown
from splitshield.experiments.sweep import STYLES, pyplot, save_figure


@dataclass(frozen=True)
class Point:
    accuracy: float  # test accuracy, %
    mse: float  # worst-case MSE
    value: Any = None  # the knob setting


def _beats(q: Point, p: Point) -> bool:
    return q.accuracy >= p.accuracy and q.mse >= p.mse and (q.accuracy > p.accuracy or q.mse > p.mse)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats, by accuracy (points at the same coordinates count once)."""
    front: dict[tuple[float, float], Point] = {}
    for p in points:
        if not any(_beats(q, p) for q in points):
            front.setdefault((p.accuracy, p.mse), p)
    return sorted(front.values(), key=lambda p: p.accuracy)


def front_mse(front: Sequence[Point], accuracy: float) -> Optional[float]:
    """The front's MSE at ``accuracy``, linear between neighbouring front points; None outside its range."""
    if not front or not front[0].accuracy <= accuracy <= front[-1].accuracy:
        return None
    for a, b in zip(front, front[1:]):
        if a.accuracy <= accuracy <= b.accuracy:
            return a.mse + (accuracy - a.accuracy) / (b.accuracy - a.accuracy) * (b.mse - a.mse)
    return front[0].mse  # a front of one point, at its own accuracy


def common_range(a: Sequence[Point], b: Sequence[Point]) -> Optional[tuple[float, float]]:
    """The accuracy range both fronts cover, or None when it is empty (or a single accuracy)."""
    if not a or not b:
        return None
    lo, hi = max(a[0].accuracy, b[0].accuracy), min(a[-1].accuracy, b[-1].accuracy)
    return (lo, hi) if lo < hi else None


def area(front: Sequence[Point], lo: float, hi: float) -> float:
    """The integral of ``front_mse`` from ``lo`` to ``hi`` (within the front's range): trapezoids between the
    front's points, exact for a piecewise-linear front."""
    xs = [lo] + [p.accuracy for p in front if lo < p.accuracy < hi] + [hi]
    ys = [front_mse(front, x) for x in xs]
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))  # type: ignore[operator]


def verdict(ratios: Sequence[float], margin: float) -> str:
    """"dominates" (every ratio >= 1 + margin), "matches" (the lowest >= 1 - margin), "below", or "no point inside"."""
    if not ratios:
        return "no point inside"
    lowest = min(ratios)
    return "dominates" if lowest >= 1 + margin else "matches" if lowest >= 1 - margin else "below"


@dataclass
class Observed:
    """One knob setting of one arm over seeds: per counting seed its accuracy, worst-case MSE and attack."""

    value: Any
    by_seed: dict[int, tuple[float, float, str]] = field(default_factory=dict)
    seeds: int = 0  # seeds run (finished training)

    def point(self, seed: int) -> Point:
        acc, mse, _ = self.by_seed[seed]
        return Point(acc, mse, self.value)


def observe(results: Sequence[RunResult], group: str, arm: str, values: Sequence[Any], protocol: str,
            attacks: Sequence[str]) -> list[Observed]:
    """The settings of one defense (sweep ``group``) in one arm, in sweep order."""
    out = [Observed(v) for v in values]
    for r in results:
        task = r.task
        if task is None or task.group != group or task.arm != arm or not r.ok or task.value not in values:
            continue
        obs = out[list(values).index(task.value)]
        obs.seeds += 1
        worst = r.worst_mse(protocol, attacks)
        if worst is not None:
            obs.by_seed[task.seed] = (float(r.accuracy), worst.mse, worst.attack)  # type: ignore[arg-type]
    return out


def fronts(observed: Sequence[Observed]) -> dict[int, list[Point]]:
    """Per seed, the Pareto front of the arm's points at that seed."""
    seeds = sorted({s for obs in observed for s in obs.by_seed})
    return {s: pareto_front([o.point(s) for o in observed if s in o.by_seed]) for s in seeds}


def matched(obs: Observed, knob_fronts: dict[int, list[Point]]) -> dict[int, tuple[float, float]]:
    """Per seed where the point is inside that seed's knob-only front: (its MSE, the front's MSE there)."""
    out = {}
    for seed, (acc, mse, _) in sorted(obs.by_seed.items()):
        at = front_mse(knob_fronts.get(seed, []), acc)
        if at is not None:
            out[seed] = (mse, at)
    return out


def paired_ratio(pairs: dict[int, tuple[float, float]]) -> Optional[float]:
    """The ratio of the means over the seeds of ``pairs`` ((arm value, knob-only value) per seed)."""
    if not pairs:
        return None
    return statistics.fmean(a for a, _ in pairs.values()) / statistics.fmean(b for _, b in pairs.values())


def areas(knob: dict[int, list[Point]], other: dict[int, list[Point]]) -> dict[int, tuple[float, float]]:
    """Per seed with a common accuracy range: (the arm's area, the knob-only front's area) over it."""
    out = {}
    for seed in sorted(set(knob) & set(other)):
        span = common_range(knob[seed], other[seed])
        if span is not None:
            out[seed] = (area(other[seed], *span), area(knob[seed], *span))
    return out


def _spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "n/a"
    text = format(statistics.fmean(values), fmt)
    return text + (" ± " + format(statistics.stdev(values), fmt) if len(values) > 1 else "")


def _ratio(pairs: dict[int, tuple[float, float]], seeds: int) -> str:
    value = paired_ratio(pairs)
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if len(pairs) > 1:
        text += " (" + ", ".join(f"{a / b:.3f}" for a, b in pairs.values()) + ")"
    return text + (f" [{len(pairs)} of {seeds} seeds]" if len(pairs) < seeds else "")


def _label(arm: str) -> str:
    return arm or "knob only"


def frontier_figure(title: str, arms: Sequence[str], observed: Sequence[Sequence[Observed]], out: str) -> str:
    """Accuracy (y) against worst-case MSE (x): per arm the mean points with their spread, and their front."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for arm, obs, style in zip(arms, observed, STYLES * 4):
        pts = [o for o in obs if o.by_seed]
        if not pts:
            continue
        accs = [[a for a, _, _ in o.by_seed.values()] for o in pts]
        mses = [[m for _, m, _ in o.by_seed.values()] for o in pts]
        means = [Point(statistics.fmean(a), statistics.fmean(m), o.value) for a, m, o in zip(accs, mses, pts)]
        sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in mses], [statistics.stdev(v) if len(v) > 1 else 0.0
                                                                         for v in accs]
        bars = ax.errorbar([p.mse for p in means], [p.accuracy for p in means], xerr=sd[0], yerr=sd[1],
                           fmt=style[0], capsize=2, label=_label(arm))
        front = pareto_front(means)
        ax.plot([p.mse for p in front], [p.accuracy for p in front], style[1:] or "-", color=bars[0].get_color())
        for p in means:
            ax.annotate(shown(p.value), (p.mse, p.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("worst-case MSE  \u2192 more private")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    return save_figure(plt, fig, ax, out)


def _point_rows(label: str, arm: str, observed: Sequence[Observed]) -> list[list[str]]:
    """The points table's rows of one defense in one arm: spread over seeds, the attack behind the worst case, and
    the seeds at which the point is on its arm's front."""
    on, rows = fronts(observed), []
    for o in observed:
        seeds = sorted(o.by_seed)
        rows.append([label, _label(arm), shown(o.value), _spread([o.by_seed[s][0] for s in seeds], ".2f"),
                     _spread([o.by_seed[s][1] for s in seeds], ".4f"),
                     by_attack([o.by_seed[s][2] for s in seeds]) if seeds else "n/a",
                     f"{len(seeds)} of {o.seeds}" if o.seeds else "not run yet",
                     ", ".join(f"s{s}" for s in seeds if o.point(s) in on[s]) or "-"])
    return rows


def _compare(label: str, key: str, arm: str, observed: Sequence[Observed], knob: dict[int, list[Point]],
             margin: float) -> tuple[list[str], list[list[str]], bool]:
    """One later arm of one defense against its knob-only fronts: (summary row, matched-accuracy rows, bar met)."""
    ratios: list[float] = []
    rows = []
    for o in observed:
        if not o.by_seed:
            continue
        pairs = matched(o, knob)
        point_ratio = paired_ratio(pairs)
        if point_ratio is not None:
            ratios.append(point_ratio)
        seeds = sorted(o.by_seed)
        rows.append([label, arm, shown(o.value), _spread([o.by_seed[s][0] for s in seeds], ".2f"),
                     _spread([o.by_seed[s][1] for s in seeds], ".4f"),
                     f"{statistics.fmean(b for _, b in pairs.values()):.4f}" if pairs else "outside the front",
                     _ratio(pairs, len(seeds))])
    mine = fronts(observed)
    spans = areas(knob, mine)
    ratio, judged = paired_ratio(spans), verdict(ratios, margin)
    bar = judged == "dominates" and ratio is not None and ratio >= 1 + margin
    summary = [label, key, arm, f"{len(ratios)} of {len(rows)}", f"{min(ratios):.3f}" if ratios else "n/a",
               judged, _spread([b for _, b in spans.values()], ".4f"), _spread([a for a, _ in spans.values()], ".4f"),
               _ratio(spans, len(set(knob) | set(mine))), "yes" if bar else "no"]
    return summary, rows, bar


def frontier_sections(stored: StoredGrid, figures_dir: str) -> list[Section]:
    """The report sections of a frontier folder, one set per protocol (figures written into ``figures_dir``)."""
    grid, results = stored.grid, stored.results
    arms = [a["label"] for a in grid.get("arms", [{"label": ""}])]
    margin, attacks = float(grid.get("margin", 0.10)), list(grid["attacks"])
    os.makedirs(figures_dir, exist_ok=True)
    sections = []
    for protocol in grid["protocols"]:
        summary, matches, points, images, met = [], [], [], [], []
        for i, sweep in enumerate(grid["sweeps"]):
            label, values = sweep["label"], sweep["values"]
            mine = [a for a in arms if sweep.get("arms") is None or a in sweep["arms"]]
            observed = [observe(results, label, a, values, protocol, attacks) for a in mine]
            for arm, obs in zip(mine, observed):
                points += _point_rows(label, arm, obs)
            for arm, obs in zip(mine[1:], observed[1:]):
                row, rows, bar = _compare(label, sweep["key"], arm, obs, fronts(observed[0]), margin)
                summary.append(row)
                matches += rows
                met += [f"{label}{arm}"] if bar else []
            out = os.path.join(figures_dir, f"frontier-{i}-{protocol}.png")
            frontier_figure(f"{label} ({sweep['key']}), {protocol} protocol", mine, observed, out)
            images.append((f"{label}: {sweep['key']} in [{', '.join(map(shown, values))}], {protocol} protocol; "
                           "points: means over seeds with ± 1 standard deviation, lines: each arm's Pareto front",
                           out))
        compared = len(summary)
        sections.append(Section(f"Frontier, {protocol} protocol", [
            f"Per defense, its strength knob alone ({_label(arms[0])}) and with {', '.join(arms[1:])}, seeds "
            f"{', '.join(map(str, grid['seeds']))}. A point is a knob setting's test accuracy and its worst-case MSE "
            f"over {', '.join(attacks)} (per run, the lowest MSE among the attacks that count); both are maximised. "
            "Fronts are per seed; each later-arm point is compared with the knob-only front of its own seed at its "
            "accuracy (linear between neighbouring front points), and its ratio is that of the means over the seeds "
            "where it lies inside that front, seed by seed in brackets.",
            f"Verdict: dominates when every inside point's ratio is >= {1 + margin:.2f}, matches when the lowest is "
            f">= {1 - margin:.2f}, below otherwise. Area: the integral of each front over the accuracy range both "
            "cover (MSE x accuracy points), per seed; its ratio is that of the mean areas. The bar: dominates and "
            f"an area ratio >= {1 + margin:.2f}, met by {len(met)} of {compared}"
            + (f" ({', '.join(met)})." if met else ".")],
            [SimpleTable(["defense", "knob", "arm", "points inside", "lowest ratio", "verdict", "area knob only",
                          "area arm", "area ratio", "bar"], summary)], images))
        sections.append(Section(f"MSE at matched accuracy, {protocol} protocol", [
            "Each later-arm point: its accuracy and worst-case MSE (mean ± sample standard deviation over the seeds "
            "where it counts), the knob-only front's MSE at its accuracy (mean over the seeds where it is inside), "
            "and the ratio; [k of n seeds] when it is inside at some seeds only."],
            [SimpleTable(["defense", "arm", "value", "acc. (%)", "worst MSE", "knob-only front there", "ratio"],
                         matches)]))
        sections.append(Section(f"Frontier points, {protocol} protocol", [
            "Every point: accuracy and worst-case MSE over the seeds where an attack counts, the attack that scored "
            "the worst case (seeds each when they differ), and the seeds at which it is on its arm's front."],
            [SimpleTable(["defense", "arm", "value", "acc. (%)", "worst MSE", "by", "seeds counted", "on the front"],
                         points)]))
    return sections
