"""The paper's Table 1 layout from a grid's results, as Markdown, CSV and LaTeX.

Rows: every row label in every arm it has (``Dropout``, ``Dropout+noise``, ``Dropout+CEM``), then one average per
arm over the rows that have every arm (No_defense, a reference row with only the plain arm, is left out as in the
paper), then the relative gains between the arms' averages (MSE: percent change; accuracy: change in points).
Cells are the mean over seeds with the spread (sample standard deviation) when there is more than one seed.

Evidence rules (docs/attacks.md): an MSE cell uses only attack results that count (the attack beat the mean-image
baseline, converged, and the victim is above chance); a cell where none counts reads "did not learn" (or "victim
at chance") and is left out of every average; a cell where some seeds do not count says how many do.

Worst case: with two or more attacks, each protocol also gets a "Worst MSE" column, per seed the lowest MSE among
the attacks that count there (``RunResult.worst_mse``; the attack that scored it is named in the cell), so the
averages, gains and per-row comparisons are also taken against the strongest attacker of each run.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

# ATTACK_NAMES, PROTOCOL_NAMES and columns_for are imported from here by the table command and reports
from splitshield.experiments.columns import (ATTACK_NAMES, PROTOCOL_NAMES, Column, by_attack,  # noqa: F401
                                             columns_for, value_of)
from splitshield.experiments.results import RunResult


@dataclass
class Row:
    label: str
    values: list[list[float]]  # per column, one value per seed that counts (empty: none)
    kind: str = "run"  # "run", "average", "gain"
    notes: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # per column: why a cell has no value ("" = not run yet)
    seeds: list[int] = field(default_factory=list)  # per column: how many seeds were run
    sources: list[list[str]] = field(default_factory=list)  # per worst column: the attack behind each value


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]

    def cell(self, row: Row, i: int) -> str:
        values = row.values[i]
        if not values:
            return (row.empty[i] if row.empty and row.empty[i] else "n/a")
        col = self.columns[i]
        if row.kind == "gain":
            return f"{values[0]:+.2f} pts" if col.key == "accuracy" else f"{values[0]:+.1f}%"
        mean = statistics.fmean(values)
        text = format(mean, col.fmt)
        if len(values) > 1:
            text += " ± " + format(statistics.stdev(values), col.fmt)
        if row.sources and row.sources[i]:
            text += f" ({by_attack(row.sources[i])})"
        if row.seeds and row.seeds[i] > len(values):
            text += f" ({len(values)} of {row.seeds[i]} seeds)"
        return text


def _row(label: str, members: list[RunResult], columns: list[Column]) -> Row:
    values, empty, seeds, sources = [], [], [], []
    for col in columns:
        got = [value_of(m, col) for m in members]
        values.append([v for v, _ in got if v is not None])
        reasons = sorted({why for v, why in got if v is None and why})
        empty.append(" / ".join(reasons))
        seeds.append(sum(m.ok for m in members))
        worst = [m.worst_mse(col.worst, col.attacks) for m in members] if col.worst is not None else []
        sources.append([w.attack for w in worst if w is not None])
    notes = [f"failed or not run: {m.task.label if m.task else m.run_dir}" for m in members if not m.ok]
    return Row(label, values, notes=notes, empty=empty, seeds=seeds, sources=sources)


def build_table(title: str, results: Sequence[RunResult], columns: list[Column]) -> Table:
    """Group results by (row label, arm) in first-seen order; add the arms' averages and their gains."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        assert r.task is not None, "a table is built from grid results"
        groups.setdefault((r.task.group, r.task.arm), []).append(r)
    arms = list(dict.fromkeys(arm for _, arm in groups))
    labels = list(dict.fromkeys(group for group, _ in groups))
    rows = {key: _row(key[0] + key[1], members, columns) for key, members in groups.items()}
    for (group, arm), members in groups.items():  # an arm that is its row (``unless``) says so
        base = groups.get((group, arms[0]))
        if arm != arms[0] and base and [m.run_dir for m in members] == [m.run_dir for m in base]:
            rows[(group, arm)].notes.append(f"{group}{arm} is the same run as {group} (it has that already)")
    out = list(rows.values())
    if len(labels) > 0:
        full = [g for g in labels if all((g, a) in groups for a in arms)]  # reference rows (No_defense) left out
        averages = {a: _average(f"Average {a}".rstrip(), [rows[(g, a)] for g in full], columns) for a in arms}
        out += list(averages.values())
        for i, a in enumerate(arms[1:], start=1):
            for b in arms[:i]:
                out.append(_gain(f"Gain {a} vs {b or 'row'}", averages[b], averages[a], columns))
    return Table(title, columns, out)


def _average(label: str, rows: list[Row], columns: list[Column]) -> Row:
    # Mean of the row means (each defense counts once, whatever its number of seeds); a row without a counting
    # value in a column is left out of that column's average (it is marked in its own cell).
    values = []
    for i in range(len(columns)):
        means = [statistics.fmean(r.values[i]) for r in rows if r.values[i]]
        values.append([statistics.fmean(means)] if means and len(means) == len(rows) else [])
    empty = ["" if v else "incomplete" for v in values]
    return Row(label, values, kind="average", empty=empty)


def _gain(label: str, without: Row, with_: Row, columns: list[Column]) -> Row:
    values = []
    for i, col in enumerate(columns):
        a, b = without.values[i], with_.values[i]
        if not a or not b or col.key in ("edge_params", "edge_macs"):
            values.append([])
        else:
            values.append([_change(col, a[0], b[0])] if col.key == "accuracy" or a[0] else [])
    return Row(label, values, kind="gain")


def _change(col: Column, without: float, with_: float) -> float:
    return with_ - without if col.key == "accuracy" else 100.0 * (with_ / without - 1.0)


def paired_change(col: Column, without: list[RunResult], with_: list[RunResult]) -> str:
    """The change between two arms of a row over the seeds that count in both (a paired comparison: a seed that
    did not learn, or has not run yet, in one arm leaves both), from the means over those seeds; then seed by seed
    in seed order when there are two or more: whether a mean change is a consistent one or one seed's."""
    def by_seed(members: list[RunResult]) -> dict[int, float]:
        got = {m.task.seed: value_of(m, col)[0] for m in members}  # type: ignore[union-attr]
        return {s: v for s, v in got.items() if v is not None}

    a, b = by_seed(without), by_seed(with_)
    seeds = sorted(set(a) & set(b))
    if not seeds or (col.key != "accuracy" and not all(a[s] for s in seeds)):
        return "n/a"
    accuracy = col.key == "accuracy"
    fmt, unit = ("+.2f", "") if accuracy else ("+.1f", "%")
    mean = _change(col, statistics.fmean(a[s] for s in seeds), statistics.fmean(b[s] for s in seeds))
    text = format(mean, fmt) + (" pts" if accuracy else "%")
    if len(seeds) > 1:
        text += " (" + ", ".join(format(_change(col, a[s], b[s]), fmt) + unit for s in seeds) + ")"
    runs = max(len({m.task.seed for m in without}), len({m.task.seed for m in with_}))  # type: ignore[union-attr]
    return text + (f" [{len(seeds)} of {runs} seeds]" if len(seeds) < runs else "")


def per_row_effects(results: Sequence[RunResult], columns: list[Column]) -> list[list[str]]:
    """For each row and each arm beyond the first: the accuracy change (points) and the MSE change (%) of every
    attack column against the row and against every arm before it, over the seeds that count in both
    (``paired_change``), then seed by seed in brackets when there are several: what a reader checks row by row ("does
    +CEM beat both the row and +noise at the same accuracy, at every seed?")."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.task.group, r.task.arm), []).append(r)  # type: ignore[union-attr]
    arms = list(dict.fromkeys(arm for _, arm in groups))
    lines = []
    for group in dict.fromkeys(g for g, _ in groups):
        for i, a in enumerate(arms[1:], start=1):
            for b in arms[:i]:
                if (group, a) not in groups or (group, b) not in groups:
                    continue
                cells = [paired_change(col, groups[(group, b)], groups[(group, a)]) for col in columns
                         if col.key not in ("edge_params", "edge_macs")]
                lines.append([group, f"{a} vs {b or 'row'}"] + cells)
    return lines


def to_markdown(table: Table) -> str:
    head = "| Method | " + " | ".join(c.title for c in table.columns) + " |"
    lines = [head, "|" + "---|" * (len(table.columns) + 1)]
    for row in table.rows:
        label = f"**{row.label}**" if row.kind != "run" else row.label
        lines.append(f"| {label} | " + " | ".join(table.cell(row, i) for i in range(len(table.columns))) + " |")
    notes = [n for row in table.rows for n in row.notes]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["method", "kind"]
    for c in table.columns:
        header += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n", f"{c.key}_note"]
    writer.writerow(header)
    for row in table.rows:
        line: list[object] = [row.label, row.kind]
        for i, values in enumerate(row.values):
            note = row.empty[i] if row.empty else ""
            if not values:
                line += ["", "", 0, note]
            else:
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                by = row.sources[i] if row.sources else []
                line += [repr(statistics.fmean(values)), "" if math.isnan(std) else repr(std), len(values),
                         "by " + " ".join(by) if by else note]
        writer.writerow(line)
    return buf.getvalue()


def _tex(text: str) -> str:
    return (text.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
            .replace("±", "$\\pm$").replace("#", "\\#"))


def to_latex(table: Table) -> str:
    cols = "l" + "r" * len(table.columns)
    lines = ["\\begin{tabular}{" + cols + "}", "\\toprule",
             "Method & " + " & ".join(_tex(c.title) for c in table.columns) + " \\\\", "\\midrule"]
    for row in table.rows:
        if row.kind == "average" and not lines[-1].startswith("\\midrule"):
            lines.append("\\midrule")
        lines.append(_tex(row.label) + " & " + " & ".join(_tex(table.cell(row, i)) for i in range(len(table.columns)))
                     + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def table_from_stored(grid: dict, results: Sequence[RunResult]) -> Table:
    """The table of a table grid (``grid`` as stored in grid.json)."""
    columns = columns_for(grid["attacks"], grid["protocols"], bool(grid.get("efficiency")))
    return build_table(grid["name"], results, columns)


def write_table_files(runs: str, table: Table) -> dict[str, str]:
    """table.md, table.csv and table.tex in ``runs``; returns {format: path}."""
    import os

    paths = {}
    for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
        path = os.path.join(runs, f"table.{ext}")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(render(table))
        paths[ext] = path
    return paths
