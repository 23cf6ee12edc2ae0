"""The report sections of stored folders: table grids (Table 1, per-run details, reconstructions) and single runs
(attacks, audit, efficiency, reconstructions); sweeps build theirs in experiments/sweep.py, frontiers in
experiments/frontier.py. Plain data only:
experiments/report.py renders them to HTML and Markdown."""
from __future__ import annotations

import os
from typing import Any, Optional

from splitshield.errors import UserError
from splitshield.experiments.grid import StoredGrid
from splitshield.experiments.results import RunResult, status
from splitshield.experiments.sections import Section, SimpleTable


def grid_name(stored: StoredGrid) -> str:
    return str(stored.grid.get("name") or os.path.basename(os.path.abspath(stored.runs)))


def report_sections(stored: StoredGrid, figures_dir: str) -> list[Section]:
    """The sections of a stored grid or run; figures are written to ``figures_dir``."""
    if stored.kind == "table":
        return [_header(stored), _table(stored), _runs(stored), _table_figure(stored, figures_dir)]
    if stored.kind == "sweep":
        from splitshield.experiments.sweep import sweep_sections

        return [_header(stored)] + sweep_sections(stored, figures_dir)
    if stored.kind == "frontier":
        from splitshield.experiments.frontier import frontier_sections

        return [_header(stored)] + frontier_sections(stored, figures_dir)
    if stored.kind == "run":
        return _run_sections(stored, figures_dir)
    raise UserError(f"{stored.runs}/grid.json has kind {stored.kind!r}; valid: 'table', 'sweep', 'frontier', 'run'")


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _row_label(result: RunResult) -> str:
    return result.task.row  # type: ignore[union-attr]  (as experiments/tables.py names rows)


def _shown_path(path: str) -> str:
    # grid.json stores the base config absolute; shown relative to here (the repository root, for the docs)
    rel = os.path.relpath(path) if path else "unknown"
    return path if rel.startswith("..") else rel


def _header(stored: StoredGrid) -> Section:
    g, total = stored.grid, len(stored.results)
    done = sum(r.ok for r in stored.results)
    overrides = f" with overrides {', '.join(g['set'])}" if g.get("set") else ""
    status = f"{done} of {total} runs finished"
    if done < total:  # a report of a running grid must not pass for a complete one
        status += "; the others have no stored training result yet (running, failed or not started): n/a below"
    return Section("Grid", [
        f"Grid {grid_name(stored)} ({stored.kind}), produced by: {stored.command or 'unknown command'}",
        f"Base config: {_shown_path(str(g.get('base', '')))}{overrides}. Seeds: {_join(g.get('seeds'))}. "
        f"Attacks: {_join(g.get('attacks'))}. Protocols: {_join(g.get('protocols'))}.",
        status + "."])


def _join(items: Any) -> str:
    return ", ".join(str(i) for i in items) if items else "none"


def _table(stored: StoredGrid) -> Section:
    from splitshield.experiments.tables import per_row_effects, table_from_stored

    table = table_from_stored(stored.grid, stored.results)
    rows = [[row.label] + [table.cell(row, i) for i in range(len(table.columns))] for row in table.rows]
    paragraphs = ["Cells: mean over the finished seeds, ± the sample standard deviation when there are several. "
                  "Acc.: the victim's test accuracy. MSE: mean squared error of the attack's reconstructions "
                  "(pixels in [0, 1]); higher means less leaks. Train: the attacker fits on training-set "
                  "features; Infer: on 90% of the test set. An MSE counts only when the attack beat the mean-image "
                  "baseline, converged on its own validation split, and the victim is above chance; other cells "
                  "say why they are empty (did not learn, not converged, victim at chance) and are left out of "
                  "every average. Averages cover the rows that have every arm (No_defense is a reference)."]
    if any(c.worst for c in table.columns):
        paragraphs.append("Worst MSE: per run, the lowest MSE among the attacks that count under that protocol "
                          f"({', '.join(stored.grid['attacks'])}; in brackets the attack that scored it, with its "
                          "number of seeds when they differ); an attack that did not learn or converge is not a "
                          "worst case, and a run where one attack has not run yet has none. Averages, gains and the "
                          "per-row comparisons are taken on this column as on the others.")
    missing = [r.task.label for r in stored.results if not r.ok]  # type: ignore[union-attr]
    if missing:
        paragraphs.append("Not in the cells (no stored training result): " + ", ".join(missing) + ".")
    notes = [n for row in table.rows for n in row.notes if "same run" in n]
    if notes:
        paragraphs.append("; ".join(notes) + ".")
    tables = [SimpleTable(["Method"] + [c.title for c in table.columns], rows)]
    effects = per_row_effects(stored.results, table.columns)
    if effects:
        paragraphs.append("Per row: each arm against the row and the arms before it (accuracy change in points, "
                          "MSE change in percent, of the means over the seeds that count in both arms; in "
                          "brackets, seed by seed in seed order, when several count; [k of n seeds] when a seed "
                          "did not count or has not run in one of the two).")
        tables.append(SimpleTable(["Row", "Comparison"] + [c.title for c in table.columns
                                                           if c.key not in ("edge_params", "edge_macs")], effects))
    return Section("Table 1", paragraphs, tables)


def _runs(stored: StoredGrid) -> Section:
    from splitshield.experiments.tables import ATTACK_NAMES, PROTOCOL_NAMES

    keys = [(a, p) for a in stored.grid.get("attacks", []) for p in stored.grid.get("protocols", [])]
    header = ["Run", "Folder", "Acc. (%)"]
    for a, p in keys:
        name = f"{ATTACK_NAMES.get(a, a)} {PROTOCOL_NAMES.get(p, p)}"
        header += [f"{name} MSE", f"{name} PSNR", f"{name} SSIM", f"{name} status"]
    header += ["I(x;z) bits/dim <=", "Edge params", "Train (s)", "Attacks (s)"]
    rows = []
    for r in stored.results:
        row = [r.task.label, os.path.basename(os.path.normpath(r.run_dir))]  # type: ignore[union-attr]
        if not r.ok:  # stale attack files of a run being retrained would not belong to its final model
            rows.append(row + ["n/a"] * (len(header) - 2))
            continue
        row.append(_fmt(r.accuracy, ".2f"))
        for a, p in keys:
            rec = r.attack(a, p) or {}
            row += [_fmt(rec.get("mse"), ".4f"), _fmt(rec.get("psnr"), ".2f"), _fmt(rec.get("ssim"), ".3f"),
                    status(r.attack(a, p))]
        attack_seconds = [(r.attack(a, p) or {}).get("seconds") for a, p in keys]
        rows.append(row + [_bound(r.audit), _fmt(r.efficiency.get("edge_params"), ",.0f"),
                           _fmt(r.train.get("seconds"), ".1f"),
                           _fmt(sum(attack_seconds) if None not in attack_seconds else None, ".1f")])
    return Section("Runs", ["One line per run, every attack result as stored with its status. I(x;z): the entropy "
                            "audit's upper bound on the information the transmitted features carry about the input "
                            "(none without noise on z). Train and attack seconds as each step measured them (the "
                            "machine's load is not recorded)."], [SimpleTable(header, rows)])


def _bound(audit: Optional[dict[str, Any]]) -> str:
    if audit is None:
        return "n/a"
    if audit.get("degenerate"):
        return "none (no noise)"
    return _fmt(audit.get("mi_bound_bits_per_dim"), ".4f") if "mi_bound" in audit else "n/a (old audit)"


def _has_recon(run_dir: str, attack: str, protocol: str) -> bool:
    from splitshield.runs import RESULTS_DIR

    return os.path.isfile(os.path.join(run_dir, RESULTS_DIR, f"attack-{attack}-{protocol}.recon.pt"))


def _figure(section: Section, run_dirs: list[str], labels: list[str], attacks: list[str], protocol: str,
            out: str, caption: str) -> None:
    from splitshield.evaluation.figures import reconstruction_figure

    try:
        section.images.append((caption, reconstruction_figure(run_dirs, attacks, protocol, out, labels=labels)))
    except UserError as exc:  # e.g. runs that show different test images: the rest of the report still stands
        section.paragraphs.append(f"Figure not drawn: {exc}")


def _table_figure(stored: StoredGrid, figures_dir: str) -> Section:
    attacks, protocols = stored.grid.get("attacks") or ["decoder"], stored.grid.get("protocols") or ["train"]
    attack = "decoder" if "decoder" in attacks else attacks[0]
    protocol = "train" if "train" in protocols else protocols[0]
    groups: dict[str, list[RunResult]] = {}
    for r in stored.results:
        groups.setdefault(_row_label(r), []).append(r)
    chosen, skipped = [], []
    for label, members in groups.items():
        have = [m for m in members if m.ok and _has_recon(m.task.run_dir, attack, protocol)]
        if have:
            chosen.append((label, min(have, key=lambda m: m.task.seed)))
        else:
            skipped.append(label)
    section = Section("Reconstructions", [f"The {attack} attack's reconstructions ({protocol} protocol) of the "
                                          "same test images (top row), from the first seed of every row."])
    if skipped:
        section.paragraphs.append("No stored reconstructions (left out): " + ", ".join(skipped) + ".")
    if chosen:
        _figure(section, [m.task.run_dir for _, m in chosen], [label for label, _ in chosen], [attack], protocol,
                os.path.join(figures_dir, f"reconstructions-{attack}-{protocol}.png"),
                f"{attack} attack, {protocol} protocol: originals, then one row per defense")
    return section


def _run_sections(stored: StoredGrid, figures_dir: str) -> list[Section]:
    r = stored.results[0]
    about = [f"Run folder: {os.path.normpath(r.run_dir)}, produced by: {stored.command or 'unknown command'}"]
    cfg = r.config
    if cfg is not None:
        about.append(f"Experiment {cfg.name}: {cfg.data.name} data, {cfg.model.name} cut at {cfg.model.cut}, "
                     f"defenses: {', '.join(d.name for d in cfg.defenses) or 'none'}, seed {cfg.seed}.")
    if not r.ok:
        return [Section("Run", about + ["Not finished: no stored training result (results/train.json) yet."])]
    about.append(f"Test accuracy {100.0 * r.train['test_accuracy']:.2f}% after {r.train.get('epochs', '?')} epochs "
                 f"({_fmt(r.train.get('seconds'), '.1f')} s of training).")
    attacks = [[key.attack, key.protocol, _fmt(rec.get("mse"), ".4f"),
                _fmt(rec.get("psnr"), ".2f"), _fmt(rec.get("ssim"), ".3f"),
                _fmt(rec.get("baseline", {}).get("mse"), ".4f"), status(rec), _fmt(rec.get("seconds"), ".1f")]
               for key, rec in sorted(r.attacks.items())]
    sections = [Section("Run", about), Section(
        "Attacks", ["Baseline: the MSE of answering every input with the attacker's mean training image, what "
                    "an attack scores when the features leak nothing specific to the input."],
        [SimpleTable(["Attack", "Protocol", "MSE", "PSNR (dB)", "SSIM", "Baseline MSE", "Status", "Seconds"],
                     attacks)] if attacks else []),
        _audit_section(r.audit, min((float(rec["mse"]) for rec in r.attacks.values()), default=None)),
        _efficiency_section(r.efficiency)]
    figures = Section("Reconstructions")
    for protocol in ("train", "infer"):
        names = sorted({key.attack for key in r.attacks if key.protocol == protocol})
        names = [n for n in names if _has_recon(r.run_dir, n, protocol)]
        if names:
            _figure(figures, [r.run_dir], ["run"], names, protocol,
                    os.path.join(figures_dir, f"reconstructions-{protocol}.png"),
                    f"{protocol} protocol: originals, then one row per attack ({', '.join(names)})")
    if not figures.images and not figures.paragraphs:
        figures.paragraphs.append("No stored reconstructions.")
    return sections + [figures]


def _audit_section(audit: Optional[dict[str, Any]], best_mse: Optional[float] = None) -> Section:
    if audit is None:
        return Section("Entropy audit", ["No stored audit; run 'splitshield audit RUN_DIR'."])
    if "mi_bound" not in audit and not audit.get("degenerate"):
        return Section("Entropy audit", ["The stored audit predates the current one; run 'splitshield audit "
                                         "RUN_DIR' again."])
    paragraphs = [f"Noise std on the transmitted features: {audit['noise_std']:.4g}."]
    if audit["degenerate"]:
        paragraphs.append(f"Degenerate: {audit['reason']}.")
    else:
        paragraphs.append(f"Upper bound on what the transmitted features carry about the input (Eq. 3 with Eq. 7's "
                          f"mixture): I(x; z) <= {audit['mi_bound']:.2f} nats = {audit['mi_bound_bits_per_dim']:.4f} "
                          "bits per input dimension. This holds for any data distribution.")
        figure = audit["mse_index"]
        if audit.get("h_ref_is_true"):
            text = (f"Theorem 1 with the data's H(x) = {audit['h_ref']} nats: any reconstruction of x from z has "
                    f"MSE >= {figure:.4g}.")
            if best_mse is not None and best_mse < figure:
                text += f" An attack in this report scored {best_mse:.4g}, below it: the bound's assumptions fail."
        else:
            text = (f"Relative MSE index (Theorem 1 with H(x) = {audit['h_ref']} nats, {audit['h_ref_meaning']}): "
                    f"{figure:.4g}. Use it to rank runs of the same data, not as a guarantee.")
        paragraphs.append(text)
    rows = [[str(c["class"]), f"{c['weight']:.3f}", _fmt(c.get("mi_bound"), ".2f"), _fmt(c.get("mse_index"), ".4g")]
            for c in audit.get("per_class", [])]
    return Section("Entropy audit", paragraphs, [SimpleTable(["Class", "Weight", "I(x;z) <= (nats)",
                                                              "MSE index (relative)"], rows)] if rows else [])


def _efficiency_section(eff: dict[str, Any]) -> Section:
    if not eff:
        return Section("Efficiency", ["No stored efficiency record."])
    rows = [[part.capitalize(), _fmt(eff.get(f"{part}_params"), ",.0f"), _fmt(eff.get(f"{part}_macs"), ",.0f")]
            for part in ("edge", "cloud")]
    share = eff.get("edge_share")
    return Section("Efficiency", [f"Edge share of the MACs: {100.0 * share:.1f}%."] if share is not None else [],
                   [SimpleTable(["Part", "Parameters", "MACs per image"], rows)])


# ---- rendering -------------------------------------------------------------------------------------------------
