"""Accuracy-privacy frontiers: Pareto fronts, matched-accuracy interpolation, paired ratios, verdicts and areas on
hand-built results whose numbers are worked out below; the grid config and the `frontier` command end to end."""
from __future__ import annotations

import os

import pytest
import yaml

from splitshield.cli.main import main
from splitshield.errors import ConfigError
from splitshield.experiments.frontier import (Point, area, areas, common_range, front_mse, fronts, frontier_sections,
                                              matched, observe, paired_ratio, pareto_front, verdict)
from splitshield.experiments.grid import StoredGrid, load_stored
from splitshield.experiments.results import RunResult
from splitshield.experiments.spec import FrontierConfig, Task, load_grid, sweep_tasks
from splitshield.runs import AttackKey

# Knob-only points, seed 0: (value, accuracy %, MSE). C (87, 0.012) is dominated by B (88, 0.014): not on the front.
KNOB = {0: [(0.1, 90, 0.010), (0.5, 88, 0.014), (1.0, 87, 0.012), (2.0, 85, 0.020)],
        1: [(0.1, 90, 0.011), (0.5, 88, 0.015), (1.0, 87, 0.013), (2.0, 85, 0.0214)]}
# +CEM points: P1 inside at both seeds, P2 inside at seed 0 only (84% < the seed-1 front's 85%), P3 above both fronts.
CEM = {0: [(0.1, 91, 0.0090), (0.5, 89, 0.0144), (1.0, 86.5, 0.0190)],
       1: [(0.1, 91, 0.0095), (0.5, 89, 0.0170), (1.0, 84, 0.0200)]}


def points(rows: list[tuple[float, float, float]]) -> list[Point]:
    return [Point(acc, mse, value) for value, acc, mse in rows]


def test_the_front_drops_dominated_points_and_interpolates_linearly_between_neighbours() -> None:
    front = pareto_front(points(KNOB[0]))
    assert [(p.accuracy, p.mse) for p in front] == [(85, 0.020), (88, 0.014), (90, 0.010)]
    assert front_mse(front, 89) == pytest.approx(0.012)  # half way from B (0.014) to A (0.010)
    assert front_mse(front, 86.5) == pytest.approx(0.017)  # half way from D (0.020) to B
    assert front_mse(front, 87.5) == pytest.approx(0.015)  # not 0.013, which C on the front would give
    assert front_mse(front, 85) == pytest.approx(0.020) and front_mse(front, 90) == pytest.approx(0.010)
    assert front_mse(front, 91) is None and front_mse(front, 84.9) is None  # outside: no extrapolation
    assert pareto_front([Point(1, 1), Point(1, 1, "again")]) == [Point(1, 1)]  # one point per coordinate
    assert front_mse([Point(88, 0.01)], 88) == 0.01 and front_mse([], 88) is None


def test_area_over_the_common_range_is_the_trapezoid_integral() -> None:
    knob, cem = pareto_front(points(KNOB[0])), pareto_front(points(CEM[0]))
    assert common_range(knob, cem) == (86.5, 90)
    # knob-only: 86.5 -> 88 -> 90 at 0.017, 0.014, 0.010; +CEM: 86.5 -> 89 -> 90 at 0.019, 0.0144, 0.0117
    assert area(knob, 86.5, 90) == pytest.approx(1.5 * 0.0155 + 2 * 0.012)
    assert area(cem, 86.5, 90) == pytest.approx(2.5 * 0.0167 + 0.01305)
    assert common_range(knob, [Point(95, 0.01), Point(96, 0.0)]) is None  # no overlap
    assert common_range(knob, [Point(88, 0.02)]) is None  # a single accuracy has no area


def test_verdict_is_decided_by_the_lowest_inside_ratio() -> None:
    assert verdict([1.25, 1.10], 0.10) == "dominates"
    assert verdict([1.25, 1.09], 0.10) == "matches" and verdict([0.9, 1.5], 0.10) == "matches"
    assert verdict([1.3, 0.89], 0.10) == "below"
    assert verdict([], 0.10) == "no point inside"


def run(group: str, arm: str, seed: int, value: float, acc: float, mse: float) -> RunResult:
    """A finished run whose worst case is ``mse`` (the decoder's): the GAN scores more, and kNN's lower MSE did not
    converge, so it must not be taken as the worst case."""
    task = Task(group, arm, seed, value, None, f"/x/{group}{arm}-{value}-s{seed}", swept=True)  # type: ignore[arg-type]
    attacks = {AttackKey("decoder", "train"): {"mse": mse, "counts": True, "status": "ok"},
               AttackKey("gan", "train"): {"mse": mse + 0.001, "counts": True, "status": "ok"},
               AttackKey("knn", "train"): {"mse": mse / 2, "counts": False, "status": "not converged"}}
    return RunResult(task.run_dir, {"test_accuracy": acc / 100}, attacks, task=task)


def results() -> list[RunResult]:
    out = []
    for arm, table in (("", KNOB), ("+CEM", CEM)):
        for seed, rows in table.items():
            out += [run("Noise", arm, seed, value, acc, mse) for value, acc, mse in rows]
    return out


GRID = {"name": "f", "seeds": [0, 1], "attacks": ["decoder", "gan", "knn"], "protocols": ["train"], "margin": 0.1,
        "arms": [{"label": ""}, {"label": "+CEM"}],
        "sweeps": [{"label": "Noise", "key": "defenses.0.sigma", "values": [0.1, 0.5, 1.0, 2.0]}]}


def test_points_are_paired_over_seeds_with_the_fronts_of_their_own_seed() -> None:
    values, attacks = GRID["sweeps"][0]["values"], GRID["attacks"]
    knob = fronts(observe(results(), "Noise", "", values, "train", attacks))
    assert [p.value for p in knob[1]] == [2.0, 0.5, 0.1]  # the dominated 1.0 is off the seed-1 front too
    cem = observe(results(), "Noise", "+CEM", values, "train", attacks)
    p3, p1, p2 = cem[:3]  # values 0.1, 0.5, 1.0
    # P1: 0.0144 against 0.012 (seed 0), 0.0170 against 0.013 (seed 1): the ratio of the means, 0.0157 / 0.0125
    assert matched(p1, knob) == {0: (0.0144, pytest.approx(0.012)), 1: (0.0170, pytest.approx(0.013))}
    assert paired_ratio(matched(p1, knob)) == pytest.approx(1.256)  # (the mean of the ratios would be 1.2538)
    assert list(matched(p2, knob)) == [0] and paired_ratio(matched(p2, knob)) == pytest.approx(0.019 / 0.017)
    assert matched(p3, knob) == {}  # above both fronts' accuracy: outside
    # areas per seed over each seed's common range: seed 0 as above; seed 1 over [85, 90], the knob-only front at
    # 0.0214, 0.015, 0.011 (85, 88, 90) and the +CEM one at 0.0194, 0.0170, 0.01325 (85, 89, 90)
    spans = areas(knob, fronts(cem))
    assert spans[0] == (pytest.approx(0.0548), pytest.approx(0.04725))
    assert spans[1] == (pytest.approx(4 * 0.0182 + 0.015125), pytest.approx(3 * 0.0182 + 0.026))
    assert paired_ratio(spans) == pytest.approx((0.0548 + 0.087925) / (0.04725 + 0.0806))


def test_sections_show_matched_accuracy_verdicts_areas_and_a_figure(tmp_path) -> None:
    stored = StoredGrid(str(tmp_path), "frontier", GRID, "splitshield frontier f.yaml", results())
    summary, matches, pts = frontier_sections(stored, str(tmp_path / "figs"))
    assert summary.tables[0].rows == [["Noise", "defenses.0.sigma", "+CEM", "2 of 3", "1.118", "dominates",
                                       "0.0639 ± 0.0236", "0.0714 ± 0.0234", "1.116 (1.160, 1.091)", "yes"]]
    assert "met by 1 of 1 (Noise+CEM)" in summary.paragraphs[1]
    rows = {row[2]: row for row in matches.tables[0].rows}
    assert rows["0.5"][3:] == ["89.00 ± 0.00", "0.0157 ± 0.0018", "0.0125", "1.256 (1.200, 1.308)"]
    assert rows["1.0"][5:] == ["0.0170", "1.118 [1 of 2 seeds]"]
    assert rows["0.1"][5:] == ["outside the front", "n/a"]
    on_front = {(row[1], row[2]): row[-1] for row in pts.tables[0].rows}
    assert on_front[("knob only", "1.0")] == "-" and on_front[("knob only", "0.5")] == "s0, s1"
    assert {row[5] for row in pts.tables[0].rows if row[6] != "not run yet"} == {"Dec."}  # never kNN's lower MSE
    assert [row[6] for row in pts.tables[0].rows if row[1] == "+CEM"] == ["2 of 2"] * 3 + ["not run yet"]
    (_, image), = summary.images
    with open(image, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_cem_point_below_the_front_makes_the_verdict_below(tmp_path) -> None:
    weak = [r for r in results() if not (r.task.arm and r.task.value == 0.5)]
    weak += [run("Noise", "+CEM", s, 0.5, 89, 0.010) for s in (0, 1)]  # 0.010 against 0.012 / 0.013: -20%
    summary = frontier_sections(StoredGrid(str(tmp_path), "frontier", GRID, "", weak), str(tmp_path))[0]
    assert summary.tables[0].rows[0][4:6] == ["0.800", "below"] and summary.tables[0].rows[0][-1] == "no"


# A victim above chance and attacks that count, in seconds: the settings of tests/test_report.py's tiny grid.
TINY = {"name": "tiny", "seed": 0,
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64, "augment": False},
        "model": {"name": "vgg11_bn", "cut": 2, "width": 0.125},
        "train": {"epochs": 3, "lr": 0.02, "schedule": "constant", "progress": False, "device": "cpu",
                  "precision": "fp32", "memory_format": "contiguous"},
        "defenses": [],
        "attacks": [{"name": "decoder", "epochs": 20, "patience": 2, "min_delta": 0.05, "train_size": 64, "blocks": 1,
                     "channels": 16, "lr": 0.003, "batch_size": 16, "score_size": 32},
                    {"name": "knn", "train_size": 64, "score_size": 32}]}
ARMS = [{"label": ""}, {"label": "+CEM", "add": [{"name": "cem"}]}]
SWEEP = {"label": "Noise", "preset": "noise.yaml", "key": "defenses.0.sigma", "values": [0.05, 0.1]}


def write(folder, body: dict, name: str = "frontier.yaml") -> str:
    (folder / "base.yaml").write_text(yaml.safe_dump(TINY))
    (folder / "noise.yaml").write_text(yaml.safe_dump({"base": "base.yaml",
                                                       "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}))
    path = folder / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", "runs": str(folder / "runs"), "out": str(folder / "out"),
                                    **body}))
    return str(path)


@pytest.mark.parametrize("change,fragment", [
    ({"arms": [{"label": ""}]}, "at least two"), ({"margin": 1.5}, "margin"),
    ({"sweeps": [{"label": "N", "key": "defenses.0.sigma", "values": [0.1], "preset": "noise.yaml"}]}, "two knob"),
    ({"sweeps": [{"label": "N", "key": "k", "values": [1, 2], "preset": "nope.yaml"}]}, "not found"),
    ({"sweeps": [{"label": "N", "key": "k", "values": [1, 2], "arms": ["+CEM"]}]}, "first arm")])
def test_bad_frontier_grids_are_one_line_config_errors(tmp_path, capsys, change: dict, fragment: str) -> None:
    body = {"name": "f", "arms": ARMS, "sweeps": [{"label": "N", "key": "k", "values": [1, 2]}], **change}
    with pytest.raises(ConfigError, match=fragment):
        load_grid(write(tmp_path, body), FrontierConfig)
    assert main(["frontier", write(tmp_path, body)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


@pytest.fixture(scope="module")
def tiny_frontier(tmp_path_factory) -> tuple[str, str]:
    """A two-setting frontier run once by `splitshield frontier` (local executor): (grid file, its printed summary)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("frontier")
    path = write(folder, {"name": "tiny-frontier", "seeds": [0], "attacks": ["decoder", "knn"], "audit": False,
                          "arms": ARMS, "sweeps": [SWEEP]})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["-q", "frontier", path]) == 0
    return path, printed.getvalue()


def test_frontier_command_runs_the_grid_and_reports_it(tiny_frontier, tmp_path) -> None:
    path, printed = tiny_frontier
    out = os.path.join(os.path.dirname(path), "out")
    tasks = sweep_tasks(load_grid(path, FrontierConfig))
    assert [t.label for t in tasks] == ["Noise 0.05 s0", "Noise 0.1 s0", "Noise 0.05+CEM s0", "Noise 0.1+CEM s0"]
    assert [d.name for d in tasks[2].cfg.defenses] == ["gaussian_noise", "cem"]  # the preset's noise, then CEM
    assert "## Frontier, train protocol" in printed and "report.html" in printed
    stored = load_stored(out)
    assert stored.kind == "frontier" and [r.task.label for r in stored.results] == [t.label for t in tasks]
    assert all(r.worst_mse("train", ["decoder", "knn"]) is not None for r in stored.results)  # points that count
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "accuracy-privacy frontier" in md and "MSE at matched accuracy" in md and "4 of 4 runs finished" in md
    assert os.path.isfile(os.path.join(out, "figures", "frontier-0-train.png"))
    doc = tmp_path / "docs" / "results.md"
    assert main(["report", out, "--markdown", str(doc)]) == 0  # includable in docs/results.md
    assert "tiny-frontier-frontier-0-train.png" in doc.read_text()
    assert main(["frontier", path, "--dry-run"]) == 0  # lists the runs, writes nothing


def test_the_process_executor_gives_the_local_frontier(tiny_frontier, tmp_path) -> None:
    local = load_stored(os.path.join(os.path.dirname(tiny_frontier[0]), "out"))
    path = write(tmp_path, {"name": "p", "seeds": [0], "attacks": ["decoder", "knn"], "audit": False, "arms": ARMS,
                            "sweeps": [SWEEP]})
    assert main(["-q", "frontier", path, "--executor", "process", "--workers", "2"]) == 0
    process = load_stored(str(tmp_path / "out"))

    def tables(stored: StoredGrid) -> list:  # noqa: ANN202
        return [t.rows for s in frontier_sections(stored, str(tmp_path / "figs")) for t in s.tables]

    assert tables(process) == tables(local)


def test_the_ray_executor_gives_the_local_frontier(tiny_frontier, tmp_path) -> None:
    pytest.importorskip("ray")
    local = load_stored(os.path.join(os.path.dirname(tiny_frontier[0]), "out"))
    path = write(tmp_path, {"name": "r", "seeds": [0], "attacks": ["decoder", "knn"], "audit": False, "arms": ARMS,
                            "sweeps": [SWEEP]})
    assert main(["-q", "frontier", path, "--executor", "ray", "--workers", "2"]) == 0  # a local Ray instance
    ray = load_stored(str(tmp_path / "out"))

    def tables(stored: StoredGrid) -> list:  # noqa: ANN202
        return [t.rows for s in frontier_sections(stored, str(tmp_path / "figs")) for t in s.tables]

    assert ray.kind == "frontier" and tables(ray) == tables(local)
