"""Grid executors: the retry scheduler against fakes; a 4-run grid under local, process and Ray giving the same table,
every result in the database exactly once; Ray retrying a task that fails once; a grid resumed without redoing runs.
"""
from __future__ import annotations

import copy
import os
import sys
from collections import Counter

import pytest
import torch
import yaml

from splitshield.experiments.executors import run_with_retries
from splitshield.experiments.grid import execute
from splitshield.experiments.results import RunResult
from splitshield.experiments.tasks import Job, Progress, run_task
from splitshield.runs import AttackKey
from splitshield.experiments.spec import TableConfig, Task, load_grid, table_tasks
from splitshield.experiments.tables import build_table, columns_for, to_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ["attack-decoder-train", "efficiency", "train"]


# --- the scheduler, with fake handles: no processes ---
def fake_tasks(n: int) -> list[Task]:
    return [Task(f"t{i}", "", 0, None, None, f"/runs/t{i}") for i in range(n)]  # type: ignore[arg-type]


def schedule(tasks: list[Task], outcomes: dict[str, list], retries: int) -> tuple[list[RunResult], list[str]]:
    """Run ``tasks`` where attempt k of task t ends with outcomes[t.group][k] ("ok", "fail" or an exception);
    tasks finish in reverse submission order. Returns the results and the submission log."""
    submitted: list[str] = []
    attempt: Counter = Counter()

    def submit(i: int) -> tuple[int, int]:
        submitted.append(tasks[i].group)
        attempt[i] += 1
        return i, attempt[i]

    def wait_one(handles: list) -> tuple:
        i, k = handles[-1]
        outcome = outcomes[tasks[i].group][k - 1]
        if isinstance(outcome, BaseException):
            return handles[-1], outcome
        return handles[-1], RunResult(tasks[i].run_dir, {"test_accuracy": 1.0}, error="" if outcome == "ok" else "boom",
                                      task=tasks[i])

    return run_with_retries(tasks, submit, wait_one, Progress(len(tasks), open(os.devnull, "w")), retries), submitted


def test_scheduler_retries_failures_and_returns_results_in_task_order() -> None:
    tasks = fake_tasks(3)
    outcomes = {"t0": ["ok"], "t1": ["fail", RuntimeError("worker died\ntraceback"), "ok"], "t2": ["fail"] * 3}
    results, submitted = schedule(tasks, outcomes, retries=2)
    assert [r.task for r in results] == tasks
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error == "boom"
    assert Counter(submitted) == {"t0": 1, "t1": 3, "t2": 3}  # 1 + 2 retries at most


def test_scheduler_without_retries_reports_each_failure_once() -> None:
    tasks = fake_tasks(2)
    results, submitted = schedule(tasks, {"t0": [ValueError("bad")], "t1": ["ok"]}, retries=0)
    assert submitted == ["t0", "t1"]
    assert not results[0].ok and results[0].error == "ValueError: bad" and results[1].ok


# --- a real 4-run grid: 1 defense x {w/o, w/ CEM} x 2 seeds ---
def write_grid(tmp: str) -> TableConfig:
    from conftest import TINY

    raw = copy.deepcopy(TINY)
    raw["attacks"] = [{"name": "decoder", "epochs": 1, "train_size": 48, "blocks": 1, "channels": 8,
                       "score_size": 24}]
    raw["data"]["augment"] = False
    raw["train"].update(epochs=2, milestones=[2], max_steps_per_epoch=3)
    with open(os.path.join(tmp, "base.yaml"), "w") as fh:
        yaml.safe_dump(raw, fh)
    grid = {"name": "g", "base": "base.yaml", "runs": os.path.join(tmp, "runs"), "seeds": [0, 1],
            "protocols": ["train"], "audit": False,
            "arms": [{"label": ""}, {"label": "+CEM", "add": [{"name": "cem", "lam": 16}]}],
            "rows": [{"label": "Noise", "defenses": [{"name": "gaussian_noise", "sigma": 0.05}]}]}
    with open(os.path.join(tmp, "grid.yaml"), "w") as fh:
        yaml.safe_dump(grid, fh)
    return load_grid(os.path.join(tmp, "grid.yaml"), TableConfig)


def flaky_runner(task: Task, job: Job) -> RunResult:
    """Fails the first attempt of every task (a flag file next to its run folder), then runs it for real."""
    flag = task.run_dir + ".attempted"
    if not os.path.exists(flag):
        os.makedirs(os.path.dirname(flag), exist_ok=True)
        open(flag, "w").close()
        return RunResult(task.run_dir, error="RuntimeError: injected failure", task=task)
    return run_task(task, job)


def run_grid(tmp_path_factory, executor: str, **options) -> dict:  # noqa: ANN001, ANN003
    """The grid in a fresh folder with its own results database (the runs are computed, not reused)."""
    tmp = str(tmp_path_factory.mktemp(executor))
    db = os.path.join(tmp, "results.sqlite")  # handed to the executor, which hands it to every worker
    grid = write_grid(tmp)
    tasks = table_tasks(grid)
    results = execute(tasks, grid, executor, db=db, **options)
    table = build_table("g", results, columns_for(["decoder"], ["train"], False))
    return {"grid": grid, "tasks": tasks, "results": results, "table": to_markdown(table), "db": db, "tmp": tmp}


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:  # noqa: ANN001
    return run_grid(tmp_path_factory, "local")


@pytest.fixture(scope="module")
def process(tmp_path_factory) -> dict:  # noqa: ANN001
    return run_grid(tmp_path_factory, "process", workers=2)


@pytest.fixture(scope="module")
def ray_session():  # noqa: ANN201
    """A local Ray instance (2 CPUs) whose workers can import this module (for ``flaky_runner``)."""
    ray = pytest.importorskip("ray")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE] + ([saved] if saved else []))  # workers start with it
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def ray_grid(tmp_path_factory, ray_session) -> dict:  # noqa: ANN001
    return run_grid(tmp_path_factory, "ray", runner=flaky_runner, retries=1)


def records(run: dict) -> list:
    return [(r.task.label, r.train["test_accuracy"], r.attacks[AttackKey("decoder", "train")]["mse"])
            for r in run["results"]]


def assert_same_grid(run: dict, reference: dict) -> None:
    assert [r.task.label for r in run["results"]] == [t.label for t in reference["tasks"]]  # task order
    assert run["table"] == reference["table"]
    assert records(run) == records(reference)  # the numbers themselves, not only their rounding


def assert_in_database_once(run: dict) -> None:
    from splitshield import resultsdb

    keys = Counter((r["run_dir"], r["kind"]) for r in resultsdb.query(run["db"]))
    assert set(keys.values()) == {1}
    assert sorted(keys) == sorted((os.path.abspath(t.run_dir), k) for t in run["tasks"] for k in KINDS)


def test_local_grid_has_four_runs_each_in_the_database_once(local) -> None:
    assert len(local["tasks"]) == 4 and all(r.ok for r in local["results"])
    assert "failed or not run" not in local["table"]  # every run finished (tiny victims: their MSEs do not count)
    assert_in_database_once(local)


def test_process_executor_gives_the_local_table(local, process) -> None:
    assert all(r.ok for r in process["results"])
    assert_same_grid(process, local)
    assert_in_database_once(process)


def test_ray_executor_retries_a_failed_task_and_gives_the_local_table(local, ray_grid) -> None:
    assert all(r.ok for r in ray_grid["results"])
    assert all(os.path.exists(t.run_dir + ".attempted") for t in ray_grid["tasks"])  # every first attempt failed
    assert_same_grid(ray_grid, local)
    assert_in_database_once(ray_grid)


def test_an_interrupted_grid_resumes_without_redoing_finished_runs(ray_grid, monkeypatch) -> None:
    import shutil

    lost = ray_grid["tasks"][1]
    shutil.rmtree(lost.run_dir)  # as if the grid had stopped before this run
    again = execute(ray_grid["tasks"], ray_grid["grid"], "ray", db=ray_grid["db"])
    assert [bool(r.computed) for r in again] == [False, True, False, False]
    assert to_markdown(build_table("g", again, columns_for(["decoder"], ["train"], False))) == ray_grid["table"]
    assert_in_database_once(ray_grid)


def test_missing_ray_is_a_one_line_error(monkeypatch) -> None:
    from splitshield.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install 'splitshield\[ray\]'"):
        execute(fake_tasks(1), TableConfig(name="g", base="x.yaml", runs="/tmp/none"), "ray")


def test_process_worker_start_sets_its_thread_count() -> None:
    from splitshield.experiments.executors import _init_worker

    class Slots:
        def get(self) -> None:
            return None

    before = torch.get_num_threads()
    try:
        _init_worker(1, Slots())
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_task_with_bad_input_fails_in_one_line_and_a_crash_keeps_its_traceback(monkeypatch, caplog) -> None:
    from splitshield.errors import DatasetNotFound
    from splitshield.experiments import pipeline

    task = fake_tasks(1)[0]
    for exc, traceback in ((DatasetNotFound("fashion-mnist not found; install it"), False),
                           (RuntimeError("CUDA error"), True)):
        def fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise exc
        monkeypatch.setattr(pipeline, "run_pipeline", fail)
        caplog.clear()
        result = run_task(task, Job(("decoder",), ("train",), False))
        assert not result.ok and result.error == f"{type(exc).__name__}: {exc}"
        assert any(r.exc_info for r in caplog.records) is traceback
