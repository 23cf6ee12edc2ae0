"""One grid task run through the resumable pipeline (``run_task``), progress lines, and the executor registry.

Executors (``local`` here; ``process`` and ``ray`` in executors.py) take the tasks and return their results in task
order; grid.py picks one by name.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from splitshield.experiments.results import RunResult
from splitshield.experiments.spec import GridCommon, Task
from splitshield.registry import Registry

log = logging.getLogger(__name__)

EXECUTORS: Registry[Callable[..., list[RunResult]]] = Registry("executor")


@dataclass(frozen=True)
class Job:
    """What every task of a grid runs with: its attacks and protocols, the audit, and the results database (a
    path, so a worker process or a Ray node opens its own connection)."""

    attacks: tuple[str, ...]
    protocols: tuple[str, ...]
    audit: bool = True
    db: Optional[str] = None

    @classmethod
    def of(cls, grid: GridCommon, db: Optional[str] = None) -> "Job":
        return cls(tuple(grid.attacks), tuple(grid.protocols), grid.audit, db)


def run_task(task: Task, job: Job) -> RunResult:
    """The pipeline for one task, with failures caught into the result (a grid survives one bad run)."""
    from splitshield.errors import UserError
    from splitshield.experiments.pipeline import run_pipeline
    from splitshield.resultsdb import ResultsDB

    started = time.perf_counter()
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # attacks and audit where the training ran
        out = run_pipeline(task.cfg, task.run_dir, attacks=job.attacks, protocols=job.protocols, audit=job.audit,
                           device=device, sink=ResultsDB(job.db) if job.db else None)
    except (UserError, RuntimeError, ValueError, OSError) as exc:
        if not isinstance(exc, UserError):  # a bug or a crash: keep the traceback; bad input: its one line suffices
            log.exception("task %s failed", task.label)
        return RunResult(task.run_dir, seconds=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}",
                         task=task)
    out.task = task
    out.seconds = time.perf_counter() - started
    return out


class Progress:
    """One line per finished task: count, elapsed, and the time remaining estimated from computed tasks."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.work_seconds, self.worked = 0.0, 0
        self.stream = stream or sys.stderr

    def update(self, result: RunResult) -> None:
        self.done += 1
        if result.computed:  # reused tasks take no time and would make the estimate optimistic
            self.work_seconds += result.seconds
            self.worked += 1
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        eta = f"~{_clock(self.work_seconds / self.worked * left)} left" if self.worked and left else ""
        status = "failed: " + result.error if not result.ok else (
            "computed " + ", ".join(result.computed) if result.computed else "reused")
        print(f"[{self.done}/{self.total}] {result.task.label}: {status} ({result.seconds:.0f}s; "
              f"elapsed {_clock(elapsed)}{'; ' + eta if eta else ''})", file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@EXECUTORS.register("local")
def local_executor(tasks: Sequence[Task], job: Job, progress: Progress, **_: Any) -> list[RunResult]:
    """Tasks one after another in this process."""
    results = []
    for task in tasks:
        result = run_task(task, job)
        progress.update(result)
        results.append(result)
    return results
