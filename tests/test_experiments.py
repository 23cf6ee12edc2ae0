"""Grids, tables, sweeps and the one-config pipeline: expansion, resumption, the Table 1 arithmetic, outputs."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil

import pytest
import yaml

from splitshield.cli.main import main
from splitshield.errors import ConfigError
from splitshield.experiments.grid import execute, load_stored
from splitshield.experiments.results import RunResult
from splitshield.runs import AttackKey
from splitshield.experiments.pipeline import ensure_trained, run_pipeline
from splitshield.experiments.spec import SweepConfig, TableConfig, Task, load_grid, sweep_tasks, table_tasks
from splitshield.experiments.tables import build_table, columns_for, per_row_effects, to_csv, to_latex, to_markdown

TINY_ATTACK = {"name": "decoder", "epochs": 1, "train_size": 48, "blocks": 1, "channels": 8, "score_size": 24}


@pytest.fixture
def base_yaml(tiny_raw, tmp_path) -> str:
    raw = dict(tiny_raw, attacks=[TINY_ATTACK])
    raw["data"] = dict(raw["data"], augment=False)
    raw["train"] = dict(raw["train"], epochs=2, milestones=[2], max_steps_per_epoch=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    return str(tmp_path / "base.yaml")


def write_grid(tmp_path, body: dict) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "runs": str(tmp_path / "runs"),
                                    "out": str(tmp_path / "out"), **body}))
    return str(path)


ROWS = [{"label": "No_defense", "set": ["model.bottleneck_channels=null"], "arms": [""]},
        {"label": "Bottleneck"},
        {"label": "DistCorr", "defenses": [{"name": "nopeek", "alpha": 0.5}]},
        {"label": "Noise_Nopeek", "defenses": [{"name": "gaussian_noise", "sigma": 0.05}, {"name": "nopeek"}]}]
ARMS = [{"label": ""},
        {"label": "+noise", "add": [{"name": "gaussian_noise", "sigma": 0.05}], "unless": ["gaussian_noise"]},
        {"label": "+CEM", "add": [{"name": "cem"}]}]


def test_table_tasks_are_rows_times_arms_times_seeds_with_stable_folders(base_yaml, tmp_path) -> None:
    grid = load_grid(write_grid(tmp_path, {"name": "t", "seeds": [0, 1], "rows": ROWS, "arms": ARMS}), TableConfig)
    tasks = table_tasks(grid)
    assert len(tasks) == 2 * (1 + 3 * 3)  # No_defense in its one arm, three rows x three arms, two seeds
    assert [t.label for t in tasks[:4]] == ["No_defense s0", "Bottleneck s0", "Bottleneck+noise s0",
                                            "Bottleneck+CEM s0"]
    assert tasks[0].cfg.model.bottleneck_channels is None and tasks[1].cfg.model.bottleneck_channels == 8
    # added components go in at their stage: the noise before NoPeek (an objective defense), CEM last
    dist_noise = next(t for t in tasks if t.label == "DistCorr+noise s0")
    assert [d.name for d in dist_noise.cfg.defenses] == ["gaussian_noise", "nopeek"]
    # CEM's own noise is written out (resolve.py), so Bottleneck+CEM transmits with the noise of Bottleneck+noise
    assert [d.name for d in tasks[3].cfg.defenses] == ["gaussian_noise", "cem"]
    assert tasks[3].cfg.defenses[1].params["lam"] > 0
    # unless: Noise_Nopeek has the noise already, so its +noise arm is the row itself (one folder, trained once)
    nn = {t.arm: t for t in tasks if t.group == "Noise_Nopeek" and t.seed == 0}
    assert nn["+noise"].run_dir == nn[""].run_dir != nn["+CEM"].run_dir
    # and DistCorr+noise is the very experiment Noise_Nopeek is: one folder for the three cells, per seed
    dc_noise = next(t for t in tasks if t.label == "DistCorr+noise s0")
    assert dc_noise.run_dir == nn[""].run_dir
    dc_cem = next(t for t in tasks if t.label == "DistCorr+CEM s0")  # CEM's noise written out, at CEM's sigma
    assert [(d.name, d.params.get("sigma")) for d in dc_cem.cfg.defenses] == [
        ("gaussian_noise", 0.025), ("nopeek", None), ("cem", 0.025)]
    assert len({t.run_dir for t in tasks}) == len(tasks) - 2 * 2
    other = load_grid(write_grid(tmp_path, {"name": "other", "seeds": [0, 1], "rows": ROWS, "arms": ARMS}),
                      TableConfig)
    assert [t.run_dir for t in table_tasks(other)] == [t.run_dir for t in tasks]


def test_grid_errors_are_config_errors(base_yaml, tmp_path) -> None:
    with pytest.raises(ConfigError, match="valid keys"):
        load_grid(write_grid(tmp_path, {"name": "t", "sedes": [0]}), TableConfig)
    with pytest.raises(ConfigError, match="protocols"):
        load_grid(write_grid(tmp_path, {"name": "t", "protocols": ["test"]}), TableConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_grid(write_grid(tmp_path, {"name": "t", "base": "missing.yaml"}), TableConfig)
    with pytest.raises(ConfigError, match="not an arm"):
        load_grid(write_grid(tmp_path, {"name": "t", "rows": [{"label": "A", "arms": ["+CEN"]}], "arms": ARMS}),
                  TableConfig)
    grid = load_grid(write_grid(tmp_path, {"name": "t", "set": ["train.epochz=2"], "rows": ROWS}), TableConfig)
    with pytest.raises(ConfigError, match="epochz"):
        table_tasks(grid)


def test_sweep_points_that_are_the_same_experiment_share_a_folder_and_run_once(base_yaml, tmp_path) -> None:
    noise = [{"name": "gaussian_noise", "sigma": 0.05}]
    cem = {"name": "cem", "lam": 0.3}
    grid = load_grid(write_grid(tmp_path, {"name": "s", "protocols": ["train"], "audit": False,
                                           "arms": [{"label": ""}, {"label": "+CEM", "add": [cem]}], "sweeps": [
        {"label": "sigma", "key": "defenses.0.sigma", "values": [0.05, 0.1], "defenses": noise},
        {"label": "lam", "key": "defenses.1.lam", "values": [0.3], "arms": [""], "defenses": noise + [cem]}]}),
        SweepConfig)
    tasks = sweep_tasks(grid)
    assert [t.label for t in tasks] == ["sigma 0.05 s0", "sigma 0.1 s0", "sigma 0.05+CEM s0", "sigma 0.1+CEM s0",
                                        "lam 0.3 s0"]
    assert tasks[1].cfg.defenses[0].params["sigma"] == 0.1
    assert tasks[4].run_dir == tasks[2].run_dir  # lambda 0.3 on sigma 0.05 is the "+CEM" point
    results = execute(tasks, grid)
    assert [r.task for r in results] == tasks and all(r.ok for r in results)
    assert results[4].attacks == results[2].attacks
    assert len([d for d in os.listdir(grid.runs) if not d.endswith(".lock")]) == 4


def test_sweep_labels_spell_a_null_point_as_the_grid_does(base_yaml, tmp_path) -> None:
    grid = load_grid(write_grid(tmp_path, {"name": "s", "protocols": ["train"], "audit": False, "sweeps": [
        {"label": "training images", "key": "data.train_size", "values": [None, 64]}]}), SweepConfig)
    assert [t.label for t in sweep_tasks(grid)] == ["training images null s0", "training images 64 s0"]


def result(group: str, arm: str, seed: int, acc: float, mse_train: float, mse_infer: float,
           counts: bool = True) -> RunResult:
    task = Task(group, arm, seed, None, None, f"/x/{group}-{arm}-{seed}")  # type: ignore[arg-type]
    flags = {"counts": counts, "status": "ok" if counts else "did not learn"}
    attacks = {AttackKey("decoder", "train"): {"mse": mse_train, **flags},
               AttackKey("decoder", "infer"): {"mse": mse_infer, **flags}}
    return RunResult(task.run_dir, {"test_accuracy": acc}, attacks, task=task)


def test_table_means_spreads_averages_and_gains_match_a_hand_computation() -> None:
    results = [result("No_defense", "", 0, 0.9, 0.01, 0.01),
               result("A", "", 0, 0.80, 0.010, 0.020), result("A", "", 1, 0.82, 0.012, 0.022),
               result("A", "+CEM", 0, 0.79, 0.015, 0.025), result("A", "+CEM", 1, 0.81, 0.017, 0.027),
               result("B", "", 0, 0.70, 0.030, 0.040), result("B", "+CEM", 0, 0.70, 0.033, 0.050)]
    table = build_table("t", results, columns_for(["decoder"], ["train", "infer"], False))
    labels = [r.label for r in table.rows]
    assert labels == ["No_defense", "A", "A+CEM", "B", "B+CEM", "Average", "Average +CEM", "Gain +CEM vs row"]
    assert table.cell(table.rows[1], 0) == "81.00 ± 1.41" and table.cell(table.rows[1], 1) == "0.0110 ± 0.0014"
    avg_without, avg_with, gain = table.rows[5:]
    assert avg_without.values[1] == [pytest.approx((0.011 + 0.030) / 2)]  # No_defense is not averaged
    assert avg_with.values[1] == [pytest.approx((0.016 + 0.033) / 2)]
    assert gain.values[1] == [pytest.approx(100 * (0.0245 / 0.0205 - 1))]
    assert gain.values[0] == [pytest.approx((80.0 + 70.0) / 2 - (81.0 + 70.0) / 2)]
    assert table.cell(gain, 0) == "-0.50 pts" and table.cell(gain, 1) == "+19.5%"
    md = to_markdown(table)
    assert "| A+CEM | 80.00 ± 1.41 | 0.0160 ± 0.0014 | 0.0260 ± 0.0014 |" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[1]["method"] == "A" and float(rows[1]["attack:decoder:train_mean"]) == pytest.approx(0.011)
    assert rows[1]["accuracy_n"] == "2" and rows[0]["accuracy_std"] == ""
    tex = to_latex(table)
    assert "No\\_defense" in tex and "$\\pm$" in tex and tex.count("\\\\") == len(table.rows) + 1
    effects = per_row_effects(results, table.columns)
    # the change of the seed means, then seed by seed (paired: s0 with s0, s1 with s1); B has one seed only
    assert effects[0] == ["A", "+CEM vs row", "-1.00 pts (-1.00, -1.00)", "+45.5% (+50.0%, +41.7%)",
                          "+23.8% (+25.0%, +22.7%)"]
    assert effects[1] == ["B", "+CEM vs row", "+0.00 pts", "+10.0%", "+25.0%"]


def test_a_result_that_did_not_learn_is_marked_and_left_out_of_the_averages() -> None:
    results = [result("A", "", 0, 0.80, 0.010, 0.020), result("A", "+CEM", 0, 0.80, 0.2, 0.2, counts=False),
               result("A", "+CEM", 1, 0.80, 0.2, 0.2, counts=False),
               result("B", "", 0, 0.70, 0.030, 0.040), result("B", "+CEM", 0, 0.70, 0.033, 0.050),
               result("B", "+CEM", 1, 0.70, 0.2, 0.2, counts=False)]
    table = build_table("t", results, columns_for(["decoder"], ["train"], False))
    a_cem, b_cem = table.rows[1], table.rows[3]
    assert table.cell(a_cem, 1) == "did not learn" and table.cell(a_cem, 0) == "80.00 ± 0.00"
    assert table.cell(b_cem, 1) == "0.0330 (1 of 2 seeds)"  # the seed that did not learn is not in the mean
    avg_with = table.rows[5]
    assert avg_with.label == "Average +CEM" and table.cell(avg_with, 1) == "incomplete"  # never averages A's 0.2
    # per row, a comparison uses the seeds that count in both arms (paired): B's seed 1 did not learn in +CEM
    effects = per_row_effects(results + [result("B", "", 1, 0.72, 0.050, 0.060)], table.columns)
    assert effects[0] == ["A", "+CEM vs row", "+0.00 pts [1 of 2 seeds]", "n/a"]  # A+CEM learned at no seed
    assert effects[1] == ["B", "+CEM vs row", "-1.00 pts (+0.00, -2.00)", "+10.0% [1 of 2 seeds]"]


def test_sweep_point_changes_are_paired_over_seeds_and_shown_seed_by_seed() -> None:
    from dataclasses import replace

    from splitshield.experiments.sweep import point_effects

    def at(r: RunResult, value: int) -> RunResult:
        r.task = replace(r.task, value=value)
        return r

    results = [at(result("size", "", 0, 0.85, 0.010, 0.02), 5000), at(result("size", "", 1, 0.86, 0.012, 0.02), 5000),
               at(result("size", "+CEM", 0, 0.84, 0.0115, 0.02), 5000),
               at(result("size", "+CEM", 1, 0.86, 0.0126, 0.02), 5000),
               at(result("size", "", 0, 0.90, 0.008, 0.02), 60000),
               at(result("size", "+CEM", 0, 0.90, 0.2, 0.2, counts=False), 60000)]
    grid = {"sweeps": [{"label": "size", "values": [5000, 60000]}], "arms": [{"label": ""}, {"label": "+CEM"}]}
    rows = point_effects(results, grid, "decoder", "train").rows
    # means 0.011 -> 0.01205 (+9.5%); s0 +15.0%, s1 +5.0%; accuracy 85.5 -> 85.0
    assert rows[0][-1] == "-0.50 pts (-1.00, +0.00), MSE +9.5% (+15.0%, +5.0%)"
    assert rows[1][-1] == "n/a"  # the +CEM attack did not learn: no change is quoted
    none_point = [at(result("size", "", 0, 0.9, 0.01, 0.02), None)]
    grid["sweeps"][0]["values"] = [None]
    assert point_effects(none_point, grid, "decoder", "train").rows[0][1] == "null"  # as the grid spells it


def scored(group: str, arm: str, seed: int, acc: float, **records: tuple[float, str]) -> RunResult:
    """A hand-built run with any attacks: ``gan_train=(0.008, "not converged")``, status "ok" for one that counts."""
    task = Task(group, arm, seed, None, None, f"/x/{group}-{arm}-{seed}")  # type: ignore[arg-type]
    attacks = {AttackKey(*key.split("_")): {"mse": mse, "counts": why == "ok", "status": why}
               for key, (mse, why) in records.items()}
    return RunResult(task.run_dir, {"test_accuracy": acc}, attacks, task=task)


def test_worst_case_is_the_lowest_mse_among_the_attacks_that_count() -> None:
    from splitshield.experiments.results import Worst

    attacks = ("decoder", "gan", "knn")
    r = scored("A", "", 0, 0.8, decoder_train=(0.010, "ok"), gan_train=(0.006, "not converged"),
               knn_train=(0.020, "ok"), decoder_infer=(0.012, "ok"), gan_infer=(0.011, "ok"),
               knn_infer=(0.009, "did not learn"))
    # the GAN's 0.006 does not count (not converged) and kNN's 0.020 is the highest: the decoder is the worst case
    assert r.worst_mse("train", attacks) == Worst(0.010, "decoder")
    assert r.worst_mse("infer", attacks) == Worst(0.011, "gan")  # kNN's 0.009 did not learn
    assert r.worst_mse("train", ("knn",)) == Worst(0.020, "knn")
    assert r.worst_mse("train", ("gan",)) is None  # nothing counts
    assert r.worst_mse("train", ("decoder", "rmle")) is None  # rMLE has not run: a minimum over part would flatter
    tie = scored("A", "", 0, 0.8, decoder_train=(0.01, "ok"), gan_train=(0.01, "ok"))
    assert tie.worst_mse("train", ("gan", "decoder")).attack == "gan"  # the first listed on a tie
    assert RunResult("/x", error="boom").worst_mse("train", attacks) is None


def test_table_worst_column_averages_gains_and_row_effects_use_the_per_seed_minimum() -> None:
    ok = "ok"
    results = [  # A: seed 0's worst is the GAN (the decoder's 0.005 did not converge), seed 1's the decoder
        scored("A", "", 0, 0.80, decoder_train=(0.005, "not converged"), gan_train=(0.012, ok), knn_train=(0.03, ok)),
        scored("A", "", 1, 0.82, decoder_train=(0.010, ok), gan_train=(0.011, ok), knn_train=(0.03, ok)),
        scored("A", "+CEM", 0, 0.79, decoder_train=(0.016, ok), gan_train=(0.015, ok), knn_train=(0.04, ok)),
        scored("A", "+CEM", 1, 0.81, decoder_train=(0.013, ok), gan_train=(0.014, ok), knn_train=(0.04, ok)),
        scored("B", "", 0, 0.70, decoder_train=(0.020, ok), gan_train=(0.030, ok), knn_train=(0.05, "did not learn")),
        scored("B", "+CEM", 0, 0.70, decoder_train=(0.2, "did not learn"), gan_train=(0.2, "did not learn"),
               knn_train=(0.2, "did not learn"))]
    columns = columns_for(["decoder", "gan", "knn"], ["train"], False)
    assert [c.title for c in columns] == ["Acc. (%)", "Dec. MSE Train", "GAN MSE Train", "kNN MSE Train",
                                          "Worst MSE Train"]
    table = build_table("t", results, columns)
    rows = {r.label: r for r in table.rows}
    assert rows["A"].values[4] == [0.012, 0.010]  # per seed, not the decoder's uncounted 0.005 nor kNN's 0.03
    assert table.cell(rows["A"], 4) == "0.0110 ± 0.0014 (GAN 1, Dec. 1)"
    assert table.cell(rows["A"], 1) == "0.0100 (1 of 2 seeds)"  # per-attack cells keep their marks
    assert table.cell(rows["A+CEM"], 4) == "0.0140 ± 0.0014 (GAN 1, Dec. 1)"  # 0.015 (GAN), 0.013 (decoder)
    assert table.cell(rows["B"], 4) == "0.0200 (Dec.)" and table.cell(rows["B"], 3) == "did not learn"
    assert table.cell(rows["B+CEM"], 4) == "did not learn"  # no attack counts: no worst case
    assert rows["Average +CEM"].values[4] == [] and table.cell(rows["Average +CEM"], 4) == "incomplete"
    assert rows["Average"].values[4] == [pytest.approx((0.011 + 0.020) / 2)]
    # with B's +CEM arm learning at seed 0, the gain is the change of the averages of the worst column
    results[-1] = scored("B", "+CEM", 0, 0.70, decoder_train=(0.024, ok), gan_train=(0.022, ok),
                         knn_train=(0.05, ok))
    table = build_table("t", results, columns)
    rows = {r.label: r for r in table.rows}
    assert rows["Average +CEM"].values[4] == [pytest.approx((0.014 + 0.022) / 2)]
    assert rows["Gain +CEM vs row"].values[4] == [pytest.approx(100 * (0.018 / 0.0155 - 1))]
    effects = per_row_effects(results, table.columns)
    assert effects[0][:2] == ["A", "+CEM vs row"] and effects[0][-1] == "+27.3% (+25.0%, +30.0%)"
    assert effects[1][-1] == "+10.0%"  # B: 0.020 -> 0.022
    assert "by gan decoder" in to_csv(table)  # the CSV names the attack behind each seed's worst case


def test_sweep_points_show_the_worst_case_over_the_attacks() -> None:
    from dataclasses import replace

    from splitshield.experiments.sweep import point_effects

    def at(r: RunResult, value: float) -> RunResult:
        r.task = replace(r.task, value=value)
        return r

    ok = "ok"
    results = [at(scored("s", "", 0, 0.9, decoder_train=(0.010, ok), gan_train=(0.008, ok)), 0.1),
               at(scored("s", "+CEM", 0, 0.9, decoder_train=(0.012, ok), gan_train=(0.002, "not converged")), 0.1)]
    grid = {"sweeps": [{"label": "s", "values": [0.1]}], "arms": [{"label": ""}, {"label": "+CEM"}],
            "attacks": ["decoder", "gan"]}
    row = point_effects(results, grid, "worst", "train").rows[0]
    assert row[2:6] == ["90.00", "0.0080", "90.00", "0.0120"] and row[-1] == "+0.00 pts, MSE +50.0%"


def test_a_failed_run_is_na_in_its_cell_and_named_under_the_table() -> None:
    task = Task("A", "+CEM", 0, None, None, "/x")  # type: ignore[arg-type]
    failed = RunResult("/x", error="RuntimeError: boom", task=task)
    table = build_table("t", [result("A", "", 0, 0.8, 0.01, 0.02), failed],
                        columns_for(["decoder"], ["train"], False))
    assert table.cell(table.rows[1], 0) == "n/a" and "failed or not run: A+CEM s0" in to_markdown(table)


def test_pipeline_reuses_every_finished_step_and_refuses_a_folder_of_another_config(base_yaml, tmp_path) -> None:
    from splitshield.config import load_config

    cfg = load_config(base_yaml, ["defenses=[{name: gaussian_noise, sigma: 0.05}]"])
    out = str(tmp_path / "run")
    first = run_pipeline(cfg, out, protocols=["train", "infer"])
    assert first.computed == ["train", "attack-decoder-train", "attack-decoder-infer", "audit"]
    assert first.efficiency["edge_params"] > 0 and first.audit["degenerate"] is False
    again = run_pipeline(cfg, out, protocols=["train", "infer"])
    assert again.computed == []
    assert {k: v["mse"] for k, v in again.attacks.items()} == {k: v["mse"] for k, v in first.attacks.items()}
    changed = load_config(base_yaml, ["defenses=[{name: gaussian_noise, sigma: 0.05}]", "attacks.0.epochs=2"])
    with pytest.raises(ConfigError, match="another config"):
        ensure_trained(changed, out)  # a folder never silently mixes two experiments


def test_an_archived_run_is_reused_from_its_results_and_a_step_needing_the_model_fails_in_one_line(
        base_yaml, tmp_path) -> None:
    import shutil
    import subprocess

    from splitshield.config import load_config
    from splitshield.errors import CheckpointError

    cfg = load_config(base_yaml, ["defenses=[{name: gaussian_noise, sigma: 0.05}]"])
    runs, archive = tmp_path / "runs", tmp_path / "evidence"
    first = run_pipeline(cfg, str(runs / "run"), audit=False)
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "archive-runs.sh")
    subprocess.run(["bash", script, str(archive), str(runs)], check=True, capture_output=True)
    assert not (archive / "run" / "checkpoint.pt").exists()
    again = run_pipeline(cfg, str(archive / "run"), audit=False)  # no training, no attack: the stored records
    assert again.computed == [] and again.attacks == first.attacks and again.train == first.train
    with pytest.raises(CheckpointError, match="archived run.*delete the folder"):
        run_pipeline(cfg, str(archive / "run"), protocols=["infer"], audit=False)
    changed = load_config(base_yaml, ["defenses=[{name: gaussian_noise, sigma: 0.1}]"])
    with pytest.raises(ConfigError, match="another config"):
        ensure_trained(changed, str(archive / "run"))
    shutil.rmtree(archive / "run")


def test_pipeline_resumes_an_interrupted_training_to_the_uninterrupted_result(base_yaml, tmp_path) -> None:
    import torch

    from splitshield.config import load_config
    from splitshield.train import train

    cfg = load_config(base_yaml)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    ensure_trained(cfg, whole)
    train(load_config(base_yaml, ["train.epochs=1"]), out=cut)  # the state of a 2-epoch run stopped after epoch 1
    shutil.copy(os.path.join(whole, "config.yaml"), os.path.join(cut, "config.yaml"))
    os.remove(os.path.join(cut, "results", "train.json"))
    assert ensure_trained(cfg, cut) is True and ensure_trained(cfg, cut) is False
    a = torch.load(os.path.join(whole, "checkpoint.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_table_command_writes_markdown_csv_latex_and_resumes(base_yaml, tmp_path, capsys) -> None:
    grid = write_grid(tmp_path, {"name": "tiny-table", "protocols": ["train"],
                                 "arms": [{"label": ""}, {"label": "+CEM", "add": [{"name": "cem"}]}],
                                 "rows": [{"label": "Noise", "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}]})
    assert main(["table", grid]) == 0
    out = capsys.readouterr().out
    assert "| Noise+CEM |" in out and "Gain +CEM vs row" in out
    stored = load_stored(str(tmp_path / "out"))
    assert stored.kind == "table" and [r.task.label for r in stored.results] == ["Noise s0", "Noise+CEM s0"]
    md = (tmp_path / "out" / "table.md").read_text()
    acc = 100 * stored.results[1].train["test_accuracy"]
    assert f"| Noise+CEM | {acc:.2f} |" in md
    assert (tmp_path / "out" / "table.tex").read_text().startswith("\\begin{tabular}")
    stamps = {p: os.path.getmtime(os.path.join(p, "checkpoint.pt")) for p in (r.task.run_dir for r in stored.results)}
    assert main(["table", grid]) == 0
    assert "reused" in capsys.readouterr().err
    assert all(os.path.getmtime(os.path.join(p, "checkpoint.pt")) == t for p, t in stamps.items())


def test_sweep_command_draws_curves_scatter_reconstructions_and_costs(base_yaml, tmp_path, capsys) -> None:
    # enough training for a victim above chance and an attack that beats the mean image: points that count
    grid = write_grid(tmp_path, {"name": "tiny-sweep", "protocols": ["train"], "set": [
        "train.epochs=3", "train.lr=0.02", "train.max_steps_per_epoch=null", "attacks.0.epochs=10",
        "attacks.0.channels=32", "attacks.0.lr=0.003", "attacks.0.batch_size=16", "attacks.0.train_size=null",
        "attacks.0.epochs=40", "attacks.0.patience=2", "attacks.0.min_delta=0.05"],
        "sweeps": [
        {"label": "cut", "key": "model.cut", "values": [1, 2],
         "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}]})
    assert main(["sweep", grid]) == 0
    from splitshield.experiments.sweep import sweep_sections

    sections = sweep_sections(load_stored(str(tmp_path / "out")), str(tmp_path / "figs"))
    images = [path for s in sections for _, path in s.images]
    assert {os.path.basename(p) for p in images} == {"tradeoff-0-decoder.png", "entropy-scatter.png",
                                                     "reconstructions-0.png"}
    for path in images:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    costs = sections[-1].tables[0].rows
    assert [row[0] for row in costs] == ["vgg11_bn cut 1", "vgg11_bn cut 2"]
    assert int(costs[0][2].replace(",", "")) < int(costs[1][2].replace(",", ""))  # fewer layers on the edge


def test_run_command_trains_attacks_audits_and_reports(base_yaml, tmp_path, capsys) -> None:
    out = tmp_path / "one"
    argv = ["run", base_yaml, "--set", "defenses=[{name: gaussian_noise, sigma: 0.05}]", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "results" / "attack-decoder-train.json").read_text())
    assert f"MSE {record['mse']:.5f}" in printed and "audit: I(x; z) <=" in printed
    assert (out / "results" / "audit.json").exists() and (out / "report.html").exists()
    assert load_stored(str(out)).kind == "run"
    shutil.rmtree(out / "results")
    os.remove(out / "grid.json")
    assert main(argv) == 0  # results deleted: the trained model is reused, attack and audit are recomputed


def test_a_run_folder_is_locked_while_a_pipeline_works_in_it(tmp_path) -> None:
    fcntl = pytest.importorskip("fcntl")
    from splitshield.experiments.pipeline import run_lock

    run_dir = str(tmp_path / "grid" / "run")
    with run_lock(run_dir):
        with open(run_dir + ".lock", "a") as other:  # a second opener (another process or executor worker)
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(run_dir + ".lock", "a") as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
