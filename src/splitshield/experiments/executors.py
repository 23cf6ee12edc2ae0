"""Grid executors beyond the in-process one: worker processes and Ray (see tasks.EXECUTORS).

A grid's runs are independent tasks. Every executor runs each through ``tasks.run_task`` (the resumable pipeline),
reports progress from this process as tasks finish, and returns the results in task order.

- ``process``: spawned worker processes on this machine, ``workers`` at a time with ``threads`` torch threads each
  (default: CPU cores / threads workers, so the cores are not oversubscribed; on a CUDA machine one worker per GPU,
  each pinned to its own GPU).
- ``ray``: one Ray task per run, asking for one GPU when the cluster has GPUs, else ``threads`` CPUs; ``address``
  joins an existing cluster ("auto" on its head node), none starts a local one. A failed task is retried up to
  ``retries`` times. Ray is optional: ``pip install 'splitshield[ray]'``.

Results reach the results database exactly once: each run writes its own rows, keyed by run folder and result
kind, so a retried or resumed run replaces rows and never duplicates them; and a grid started again reuses
finished runs instead of redoing them (experiments/pipeline.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Hashable, Optional, Sequence, Union

import torch

from splitshield.errors import UserError
from splitshield.experiments.results import RunResult
from splitshield.experiments.tasks import EXECUTORS, Job, Progress, run_task
from splitshield.experiments.spec import Task
from splitshield.plugins import load_plugins

log = logging.getLogger(__name__)

Runner = Callable[[Task, Job], RunResult]  # run_task's signature
Outcome = Union[RunResult, BaseException]


def run_with_retries(tasks: Sequence[Task], submit: Callable[[int], Hashable],
                     wait_one: Callable[[list[Hashable]], tuple[Hashable, Outcome]], progress: Progress,
                     retries: int = 0) -> list[RunResult]:
    """Submit every task, collect them as they finish and resubmit a failed one up to ``retries`` times.

    ``submit(i)`` starts task i and returns a handle (a future, a Ray object reference); ``wait_one(handles)``
    blocks until one of them finishes and returns it with its RunResult, or the exception it ended with (a
    crashed worker, a lost node), which counts as a failure. Progress is updated once per task, with its final
    result; results come back in task order, holding the caller's Task objects."""
    pending = {submit(i): i for i in range(len(tasks))}
    attempts = [1] * len(tasks)
    results: list[Optional[RunResult]] = [None] * len(tasks)
    while pending:
        handle, outcome = wait_one(list(pending))
        i = pending.pop(handle)
        if isinstance(outcome, RunResult):
            result = dataclasses.replace(outcome, task=tasks[i])
        else:
            first = str(outcome).strip().splitlines()[0] if str(outcome).strip() else ""
            result = RunResult(tasks[i].run_dir, error=f"{type(outcome).__name__}: {first}"[:300], task=tasks[i])
        if not result.ok and attempts[i] <= retries:
            log.warning("%s failed (%s); retry %d of %d", tasks[i].label, result.error, attempts[i], retries)
            attempts[i] += 1
            pending[submit(i)] = i
            continue
        progress.update(result)
        results[i] = result
    return results  # type: ignore[return-value]  (every slot is filled once pending is empty)


def _gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def _init_worker(threads: int, gpus: Any) -> None:
    """Runs first in each spawned worker: its GPU (before CUDA starts in this process) and its thread count."""
    gpu = gpus.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    torch.set_num_threads(threads)
    load_plugins()  # the user's plugins named by the driver ($SPLITSHIELD_PLUGINS): this is a fresh interpreter


@EXECUTORS.register("process")
def process_executor(tasks: Sequence[Task], job: Job, progress: Progress, *, workers: Optional[int] = None,
                     threads: int = 1, retries: int = 0, runner: Runner = run_task, **_: Any) -> list[RunResult]:
    """Tasks in a pool of spawned processes (fresh interpreters: no CUDA or thread state inherited)."""
    import concurrent.futures as cf
    import multiprocessing

    if threads < 1 or (workers is not None and workers < 1):
        raise UserError(f"process executor: workers and threads must be >= 1, got workers={workers} "
                        f"threads={threads}")
    gpus = _gpu_ids()
    workers = min(workers or len(gpus) or max(1, (os.cpu_count() or 1) // threads), max(len(tasks), 1))
    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for w in range(workers):
        slots.put(gpus[w % len(gpus)] if gpus else None)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, slots)) as pool:
        def submit(i: int) -> Hashable:
            return pool.submit(runner, tasks[i], job)

        def wait_one(handles: list[Hashable]) -> tuple[Hashable, Outcome]:
            done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)  # type: ignore[arg-type]
            future = next(iter(done))
            try:
                return future, future.result()  # type: ignore[attr-defined]
            except Exception as exc:  # a worker that died (BrokenProcessPool) fails its task, not the grid
                return future, exc

        return run_with_retries(tasks, submit, wait_one, progress, retries)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray, an optional extra: pip install 'splitshield[ray]'") from None
    return ray


def _ray_run(runner: Runner, task: Task, job: Job, threads: int, env: dict[str, str], cwd: str) -> RunResult:
    """One task in a Ray worker, with the driver's settings (results database, data folder, working folder)."""
    os.environ.update(env)
    if os.path.isdir(cwd):  # the same folder on every node when it is shared; run folders are absolute anyway
        os.chdir(cwd)
    torch.set_num_threads(threads)
    load_plugins()
    return runner(task, job)


@EXECUTORS.register("ray")
def ray_executor(tasks: Sequence[Task], job: Job, progress: Progress, *, address: Optional[str] = None,
                 threads: int = 1, retries: int = 2, runner: Runner = run_task, **_: Any) -> list[RunResult]:
    """Tasks as Ray tasks on a cluster (``address``) or on a local one started here and stopped at the end."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start it "
                            "with 'ray start --head' or pass --address HOST:PORT") from None
    try:
        # One GPU per run where the cluster has GPUs (training picks it up through CUDA_VISIBLE_DEVICES, which Ray
        # sets); otherwise `threads` CPUs, matching the torch threads the run uses.
        resources = {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {}
        remote = ray.remote(_ray_run).options(num_cpus=threads, max_retries=0, **resources)  # retries: below
        env = {k: v for k, v in os.environ.items() if k.startswith("SPLITSHIELD_")}  # e.g. the data folder
        shipped = [dataclasses.replace(t, run_dir=os.path.abspath(t.run_dir)) for t in tasks]
        job = dataclasses.replace(job, db=os.path.abspath(job.db) if job.db else None)
        cwd = os.getcwd()

        def submit(i: int) -> Hashable:
            return remote.remote(runner, shipped[i], job, threads, env, cwd)

        def wait_one(handles: list[Hashable]) -> tuple[Hashable, Outcome]:
            ready, _ = ray.wait(handles, num_returns=1)
            try:
                return ready[0], ray.get(ready[0])
            except Exception as exc:  # the task raised (RayTaskError wraps it in .cause), its worker or node died
                cause = getattr(exc, "cause", None)
                return ready[0], cause if isinstance(cause, BaseException) else exc

        return run_with_retries(tasks, submit, wait_one, progress, retries)
    finally:
        if started:
            ray.shutdown()
