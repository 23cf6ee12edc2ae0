"""The paper's Table 1 layout from a grid's results, as Markdown, CSV and LaTeX.

Rows: No_defense, then every defense without and with CEM; then "Average w/o CEM", "Average w/ CEM" over the
defenses (No_defense excluded, as in the paper) and the relative gain of CEM (MSE: percent change of the
averages; accuracy: change in points). Cells are the mean over seeds with the spread (sample standard deviation)
when there is more than one seed.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

from splitshield.experiments.tasks import TaskResult

PROTOCOL_NAMES = {"train": "Train", "infer": "Infer"}
ATTACK_NAMES = {"decoder": "Dec.", "gan": "GAN", "rmle": "rMLE"}


@dataclass
class Column:
    key: str  # "accuracy", "attack-decoder-train", "edge_params", "edge_macs"
    title: str
    fmt: str  # format spec of the mean


@dataclass
class Row:
    label: str
    values: list[list[float]]  # per column, one value per seed (empty: missing)
    kind: str = "run"  # "run", "average", "gain"
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]

    def cell(self, row: Row, i: int) -> str:
        values = row.values[i]
        if not values:
            return "n/a"
        col = self.columns[i]
        if row.kind == "gain":
            return f"{values[0]:+.2f} pts" if col.key == "accuracy" else f"{values[0]:+.1f}%"
        mean = statistics.fmean(values)
        text = format(mean, col.fmt)
        if len(values) > 1:
            text += " ± " + format(statistics.stdev(values), col.fmt)
        return text


def columns_for(attacks: Sequence[str], protocols: Sequence[str], efficiency: bool) -> list[Column]:
    cols = [Column("accuracy", "Acc. (%)", ".2f")]
    for attack in attacks:
        for protocol in protocols:
            cols.append(Column(f"attack-{attack}-{protocol}",
                               f"{ATTACK_NAMES.get(attack, attack)} MSE {PROTOCOL_NAMES[protocol]}", ".4f"))
    if efficiency:
        cols += [Column("edge_params", "Edge params", ",.0f"), Column("edge_macs", "Edge MMACs", ".2f")]
    return cols


def _value(result: TaskResult, key: str) -> Optional[float]:
    if not result.ok:
        return None
    if key == "accuracy":
        return 100.0 * float(result.train["test_accuracy"])
    if key in ("edge_params", "edge_macs"):
        eff = result.efficiency
        return None if key not in eff else float(eff[key]) / (1e6 if key == "edge_macs" else 1)
    record = result.attacks.get(key)
    return None if record is None else float(record["mse"])


def build_table(title: str, results: Sequence[TaskResult], columns: list[Column]) -> Table:
    """Group results by (row label, CEM arm) in first-seen order; add averages and the CEM gain."""
    groups: dict[tuple[str, bool], list[TaskResult]] = {}
    for r in results:
        groups.setdefault((r.task.group, r.task.cem), []).append(r)
    rows = []
    for (group, cem), members in groups.items():
        values = [[v for v in (_value(m, c.key) for m in members) if v is not None] for c in columns]
        failed = [m.task.label for m in members if not m.ok]
        rows.append(Row(group + ("+CEM" if cem else ""), values, notes=[f"failed: {x}" for x in failed]))
    without = [r for (g, cem), r in zip(groups, rows) if not cem and g != "No_defense"]
    with_cem = [r for (_, cem), r in zip(groups, rows) if cem]
    if with_cem:
        avg_without, avg_with = _average("Average w/o CEM", without, columns), _average("Average w/ CEM", with_cem,
                                                                                           columns)
        rows += [avg_without, avg_with, _gain(avg_without, avg_with, columns)]
    elif without:
        rows.append(_average("Average", without, columns))
    return Table(title, columns, rows)


def _average(label: str, rows: list[Row], columns: list[Column]) -> Row:
    # Mean of the row means (each defense counts once, whatever its number of seeds); missing rows are skipped.
    values = []
    for i in range(len(columns)):
        means = [statistics.fmean(r.values[i]) for r in rows if r.values[i]]
        values.append([statistics.fmean(means)] if means else [])
    return Row(label, values, kind="average")


def _gain(without: Row, with_cem: Row, columns: list[Column]) -> Row:
    values = []
    for i, col in enumerate(columns):
        a, b = without.values[i], with_cem.values[i]
        if not a or not b or col.key in ("edge_params", "edge_macs"):
            values.append([])
        elif col.key == "accuracy":
            values.append([b[0] - a[0]])
        else:
            values.append([100.0 * (b[0] / a[0] - 1.0)] if a[0] else [])
    return Row("Relative gain of CEM", values, kind="gain")


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
        header += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n"]
    writer.writerow(header)
    for row in table.rows:
        line: list[object] = [row.label, row.kind]
        for values in row.values:
            if not values:
                line += ["", "", 0]
            else:
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                line += [repr(statistics.fmean(values)), "" if math.isnan(std) else repr(std), len(values)]
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


def table_from_stored(grid: dict, results: Sequence[TaskResult]) -> Table:
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
