"""`splitshield sweep`: the paper's trade-off curves (Fig. 4a-c), the MSE vs conditional-entropy scatter with the
Theorem 1 bound (Fig. 3), the reconstruction figure (Fig. 5) and the efficiency table (Table 9), as report
sections built from a sweep folder's stored results.

With two or more attacks, every curve and point table is drawn for each attack and for the worst case over them
(per run, the lowest MSE among the attacks that count: ``RunResult.worst_mse``, as the tables' worst column).
matplotlib draws the curves (the field's plotting library; Agg backend, no display needed).
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Any, Sequence

from splitshield.experiments.grid import StoredGrid
from splitshield.experiments.results import RunResult, status
from splitshield.experiments.sections import Section, SimpleTable
from splitshield.experiments.spec import shown
from splitshield.experiments.columns import ATTACK_NAMES, WORST, Column, measure_column, measures, value_of
from splitshield.experiments.tables import paired_change


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (shared by the frontier report)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines and in CI
    import matplotlib.pyplot as plt

    return plt


def _points(results: Sequence[RunResult], group: str, arm: str, col: Column) -> list[tuple[Any, float, float]]:
    """(value, mean accuracy %, mean MSE of ``col``) per swept value, over the seeds where it counts, in sweep
    order (a value where the attack did not learn is left out of the curve)."""
    by_value: dict[str, list[tuple[float, float]]] = {}
    order: list[Any] = []
    for r in results:
        mse = value_of(r, col)[0] if r.task.group == group and r.task.arm == arm else None
        if mse is not None:
            key = repr(r.task.value)
            if key not in by_value:
                order.append(r.task.value)
            by_value.setdefault(key, []).append((float(r.accuracy), mse))  # type: ignore[arg-type]
    return [(v, statistics.fmean(a for a, _ in by_value[repr(v)]), statistics.fmean(m for _, m in by_value[repr(v)]))
            for v in order]


STYLES = ("o-", "s--", "^-.", "d:")


def tradeoff_figure(results: Sequence[RunResult], group: str, key: str, attack: str, protocol: str, arms: list[str],
                    out: str, attacks: Sequence[str] = ()) -> str:
    """Accuracy (y) against attack MSE (x), one curve per arm, points labelled by the swept value; ``attack``
    WORST draws the worst case over ``attacks``."""
    col = measure_column(attack, protocol, attacks)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for arm, style in zip(arms, STYLES * 4):
        pts = _points(results, group, arm, col)
        if not pts:
            continue
        ax.plot([p[2] for p in pts], [p[1] for p in pts], style, label=arm or "as given")
        for value, acc, mse in pts:
            ax.annotate(shown(value), (mse, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    what = f"worst-case MSE over {', '.join(attacks)}" if attack == WORST else f"{attack}-attack MSE"
    ax.set_xlabel(f"{what} ({protocol} protocol)  \u2192 more private")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{group} ({key})", fontsize=9)
    return save_figure(plt, fig, ax, out)


def entropy_figure(results: Sequence[RunResult], attack: str, protocol: str, arms: list[str], out: str) -> str | None:
    """Fig. 3: attack MSE against the audit's bound on I(x; z) per input dimension (nats), with Theorem 1's
    expression exp(-2 I/d) / (2 pi e) at the uniform H(x) reference drawn over the same range: a relative curve
    (it ranks runs), not a lower bound. Runs without noise (no finite bound) are left out."""
    pts = [(float(r.audit["mi_bound"]) / float(r.audit["input_dim"]), float(r.mse(attack, protocol)), r.task.arm)
           for r in results if r.ok and r.audit and not r.audit.get("degenerate") and "mi_bound" in r.audit
           and r.mse(attack, protocol) is not None]  # type: ignore[union-attr,arg-type]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for arm, marker in zip(arms, "osd^v" * 4):
        sel = [p for p in pts if p[2] == arm]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, label=arm or "as given")
    lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
    pad = 0.1 * (hi - lo) or 0.5
    xs = [lo - pad + i * (hi - lo + 2 * pad) / 99 for i in range(100)]
    ax.plot(xs, [math.exp(-2 * x) / (2 * math.pi * math.e) for x in xs], "k:",
            label="Theorem 1 at H(x) = 0 (relative, not a bound)")
    ax.set_yscale("log")
    ax.set_xlabel("bound on I(x; z) per input dimension (nats)")
    ax.set_ylabel(f"{attack}-attack MSE ({protocol})")
    return save_figure(plt, fig, ax, out)


def save_figure(plt: Any, fig: Any, ax: Any, out: str) -> str:
    """Grid, legend, tight layout, written to ``out`` and closed; returns ``out``."""
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:  # nothing counts yet (a grid still running, or attacks that did not learn): say so on the figure
        ax.text(0.5, 0.5, "no point counts yet", transform=ax.transAxes, ha="center", va="center", color="gray")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)  # figures are not kept open: a long sweep would otherwise accumulate them
    return out


def _evenly(items: list[RunResult], k: int) -> list[RunResult]:
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def _arms(grid: dict) -> list[str]:
    return [a["label"] for a in grid.get("arms", [{"label": ""}])]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def point_effects(results: Sequence[RunResult], grid: dict, attack: str, protocol: str) -> SimpleTable:
    """Per sweep point: accuracy and attack MSE in each arm (means over the seeds that count) and each later arm's
    change against the first, paired over the seeds that count in both and seed by seed when there are several (as
    the table's per-row comparisons, ``paired_change``): the table behind "at every cut / training size, +CEM keeps
    accuracy and raises the MSE". ``attack`` WORST: the worst case over the grid's attacks."""
    arms = _arms(grid)
    accuracy, attack_col = Column("accuracy", "", ".2f"), measure_column(attack, protocol, grid.get("attacks", []))
    header = ["sweep", "value"] + [f"{h} {a or 'as given'}" for a in arms for h in ("acc.", "MSE")]
    header += [f"{a} vs {arms[0] or 'as given'}" for a in arms[1:]]
    rows = []
    for sweep in grid["sweeps"]:
        for value in sweep["values"]:
            cells, groups = [sweep["label"], shown(value)], []
            for arm in arms:
                members = [r for r in results if r.task.group == sweep["label"] and r.task.arm == arm and
                           r.task.value == value and r.ok]
                groups.append(members)
                acc = _mean([float(r.accuracy) for r in members])  # type: ignore[arg-type]
                got = [value_of(r, attack_col) for r in members]
                mse = _mean([m for m, _ in got if m is not None])
                why = sorted({w or "missing" for m, w in got if m is None})
                cells += ["n/a" if acc is None else f"{acc:.2f}",
                          f"{mse:.4f}" if mse is not None else (" / ".join(why) or "n/a")]
            for members in groups[1:]:
                acc, mse = (paired_change(col, groups[0], members) for col in (accuracy, attack_col))
                cells.append("n/a" if "n/a" in (acc, mse) else f"{acc}, MSE {mse}")
            rows.append(cells)
    return SimpleTable(header, rows)


def sweep_sections(stored: StoredGrid, figures_dir: str) -> list[Section]:
    """The report sections of a sweep folder (figures written into ``figures_dir``)."""
    from splitshield.evaluation.figures import reconstruction_figure

    grid, results = stored.grid, stored.results
    protocol, arms = grid["protocols"][0], _arms(grid)
    os.makedirs(figures_dir, exist_ok=True)
    sections = [Section("Trade-off curves (paper Fig. 4)", [
        "Each point is one setting (mean over seeds "
        f"{', '.join(map(str, grid['seeds']))}); x: attack MSE under the {protocol} protocol, y: test accuracy. "
        "Up and right is better. A point whose attack did not learn (no better than the mean image) is left out."])]
    names = measures(grid["attacks"])  # each attack, then the worst case over them (two or more attacks)
    if WORST in names:
        sections[0].paragraphs.append(f"Worst case: per run, the lowest MSE among {', '.join(grid['attacks'])} that "
                                      "counts there (an attack that did not learn or converge is left out).")
    for i, sweep in enumerate(grid["sweeps"]):
        for name in names:
            out = os.path.join(figures_dir, f"tradeoff-{i}-{name}.png")
            tradeoff_figure(results, sweep["label"], sweep["key"], name, protocol, arms, out, grid["attacks"])
            values = ", ".join(map(shown, sweep["values"]))
            sections[0].images.append((f"{sweep['label']}: {sweep['key']} in [{values}] ({_what(name)})", out))
    for name in names:
        table = point_effects(results, grid, name, protocol)
        sections[0].paragraphs.append(f"Per point, {_what(name)} ({protocol} protocol): accuracy (%) and MSE in "
                                      "each arm (means over the seeds that count), and each arm's change against "
                                      "the first over the seeds that count in both; in brackets, seed by seed in seed "
                                      "order, when several do.")
        sections[0].tables.append(table)
    rows = []
    for r in results:
        audit = r.audit if r.ok and r.audit and not r.audit.get("degenerate") else None
        rows.append([r.task.group, shown(r.task.value), r.task.arm or "-", _pct(r)]
                    + [f"{r.mse(a, protocol):.4f}" if r.mse(a, protocol) is not None else
                       status(r.attack(a, protocol)) for a in grid["attacks"]]
                    + ([_worst_cell(r, protocol, grid["attacks"])] if WORST in names else [])
                    + [f"{audit['mi_bound_bits_per_dim']:.4f}" if audit and "mi_bound" in audit else "n/a",
                       os.path.basename(r.task.run_dir)])
    sections[0].tables.append(SimpleTable(["sweep", "value", "arm", "acc. (%)"]
                                          + [f"{a} MSE {protocol}" for a in grid["attacks"]]
                                          + ([f"worst MSE {protocol}"] if WORST in names else [])
                                          + ["I(x;z) bits/dim <=", "run"], rows))
    attack = grid["attacks"][0]
    scatter = entropy_figure(results, attack, protocol, arms, os.path.join(figures_dir, "entropy-scatter.png"))
    sections.append(Section("Reconstruction MSE vs the bound on I(x; z) (paper Fig. 3)", [
        f"Every run with noise on z: its {attack}-attack MSE against the audit's upper bound on I(x; z) per input "
        "dimension. The dotted line is Theorem 1's expression with the uniform H(x) = 0 reference: it shows the "
        "expected trend and ranks runs, but it is not a lower bound (real images have less entropy than the "
        "uniform density), and attacks can fall below it."]
        if scatter else ["No run has noise on z, so I(x; z) has no finite bound in any of them."],
        images=[("MSE vs bound on I(x; z)", scatter)] if scatter else []))
    sections.append(_reconstructions(grid, results, protocol, arms, figures_dir, reconstruction_figure))
    sections.append(efficiency_section(results))
    return sections


def _what(name: str) -> str:
    return "worst case over the attacks" if name == WORST else f"{name} attack"


def _worst_cell(r: RunResult, protocol: str, attacks: Sequence[str]) -> str:
    worst = r.worst_mse(protocol, attacks)
    if worst is not None:
        return f"{worst.mse:.4f} ({ATTACK_NAMES.get(worst.attack, worst.attack)})"
    return value_of(r, measure_column(WORST, protocol, attacks))[1] or "n/a"


def _pct(r: RunResult) -> str:
    return "n/a" if r.accuracy is None else f"{r.accuracy:.2f}"


def _reconstructions(grid: dict, results: Sequence[RunResult], protocol: str, arms: list[str], figures_dir: str,
                     draw: Any) -> Section:
    first = grid["sweeps"][0]["label"] if grid["sweeps"] else None
    attack = grid["attacks"][0]
    section = Section("Reconstructions (paper Fig. 5)")
    seed = grid["seeds"][0]
    for k, arm in enumerate(arms):
        runs = _evenly([r for r in results if r.ok and r.task.group == first and r.task.arm == arm and
                        r.task.seed == seed and r.attack(attack, protocol) is not None], int(grid["figure_runs"]))
        if not runs:
            continue
        out = os.path.join(figures_dir, f"reconstructions-{k}.png")
        draw([r.task.run_dir for r in runs], [attack], protocol, out,
             labels=[f"{shown(r.task.value)}{arm}" for r in runs])
        section.images.append((f"{attack} attack ({protocol}), {first} {arm or 'as given'}", out))
    if not section.images:
        section.paragraphs.append("No finished run with stored reconstructions yet.")
    return section


def efficiency_section(results: Sequence[RunResult]) -> Section:
    """Table 9: parameters, MACs (torch.utils.flop_counter) and latency of edge and cloud, per distinct model."""
    rows, seen = [], set()
    for r in results:
        if not r.ok or r.task.cfg is None:
            continue
        model = r.task.cfg.model
        key = (model.name, model.cut, model.width, tuple(d.name for d in r.task.cfg.defenses if d.name != "cem"))
        if key in seen:
            continue
        seen.add(key)
        eff = r.efficiency
        rows.append([f"{model.name} cut {model.cut}", "+".join(key[3]) or "none",
                     f"{eff['edge_params']:,}", f"{eff['edge_macs'] / 1e6:.2f}", f"{eff['cloud_params']:,}",
                     f"{eff['cloud_macs'] / 1e6:.2f}", f"{100 * eff['edge_share']:.1f}%",
                     _ms(eff.get("edge_ms")), _ms(eff.get("cloud_ms"))])
    return Section("Efficiency (paper Table 9)", [
        "Per image: parameters, MACs counted by torch.utils.flop_counter, and the median latency of one image "
        "through the edge and the cloud, timed when the run finished (on a busy machine these are upper bounds). "
        "CEM is a training loss: it adds nothing at inference, so runs with and without it share a row."],
        tables=[SimpleTable(["model", "defenses", "edge params", "edge MMACs", "cloud params", "cloud MMACs",
                             "edge share", "edge ms", "cloud ms"], rows)])


def _ms(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
