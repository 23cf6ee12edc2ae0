"""One grid task run through the resumable pipeline, its result, progress lines, and the executor registry.

Executors (``local`` here; ``process`` and ``ray`` in executors.py) take the tasks and return their results in task
order; grid.py picks one by name.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from splitshield.experiments.spec import GridCommon, Task
from splitshield.registry import Registry

log = logging.getLogger(__name__)

EXECUTORS: Registry[Callable[..., list["TaskResult"]]] = Registry("executor")


@dataclass
class TaskResult:
    task: Task
    ok: bool
    train: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: Optional[dict[str, Any]] = None
    efficiency: dict[str, Any] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


def run_task(task: Task, attacks: Sequence[str], protocols: Sequence[str], audit: bool) -> TaskResult:
    """The pipeline for one task, with failures caught into the result (a grid survives one bad run)."""
    from splitshield.errors import UserError
    from splitshield.experiments.pipeline import run_pipeline

    started = time.perf_counter()
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # attacks and audit where the training ran
        out = run_pipeline(task.cfg, task.run_dir, attacks=attacks, protocols=protocols, audit=audit, device=device)
    except (UserError, RuntimeError, ValueError, OSError) as exc:
        log.exception("task %s failed", task.label)
        return TaskResult(task, False, seconds=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    return TaskResult(task, True, out.train, out.attacks, out.audit, out.efficiency, out.computed,
                      time.perf_counter() - started)


class Progress:
    """One line per finished task: count, elapsed, and the time remaining estimated from computed tasks."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.work_seconds, self.worked = 0.0, 0
        self.stream = stream or sys.stderr

    def update(self, result: TaskResult) -> None:
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
def local_executor(tasks: Sequence[Task], grid: GridCommon, progress: Progress, **_: Any) -> list[TaskResult]:
    """Tasks one after another in this process."""
    results = []
    for task in tasks:
        result = run_task(task, grid.attacks, grid.protocols, grid.audit)
        progress.update(result)
        results.append(result)
    return results
