"""`splitshield bench serve [RUN_DIR] --clients 32 --seconds 15`: load test of the cloud server on loopback.

The server runs in its own process (`splitshield serve`, as deployed); N clients (loadgen.py) post binary
features for T seconds, back to back or at a fixed rate. ``--pin`` puts the server and the load generator on
separate cores (os.sched_setaffinity). One run prints: throughput, p50/p99/max
latency, errors and 503s, the batch sizes the server formed (GET /v1/stats), the in-process forward rate of the
cloud part at those batch sizes (the ceiling, measured after the server stopped), served/ceiling, and the CPU
time per request of the server and of the generator. Loopback only, bounded in time.
Without RUN_DIR a tiny synthetic model is trained on the fly (a few seconds).
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from splitshield.bench import BENCHMARKS
from splitshield.bench.loadgen import CLIENTS, LoadResult, run_load
from splitshield.errors import OneLineParser, UserError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # never anything else: this command generates load


def _tiny_run(folder: str) -> str:
    from splitshield.config import load_config
    from splitshield.train import train

    cfg = load_config({"name": "bench-serve", "data": {"name": "synthetic"}, "model": {"width": 0.125},
                       "defenses": [{"name": "gaussian_noise", "sigma": 0.025}],
                       "train": {"epochs": 1, "progress": False, "max_steps_per_epoch": 2}})
    return train(cfg, out=os.path.join(folder, "run")).run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise UserError(f"the server did not answer {url}/healthz within {timeout:.0f} s")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its direct children (uvicorn workers), from /proc; nan off Linux."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == pid or int(fields[1]) == pid:  # fields[1] = ppid
                total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return float("nan")
    return total


def ceiling(run_dir: str, histogram: dict[str, int], *, backend: str, threads: int) -> tuple[float, dict[int, float]]:
    """Rows/s of the cloud forward in this process at the batch sizes the server formed (same backend, threads).

    Each size is timed on its own (median of repeats); the ceiling is total rows / sum(count x time per forward),
    i.e. what the server could answer if HTTP, JSON and batching cost nothing.
    """
    from splitshield.deploy.cloud import CloudModel

    model = CloudModel.from_run(run_dir, backend=backend, threads=threads)
    rng = np.random.default_rng(0)
    per_size: dict[int, float] = {}
    for size in sorted(int(k) for k in histogram):
        z = rng.random((size, *model.feature_shape), dtype=np.float32)
        model.predict(z)
        times = []
        budget = time.perf_counter() + 0.15
        while len(times) < 5 or time.perf_counter() < budget:
            t0 = time.perf_counter()
            model.predict(z)
            times.append(time.perf_counter() - t0)
        per_size[size] = float(np.median(times))
    rows = sum(int(k) * v for k, v in histogram.items())
    busy = sum(per_size[int(k)] * v for k, v in histogram.items())
    return (rows / busy if busy else float("nan")), per_size


def _pinning(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if not pin or len(cores) < 2:
        return None, None
    return set(cores[:-1]), {cores[-1]}  # the server gets all but one core, the generator the last


def _parser() -> OneLineParser:
    p = OneLineParser(prog="splitshield bench serve", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="trained run (default: a tiny synthetic model trained now)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (1..256)")
    p.add_argument("--seconds", type=float, default=15.0, help="duration of the load (1..300 s)")
    p.add_argument("--batch", type=int, default=1, help="features per request")
    p.add_argument("--rate", type=float, default=0.0,
                   help="open loop: requests/s offered in all (0 = closed loop, each client back to back)")
    p.add_argument("--client", choices=CLIENTS, default="raw", help="load generator (raw asyncio streams or httpx)")
    p.add_argument("--pin", action="store_true",
                   help="pin the server to all cores but the last and the generator to the last (default: the "
                        "scheduler places them; pinned was slower when another job held a core)")
    # The server's own flags (splitshield serve --help), passed through.
    p.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"))
    p.add_argument("--threads", type=int, default=1, help="intra-op threads in the server (0 = auto)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (ceiling: worker 1's batches)")
    p.add_argument("--batch-window-ms", type=float, default=0.0)
    p.add_argument("--max-batch-rows", type=int, default=64)
    p.add_argument("--max-queue", type=int, default=64)
    return p


@BENCHMARKS.register("serve")
def bench_serve(argv: list[str]) -> int:
    """Load test of 'splitshield serve' on loopback: throughput, latency, 503s, served/ceiling."""
    args = _parser().parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would dominate the load
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 300 or not 1 <= args.batch <= 256:
        raise UserError("--clients must be 1..256, --seconds 1..300 and --batch 1..256 (the load is bounded)")
    if not 0 <= args.rate <= 100_000:
        raise UserError(f"--rate must be 0..100000 requests/s, got {args.rate:g}")
    if not 1 <= args.workers <= 64:
        raise UserError(f"--workers must be 1..64, got {args.workers}")
    import httpx

    from splitshield.deploy import wire
    from splitshield.runs import load_run_config

    server_cores, client_cores = _pinning(args.pin)
    saved_affinity = os.sched_getaffinity(0) if client_cores else None
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run_dir = args.run_dir or _tiny_run(tmp)
        load_run_config(run_dir)  # fails with a one-line error before a server is started
        token = secrets.token_urlsafe(24)
        port = _free_port()
        url = f"http://{HOST}:{port}"
        env = {**os.environ, "SPLITSHIELD_TOKEN": token, "OMP_NUM_THREADS": str(args.threads or "")}
        if not args.threads:
            env.pop("OMP_NUM_THREADS")
        cmd = [sys.executable, "-m", "splitshield", "-q", "serve", run_dir, "--host", HOST, "--port", str(port),
               "--threads", str(args.threads), "--max-batch", str(max(256, args.batch)), "--log-level", "error",
               "--backend", args.backend, "--workers", str(args.workers),
               "--batch-window-ms", str(args.batch_window_ms), "--max-batch-rows", str(args.max_batch_rows),
               "--max-queue", str(args.max_queue)]
        pin = (lambda: os.sched_setaffinity(0, server_cores)) if server_cores else None
        proc = subprocess.Popen(cmd, env=env, preexec_fn=pin)
        try:
            if client_cores:
                os.sched_setaffinity(0, client_cores)
            _wait_ready(url, proc)
            auth = {"Authorization": f"Bearer {token}"}
            info = httpx.get(f"{url}/v1/model", headers=auth).json()
            shape = (args.batch, *info["feature_shape"])
            body = wire.encode(np.random.default_rng(0).random(shape, dtype=np.float32))
            load = {"clients": args.clients, "rows": args.batch, "rate": args.rate}
            run_load(args.client, HOST, port, token, body, seconds=1.0, **load)  # warm-up: connections, first calls
            before = httpx.get(f"{url}/v1/stats", headers=auth).json()["batching"]
            cpu0 = _cpu_seconds(proc.pid)
            res = run_load(args.client, HOST, port, token, body, seconds=args.seconds, **load)
            server_cpu = _cpu_seconds(proc.pid) - cpu0
            after = httpx.get(f"{url}/v1/stats", headers=auth).json()["batching"]
        finally:
            proc.terminate()  # only the server this command started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        serving = info["serving"]
        if args.workers == 1:  # the batches of the measured load only
            hist = {k: v - before["batch_rows_histogram"].get(k, 0) for k, v in after["batch_rows_histogram"].items()}
        else:  # each GET reaches one worker: a sample, that worker's batches since it started
            hist = dict(after["batch_rows_histogram"])
        hist = {k: v for k, v in hist.items() if v > 0}
        top, per_size = ceiling(run_dir, hist, backend=serving["backend"], threads=serving["threads"]) \
            if hist else (float("nan"), {})
    if saved_affinity:
        os.sched_setaffinity(0, saved_affinity)
    _report(args, info, body, res, hist, top, per_size, server_cpu, server_cores, client_cores)
    return 0 if res.errors == 0 else 1


def _report(args, info: dict, body: bytes, res: LoadResult, hist: dict[str, int], top: float,  # noqa: ANN001
            per_size: dict[int, float], server_cpu: float, server_cores, client_cores) -> None:  # noqa: ANN001
    s = info["serving"]
    ok, elapsed = len(res.latencies), res.elapsed
    lat = np.array(res.latencies or [float("nan")]) * 1000
    p50, p99, worst = float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), float(lat.max())
    rate, rows_rate = ok / elapsed, ok * args.batch / elapsed
    forwards = sum(hist.values())
    rows = sum(int(k) * v for k, v in hist.items())
    pinned = f"server on cores {sorted(server_cores)}, generator on {sorted(client_cores)}" if server_cores \
        else "not pinned"
    print(f"server: {args.run_dir or 'tiny synthetic model'} feature shape {tuple(info['feature_shape'])}, "
          f"{len(body)} bytes per request; backend {s['backend']}, {s['threads']} threads x {args.workers} workers, "
          f"window {s['batch_window_ms']:g} ms, max {s['max_batch_rows']} rows, queue {s['max_queue']}; "
          f"client {args.client}; {pinned}; load average {os.getloadavg()[0]:.2f}")
    mode = f"open loop, {args.rate:g} req/s offered" if args.rate else "closed loop"
    print(f"requests: {ok} ok, {res.errors} errors, {res.busy} x 503 in {elapsed:.1f} s with {args.clients} clients "
          f"({mode})")
    print(f"throughput: {rate:.1f} req/s ({rows_rate:.1f} features/s)")
    print(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms")
    if not forwards:
        print(f"batches: none seen by the worker that answered GET /v1/stats (of {args.workers}: long-lived "
              "connections may all sit on one worker); no ceiling")
    else:
        common = sorted(hist.items(), key=lambda kv: -kv[1])[:6]
        whose = "" if args.workers == 1 else f" (one worker of {args.workers}, since its start)"
        print(f"batches{whose}: {forwards} forwards, mean {rows / forwards:.2f} rows; most "
              f"common rows:count {', '.join(f'{k}:{v}' for k, v in common)}")
        shown = ", ".join(f"{b}: {b / t:.0f} rows/s" for b, t in sorted(per_size.items())[:4])
        busy = sum(per_size[int(k)] * v for k, v in hist.items())
        busy_note = f"; the forward alone would keep one core {100 * busy / elapsed:.0f}% busy" \
            if args.workers == 1 else ""
        print(f"ceiling: in-process {s['backend']} forward ({s['threads']} threads) at those batch sizes "
              f"{top:.0f} rows/s ({shown}{', ...' if len(per_size) > 4 else ''}){busy_note}")
        print(f"served/ceiling: {rows_rate:.0f} / {top:.0f} rows/s = {rows_rate / top:.3f}"
              + ("" if args.workers == 1 else f" (the ceiling of one process; {args.workers} workers)"))
    done = max(ok + res.busy + res.errors, 1)
    print(f"cost: server {1e6 * server_cpu / done:.0f} us CPU/request, generator {1e6 * res.client_cpu / done:.0f} "
          f"us CPU/request ({args.client})")
    offered = f" at {args.rate:g} req/s offered" if args.rate else ""
    print(f"serve: {args.clients} clients x {args.seconds:g} s{offered}: {rate:.1f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms,"
          f" max {worst:.2f} ms, {res.errors} errors, {res.busy} x 503, served/ceiling "
          f"{rows_rate / top if forwards else float('nan'):.3f}")
