"""`splitshield bench serve [RUN_DIR] --clients 32 --seconds 20`: load test of the cloud server on loopback.

The server runs in its own process (`splitshield serve`, as deployed) so the load generator does not share its
GIL; N asyncio clients (httpx) post binary features back to back for T seconds. Loopback only, bounded in time.
Without RUN_DIR a tiny synthetic model is trained on the fly (a few seconds).
"""
from __future__ import annotations

import asyncio
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
from splitshield.errors import OneLineParser
from splitshield.errors import UserError

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


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
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


async def _load(url: str, token: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int, int]:
    import httpx

    from splitshield.deploy.wire import CONTENT_TYPE

    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30.0) as http:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    r = await http.post("/v1/predict", content=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - begin
    return latencies, errors, int(elapsed * 1e6)


@BENCHMARKS.register("serve")
def bench_serve(argv: list[str]) -> int:
    """Load test of 'splitshield serve' on loopback: errors, throughput, p50/p99 latency."""
    p = OneLineParser(prog="splitshield bench serve", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="trained run (default: a tiny synthetic model trained now)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (1..256)")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of the load (1..300 s)")
    p.add_argument("--batch", type=int, default=1, help="features per request")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    args = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would dominate the load
    if not 1 <= args.clients <= 256 or not 1 <= args.seconds <= 300 or not 1 <= args.batch <= 256:
        raise UserError("--clients must be 1..256, --seconds 1..300 and --batch 1..256 (the load is bounded)")
    from splitshield.deploy import wire
    from splitshield.runs import load_run_config

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run_dir = args.run_dir or _tiny_run(tmp)
        load_run_config(run_dir)  # fails with a one-line error before a server is started
        token = secrets.token_urlsafe(24)
        port = _free_port()
        url = f"http://{HOST}:{port}"
        env = {**os.environ, "SPLITSHIELD_TOKEN": token, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "splitshield", "-q", "serve", run_dir, "--host", HOST, "--port", str(port),
               "--threads", str(args.threads), "--max-batch", str(max(256, args.batch)), "--log-level", "error"]
        proc = subprocess.Popen(cmd, env=env)
        try:
            _wait_ready(url, proc)
            import httpx

            info = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {token}"}).json()
            shape = (args.batch, *info["feature_shape"])
            body = wire.encode(np.random.default_rng(0).random(shape, dtype=np.float32))
            asyncio.run(_load(url, token, body, args.clients, 1.0))  # warm-up: connections, first calls
            latencies, errors, elapsed_us = asyncio.run(_load(url, token, body, args.clients, args.seconds))
        finally:
            proc.terminate()  # only the server this command started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    elapsed = elapsed_us / 1e6
    ok = len(latencies)
    lat = np.array(latencies or [float("nan")]) * 1000
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    print(f"server: {run_dir if args.run_dir else 'tiny synthetic model'} feature shape "
          f"{tuple(info['feature_shape'])}, {len(body)} bytes per request, torch threads {args.threads}")
    print(f"requests: {ok} ok, {errors} errors in {elapsed:.1f} s with {args.clients} clients")
    print(f"throughput: {ok / elapsed:.1f} req/s ({ok * args.batch / elapsed:.1f} features/s)")
    print(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {float(lat.max()):.2f} ms")
    print(f"serve: {args.clients} clients x {args.seconds:g} s: {ok / elapsed:.1f} req/s, p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms, {errors} errors")
    return 0 if errors == 0 else 1
