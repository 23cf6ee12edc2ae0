"""Running a grid's tasks: executors (a registry), progress with time remaining, results collected per task.

Every task runs the resumable pipeline, so a grid started again skips finished runs and resumes an interrupted
one. A task that fails is reported and the grid goes on; the failures are listed at the end (nothing already
computed is lost, and running the grid again retries only what is missing).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from splitshield.experiments import executors  # noqa: F401  (registers the process and ray executors)
from splitshield.experiments.spec import GridCommon, Task
from splitshield.experiments.tasks import EXECUTORS, Progress, TaskResult

log = logging.getLogger(__name__)

def execute(tasks: Sequence[Task], grid: GridCommon, executor: str = "local", **options: Any) -> list[TaskResult]:
    """Run ``tasks`` with the named executor; every executor returns the results in task order."""
    run = EXECUTORS.get(executor)
    # Two tasks of a grid can be the same experiment (a sweep's shared point): run each folder once, so parallel
    # executors never train into one folder twice, and give every task its folder's result.
    first: dict[str, Task] = {}
    for t in tasks:
        first.setdefault(t.run_dir, t)
    unique = list(first.values())
    print(f"grid {grid.name}: {len(unique)} runs in {grid.runs}, report in {grid.out} ({executor} executor)", file=sys.stderr, flush=True)
    done = {r.task.run_dir: r for r in run(unique, grid, Progress(len(unique)), **options)}
    return [dataclasses.replace(done[t.run_dir], task=t) for t in tasks]


MANIFEST = "grid.json"


def write_manifest(grid: GridCommon, kind: str, tasks: Sequence[Task], argv: Sequence[str] = ()) -> str:
    """``<out>/grid.json``: the grid's config and its tasks, so `splitshield report DIR` can rebuild the report
    from stored results alone. Run folders are stored relative to ``out``."""
    from splitshield.configtools import to_dict

    out = str(grid.out or grid.runs)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, MANIFEST)
    command = "splitshield " + " ".join(shlex.quote(a) for a in argv)  # how to reproduce this folder
    body = {"kind": kind, "grid": to_dict(grid), "command": command,
            "tasks": [{"group": t.group, "cem": t.cem, "seed": t.seed, "value": t.value,
                       "run_dir": os.path.relpath(t.run_dir, out)} for t in tasks]}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, default=str)
    os.replace(tmp, path)
    return path


@dataclass
class StoredGrid:
    """A grid folder as stored: what kind of grid, its config (as a dict), the command that made it, results."""

    runs: str
    kind: str  # "table", "sweep" or "run"
    grid: dict[str, Any]
    command: str
    results: list[TaskResult]


def load_stored(runs: str) -> StoredGrid:
    """A grid folder's grid.json plus each run's stored results (runs not finished yet have ok=False)."""
    from splitshield.errors import UserError
    from splitshield.runs import load_run_config, read_results

    path = os.path.join(runs, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{runs} has no {MANIFEST}; pass the folder a 'splitshield table' or 'sweep' wrote")
    with open(path, encoding="utf-8") as fh:
        try:
            body = json.load(fh)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is corrupt ({exc.msg}); run the table or sweep command again to rewrite it")
    if not isinstance(body, dict) or not {"kind", "grid", "tasks"} <= set(body):
        raise UserError(f"{path} is not a grid manifest (needs kind, grid, tasks); run the table or sweep command "
                        "again to rewrite it")
    results = []
    for item in body["tasks"]:
        run_dir = os.path.join(runs, item["run_dir"])
        stored = read_results(run_dir)
        cfg = load_run_config(run_dir) if os.path.isfile(os.path.join(run_dir, "config.yaml")) else None
        task = Task(item["group"], bool(item["cem"]), int(item["seed"]), item["value"], cfg, run_dir)  # type: ignore
        attacks = {k: v for k, v in stored.items() if k.startswith("attack-")}
        ok = "train" in stored
        results.append(TaskResult(task, ok, stored.get("train", {}), attacks, stored.get("audit"),
                                  stored.get("efficiency", {}), [], 0.0, "" if ok else "not run yet"))
    return StoredGrid(runs, body["kind"], body["grid"], body.get("command", ""), results)
