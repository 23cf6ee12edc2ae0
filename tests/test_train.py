"""The training loop: seeded determinism, exact resume, checkpoints, metrics log."""
from __future__ import annotations

import json
import os

import pytest
import torch

import splitshield.train.loop as loop
from splitshield.config import load_config
from splitshield.errors import CheckpointError
from splitshield.runs import read_metrics
from splitshield.train.build import load_run
from splitshield.train import train
from splitshield.train.checkpoint import CHECKPOINT, load_checkpoint


def params(run_dir: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(run_dir, CHECKPOINT))["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_seeded_runs_are_bit_identical_and_other_seeds_differ(tiny_raw, tmp_path) -> None:
    cfg = load_config(tiny_raw)
    r1 = train(cfg, out=str(tmp_path / "a"))
    r2 = train(cfg, out=str(tmp_path / "b"))
    assert_same(params(r1.run_dir), params(r2.run_dir))
    r3 = train(load_config(tiny_raw, ["seed=1"]), out=str(tmp_path / "c"))
    assert not torch.equal(params(r1.run_dir)["edge.1.0.weight"], params(r3.run_dir)["edge.1.0.weight"])


RESSFL = [{"name": "gaussian_noise", "sigma": 0.05},
          {"name": "ressfl", "pretrain_epochs": 1, "pretrain_max_steps": 2, "channels": 8, "blocks": 1}]


@pytest.mark.parametrize("numerics,defenses", [(("fp32", "contiguous"), []), (("bf16", "channels_last"), []),
                                               (("bf16", "channels_last"), RESSFL)])
def test_interrupted_then_resumed_equals_uninterrupted(tiny_raw, tmp_path, monkeypatch, numerics, defenses) -> None:
    # bfloat16 autocast + channels-last (the CPU default where the CPU has bf16) keeps the exact-resume guarantee,
    # also for a simulated attacker that runs under the same numerics (its layout set on first use either way)
    raw = dict(tiny_raw, defenses=defenses, train=dict(tiny_raw["train"], epochs=3, milestones=[2],
                                                       precision=numerics[0], memory_format=numerics[1]))
    cfg = load_config(raw)
    full = train(cfg, out=str(tmp_path / "full"))

    real_epoch = loop.train_epoch
    calls = {"n": 0}

    def dies_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=str(tmp_path / "cut"))
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    assert load_checkpoint(str(tmp_path / "cut" / CHECKPOINT))["epoch"] == 2
    resumed = train(cfg, resume_dir=str(tmp_path / "cut"))
    assert resumed.test_accuracy == full.test_accuracy
    assert_same(params(full.run_dir), params(resumed.run_dir))
    full_state = load_checkpoint(os.path.join(full.run_dir, CHECKPOINT))
    resumed_state = load_checkpoint(os.path.join(resumed.run_dir, CHECKPOINT))
    assert full_state["optimizer"]["param_groups"][0]["lr"] == resumed_state["optimizer"]["param_groups"][0]["lr"]
    assert [m["epoch"] for m in read_metrics(resumed.run_dir)] == [1, 2, 3]


def test_run_directory_holds_config_metrics_and_a_weights_only_checkpoint(tiny_raw, tmp_path) -> None:
    result = train(load_config(tiny_raw), out=str(tmp_path / "r"))
    assert load_config(os.path.join(result.run_dir, "config.yaml")) == load_config(tiny_raw)
    metrics = read_metrics(result.run_dir)
    assert metrics[0]["epoch"] == 1 and 0 <= metrics[0]["test_accuracy"] <= 1 and "train_loss" in metrics[0]
    state = torch.load(os.path.join(result.run_dir, CHECKPOINT), weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "data_rng", "epoch", "defenses"} <= set(state)
    run = load_run(result.run_dir)
    assert not run.model.training and run.epoch == 1


def test_training_learns_the_synthetic_task(tiny_raw, tmp_path) -> None:
    # 8 steps an epoch: BatchNorm running statistics need a few epochs before eval-mode accuracy follows. lr 0.02:
    # at the fixture's 0.05 (momentum 0.9) this width-0.125 net ends anywhere from 0.53 to 1.0 with the batch order.
    raw = dict(tiny_raw, data=dict(tiny_raw["data"], augment=False),
               train=dict(tiny_raw["train"], epochs=6, max_steps_per_epoch=None, milestones=[5], lr=0.02))
    result = train(load_config(raw), out=str(tmp_path / "learn"))
    assert result.test_accuracy > 0.85  # 4 classes: chance is 0.25


def test_retraining_into_a_finished_run_is_refused(tiny_raw, tmp_path) -> None:
    cfg = load_config(tiny_raw)
    train(cfg, out=str(tmp_path / "r"))
    with pytest.raises(CheckpointError, match="resume"):
        train(cfg, out=str(tmp_path / "r"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-a-checkpoint"])
def test_corrupt_checkpoint_is_a_one_line_error(tiny_raw, tmp_path, damage: str) -> None:
    result = train(load_config(tiny_raw), out=str(tmp_path / "r"))
    path = os.path.join(result.run_dir, CHECKPOINT)
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"\x00garbage" * 100)
    else:
        torch.save({"hello": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as err:
        load_run(result.run_dir)
    assert "\n" not in str(err.value) and "checkpoint" in str(err.value)


def test_metrics_are_json_lines(tiny_raw, tmp_path) -> None:
    result = train(load_config(tiny_raw), out=str(tmp_path / "r"))
    with open(os.path.join(result.run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 1 and rows[0]["lr"] == 0.05


def test_results_database_gets_one_row_per_run_and_kind(tiny_raw, tmp_path) -> None:
    from splitshield.resolve import resolve
    from splitshield.resultsdb import ResultsDB
    from splitshield.runs import write_result

    db = ResultsDB(str(tmp_path / "results.sqlite"))  # an explicit sink: nothing goes to a database otherwise
    result = train(load_config(tiny_raw), out=str(tmp_path / "r"), sink=db)
    write_result(result.run_dir, "audit", {"bound": 1.5}, db)
    write_result(result.run_dir, "audit", {"bound": 2.5}, db)  # replaces, never duplicates
    write_result(result.run_dir, "efficiency", {"x": 1})  # no sink: the run folder only
    rows = db.query(run_dir=os.path.abspath(result.run_dir))
    assert sorted(r["kind"] for r in rows) == ["audit", "train"]
    audit = next(r for r in rows if r["kind"] == "audit")
    assert audit["metrics"]["bound"] == 2.5 and audit["dataset"] == "synthetic" and audit["seed"] == 0
    train_row = next(r for r in rows if r["kind"] == "train")
    assert train_row["metrics"]["test_accuracy"] == result.test_accuracy
    assert train_row["config_hash"] == resolve(load_config(tiny_raw)).digest()  # the run's resolved identity


def test_results_database_is_safe_with_concurrent_writers(tiny_raw, tmp_path) -> None:
    import multiprocessing as mp

    from splitshield import resultsdb

    cfg = load_config(tiny_raw)
    db = str(tmp_path / "c.sqlite")  # does not exist yet: the workers race to create it and switch it to WAL
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_write_many, args=(db, cfg.to_dict(), i, start)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert len(resultsdb.query(db)) == 4 * 20


def _write_many(db: str, raw: dict, worker: int, start=None) -> None:  # noqa: ANN001
    from splitshield import resultsdb

    cfg = load_config(raw)
    if start is not None:
        start.wait(60)  # every worker opens the fresh database at the same moment
    for i in range(20):
        resultsdb.record(f"run-{worker}-{i}", "attack", cfg, {"mse": float(i)}, path=db)


def test_a_penalty_that_collapses_training_is_warned_about(caplog) -> None:
    from splitshield.train.loop import warn_if_collapsed

    # epoch 4 of a 6-epoch run at the literal CEM lambda = 16 (an earlier release): test accuracy at chance, penalty >> loss
    collapsed = {"epoch": 4, "train_accuracy": 0.209, "test_accuracy": 0.1, "train_loss": 2.06,
                 "penalty/cem": 5606.0}
    with caplog.at_level("WARNING", logger="splitshield.train.loop"):
        assert warn_if_collapsed(collapsed, 10)
    assert "penalty/cem" in caplog.text and "chance" in caplog.text
    assert not warn_if_collapsed(dict(collapsed, test_accuracy=0.85, train_accuracy=0.8), 10)  # healthy
    assert not warn_if_collapsed({k: v for k, v in collapsed.items() if k != "penalty/cem"}, 10)  # no defense term
    assert not warn_if_collapsed(dict(collapsed, **{"penalty/cem": 1.0}), 10)  # the task loss dominates
