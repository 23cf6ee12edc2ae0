"""`splitshield sweep`: the paper's trade-off curves (Fig. 4a-c), the MSE vs conditional-entropy scatter with the
Theorem 1 bound (Fig. 3), the reconstruction figure (Fig. 5) and the efficiency table (Table 9), as report
sections built from a sweep folder's stored results.

matplotlib draws the curves (the field's plotting library; Agg backend, no display needed).
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Any, Sequence

from splitshield.experiments.grid import StoredGrid
from splitshield.experiments.tasks import TaskResult
from splitshield.experiments.sections import Section, SimpleTable


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines and in CI
    import matplotlib.pyplot as plt

    return plt


def _mse(result: TaskResult, protocol: str) -> float | None:
    record = result.attacks.get(f"attack-decoder-{protocol}")
    return None if record is None else float(record["mse"])


def _points(results: Sequence[TaskResult], group: str, cem: bool, protocol: str) -> list[tuple[Any, float, float]]:
    """(value, mean accuracy %, mean decoder MSE) per swept value, over seeds, in sweep order."""
    by_value: dict[str, list[TaskResult]] = {}
    order: list[Any] = []
    for r in results:
        if r.task.group == group and r.task.cem == cem and r.ok and _mse(r, protocol) is not None:
            key = repr(r.task.value)
            if key not in by_value:
                order.append(r.task.value)
            by_value.setdefault(key, []).append(r)
    return [(v, statistics.fmean(100 * float(m.train["test_accuracy"]) for m in by_value[repr(v)]),
             statistics.fmean(float(_mse(m, protocol)) for m in by_value[repr(v)])) for v in order]  # type: ignore


def tradeoff_figure(results: Sequence[TaskResult], group: str, key: str, protocol: str, out: str) -> str:
    """Accuracy (y) against decoder-attack MSE (x), one curve per CEM arm, points labelled by the swept value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for cem, style in ((False, "o-"), (True, "s--")):
        pts = _points(results, group, cem, protocol)
        if not pts:
            continue
        ax.plot([p[2] for p in pts], [p[1] for p in pts], style, label="with CEM" if cem else "without CEM")
        for value, acc, mse in pts:
            ax.annotate(str(value), (mse, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"decoder-attack MSE ({protocol} protocol)  \u2192 more private")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{group} ({key})", fontsize=9)
    return _save(plt, fig, ax, out)


def entropy_figure(results: Sequence[TaskResult], protocol: str, out: str) -> str | None:
    """Fig. 3: attack MSE against the audit's relative conditional entropy per dimension, with Theorem 1's bound
    xi >= exp(2 h) / (2 pi e) drawn over the same range. Runs without noise (vacuous bound) are left out."""
    pts = [(float(r.audit["h_cond_per_dim"]), float(_mse(r, protocol)), r.task.cem) for r in results  # type: ignore
           if r.ok and r.audit and not r.audit.get("degenerate") and _mse(r, protocol) is not None]
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for cem, marker in ((False, "o"), (True, "s")):
        sel = [p for p in pts if p[2] == cem]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, label="with CEM" if cem else
                       "without CEM")
    lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
    pad = 0.1 * (hi - lo) or 0.5
    xs = [lo - pad + i * (hi - lo + 2 * pad) / 99 for i in range(100)]
    ax.plot(xs, [math.exp(2 * x) / (2 * math.pi * math.e) for x in xs], "k:", label="Theorem 1 lower bound")
    ax.set_yscale("log")
    ax.set_xlabel("relative H(x|z) per dimension (nats)")
    ax.set_ylabel(f"decoder-attack MSE ({protocol})")
    return _save(plt, fig, ax, out)


def _save(plt: Any, fig: Any, ax: Any, out: str) -> str:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)  # figures are not kept open: a long sweep would otherwise accumulate them
    return out


def _evenly(items: list[TaskResult], k: int) -> list[TaskResult]:
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def sweep_sections(stored: StoredGrid, figures_dir: str) -> list[Section]:
    """The report sections of a sweep folder (figures written into ``figures_dir``)."""
    from splitshield.evaluation.figures import reconstruction_figure

    grid, results = stored.grid, stored.results
    protocol = grid["protocols"][0]
    os.makedirs(figures_dir, exist_ok=True)
    sections = [Section("Trade-off curves (paper Fig. 4)", [
        "Each point is one setting (mean over seeds "
        f"{', '.join(map(str, grid['seeds']))}); x: decoder-attack MSE under the {protocol} protocol, "
        "y: test accuracy. Up and right is better."])]
    for i, sweep in enumerate(grid["sweeps"]):
        out = os.path.join(figures_dir, f"tradeoff-{i}.png")
        tradeoff_figure(results, sweep["label"], sweep["key"], protocol, out)
        sections[0].images.append((f"{sweep['label']}: {sweep['key']} in {sweep['values']}", out))
    rows = [[r.task.group, str(r.task.value), "yes" if r.task.cem else "no",
             f"{100 * float(r.train['test_accuracy']):.2f}" if r.ok else "n/a",
             f"{_mse(r, protocol):.4f}" if r.ok and _mse(r, protocol) is not None else "n/a",
             f"{r.audit['h_cond_per_dim']:.3f}" if r.ok and r.audit and not r.audit.get("degenerate") else "n/a",
             f"{r.audit['mse_bound']:.2e}" if r.ok and r.audit and not r.audit.get("degenerate") else "vacuous",
             os.path.basename(r.task.run_dir)] for r in results]
    sections[0].tables.append(SimpleTable(["sweep", "value", "CEM", "acc. (%)", f"dec. MSE {protocol}",
                                           "H(x|z)/d", "MSE bound", "run"], rows))
    scatter = entropy_figure(results, protocol, os.path.join(figures_dir, "entropy-scatter.png"))
    sections.append(Section("Reconstruction MSE vs conditional entropy (paper Fig. 3)", [
        "Every run with Gaussian noise on z: its attack MSE against the audit's relative conditional entropy "
        "bound (Eq. 3), with Theorem 1's lower bound on MSE as a dotted line. The entropy is relative to "
        "H(x) = 0 (uniform on [0,1]^d), so the bound ranks runs; it is not an absolute guarantee."]
        if scatter else ["No run has Gaussian noise on z, so every entropy bound is vacuous."],
        images=[("MSE vs relative H(x|z)", scatter)] if scatter else []))
    sections.append(_reconstructions(grid, results, protocol, figures_dir, reconstruction_figure))
    sections.append(efficiency_section(results))
    return sections


def _reconstructions(grid: dict, results: Sequence[TaskResult], protocol: str, figures_dir: str,
                     draw: Any) -> Section:
    first = grid["sweeps"][0]["label"] if grid["sweeps"] else None
    section = Section("Reconstructions (paper Fig. 5)")
    seed = grid["seeds"][0]
    for cem in (False, True):
        runs = _evenly([r for r in results if r.ok and r.task.group == first and r.task.cem == cem and
                        r.task.seed == seed and f"attack-decoder-{protocol}" in r.attacks], int(grid["figure_runs"]))
        if not runs:
            continue
        out = os.path.join(figures_dir, f"reconstructions{'-cem' if cem else ''}.png")
        draw([r.task.run_dir for r in runs], ["decoder"], protocol, out,
             labels=[f"{r.task.value}{' +CEM' if cem else ''}" for r in runs])
        section.images.append((f"decoder attack ({protocol}), {first} {'with' if cem else 'without'} CEM", out))
    if not section.images:
        section.paragraphs.append("No finished run with stored reconstructions yet.")
    return section


def efficiency_section(results: Sequence[TaskResult]) -> Section:
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
        "through the edge and the cloud, timed when the run finished (on a busy machine these are upper bounds). CEM is a training loss: it adds nothing at "
        "inference, so runs with and without it share a row."],
        tables=[SimpleTable(["model", "defenses", "edge params", "edge MMACs", "cloud params", "cloud MMACs",
                             "edge share", "edge ms", "cloud ms"], rows)])


def _ms(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
