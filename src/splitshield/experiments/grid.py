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
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from splitshield.experiments import executors  # noqa: F401  (registers the process and ray executors)
from splitshield.experiments.spec import GridCommon, Task
from splitshield.experiments.results import RunResult
from splitshield.experiments.tasks import EXECUTORS, Job, Progress

log = logging.getLogger(__name__)

def execute(tasks: Sequence[Task], grid: GridCommon, executor: str = "local", *, db: Optional[str] = None,
            **options: Any) -> list[RunResult]:
    """Run ``tasks`` with the named executor (results also into database ``db``, a path, when given); every
    executor returns the results in task order."""
    run = EXECUTORS.get(executor)
    # Two tasks of a grid can be the same experiment (a sweep's shared point, a table arm that is its row): run each
    # folder once, so parallel executors never train into one folder twice, and give every task its folder's result.
    first: dict[str, Task] = {}
    for t in tasks:
        first.setdefault(t.run_dir, t)
    unique = list(first.values())
    print(f"grid {grid.name}: {len(unique)} runs in {grid.runs}, report in {grid.out} ({executor} executor)",
          file=sys.stderr, flush=True)
    done = {r.task.run_dir: r for r in run(unique, Job.of(grid, db), Progress(len(unique)), **options)}
    return [dataclasses.replace(done[t.run_dir], task=t) for t in tasks]


MANIFEST = "grid.json"


def _write_json(path: str, body: dict[str, Any]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, default=str)
    os.replace(tmp, path)
    return path


def _command(argv: Sequence[str]) -> str:
    return "splitshield " + " ".join(shlex.quote(a) for a in argv)  # how to reproduce the folder


def write_manifest(grid: GridCommon, kind: str, tasks: Sequence[Task], argv: Sequence[str] = ()) -> str:
    """``<out>/grid.json``: the grid's config and its tasks, so `splitshield report DIR` can rebuild the report
    from stored results alone. Run folders are stored relative to ``out``."""
    from splitshield.configtools import to_dict

    out = str(grid.out or grid.runs)
    body = {"kind": kind, "grid": to_dict(grid), "command": _command(argv),
            "tasks": [{"group": t.group, "arm": t.arm, "seed": t.seed, "value": t.value,
                       "run_dir": os.path.relpath(t.run_dir, out)} for t in tasks]}
    return _write_json(os.path.join(out, MANIFEST), body)


def write_run_manifest(run_dir: str, attacks: Sequence[str], protocols: Sequence[str], argv: Sequence[str] = ()
                       ) -> str:
    """``<run>/grid.json`` for a single run (``splitshield run``): the report reads a run folder as it reads a grid
    folder, with the run as its one result."""
    body = {"kind": "run", "grid": {"attacks": list(attacks), "protocols": list(protocols)},
            "command": _command(argv), "tasks": [{"group": "run", "arm": "", "seed": None, "value": None,
                                                   "run_dir": "."}]}
    return _write_json(os.path.join(run_dir, MANIFEST), body)


@dataclass
class StoredGrid:
    """A grid (or run) folder as stored: its kind, its config (as a dict), the command that made it, and one
    RunResult per task (the same type the pipeline returns)."""

    runs: str
    kind: str  # "table", "sweep", "frontier" or "run"
    grid: dict[str, Any]
    command: str
    results: list[RunResult]


def load_stored(runs: str) -> StoredGrid:
    """A grid folder's grid.json plus each run's stored results (runs not finished yet have ok=False)."""
    from splitshield.errors import UserError
    from splitshield.runs import RunFolder

    path = os.path.join(runs, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{runs} has no {MANIFEST}; pass a folder that 'splitshield table', 'sweep', 'frontier' or "
                        "'run' wrote")
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
        folder = RunFolder(os.path.normpath(os.path.join(runs, item["run_dir"])))
        cfg = folder.config if folder.exists else None
        # Manifests written before arms existed had "cem": true/false for the two arms of a table.
        arm = item.get("arm", "+CEM" if item.get("cem") else "")
        task = Task(item["group"], arm, item["seed"], item["value"], cfg, folder.path,  # type: ignore[arg-type]
                    swept=body["kind"] in ("sweep", "frontier"))
        results.append(RunResult.from_folder(folder, task))
    return StoredGrid(runs, body["kind"], body["grid"], body.get("command", ""), results)
