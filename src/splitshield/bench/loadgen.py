"""HTTP load for `splitshield bench serve`: N clients post the same body for T seconds, back to back (closed loop)
or at a fixed offered rate (open loop, ``--rate``).

The load generator shares the machine's cores with the server, so what it costs per request is taken from the
server. Two clients, same protocol (HTTP/1.1 keep-alive, one connection per client, every response read whole and
its status checked; 503 answers are counted and their Retry-After is honoured, as a well-behaved client would):
- ``raw``: asyncio streams and a hand-written request, ~10x cheaper per request than httpx (docs/benchmarks.md);
- ``httpx``: httpx.AsyncClient, for comparison with what applications typically use.
Only loopback addresses are ever targeted (the caller passes 127.0.0.1).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

CLIENTS = ("raw", "httpx")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers only
    errors: int = 0  # anything but 200 and 503: other statuses, resets, timeouts, bad bodies
    busy: int = 0  # 503 answers (queue full)
    elapsed: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this process during the load (the generator's own cost)
    finished: int = 0  # clients that stopped by themselves


class RawConnection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for uvicorn's Content-Length responses."""

    def __init__(self, host: str, port: int, head: bytes) -> None:
        self.host, self.port, self.head = host, port, head
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.connect()
        self.writer.write(self.head + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError("response without Content-Length")
        payload = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _retry_after(headers) -> float:  # noqa: ANN001  (dict or httpx.Headers)
    try:
        return min(float(headers.get("retry-after", "1")), 10.0)
    except ValueError:
        return 1.0


async def _run(client: str, host: str, port: int, token: str, body: bytes, clients: int, seconds: float,
               rows: int, rate: float) -> LoadResult:
    from splitshield.deploy.wire import CONTENT_TYPE

    res = LoadResult()

    def check(status: int, payload: bytes, first: bool) -> bool:
        if status != 200:
            return False
        if first:  # the first answer of each client is parsed: right count of rows, not just a 200
            return len(json.loads(payload)["probabilities"]) == rows
        return True

    async def loop(send, on_error, failures: tuple, index: int) -> None:  # noqa: ANN001
        first, k = True, 0
        while True:
            if rate:  # open loop: request k of this client is due at a fixed time, whatever the server does
                start = begin + (k * clients + index) / rate
                k += 1
                if start >= deadline:
                    break
                if start > time.perf_counter():
                    await asyncio.sleep(start - time.perf_counter())
                # Latency counts from when the request was due, so a send delayed by a slow answer shows up.
            else:
                start = time.perf_counter()
                if start >= deadline:
                    break
            try:
                status, headers, payload = await send()
                ok = check(status, payload, first)
            except failures:  # a reset, a timeout or a bad answer: count it, reconnect, go on
                res.errors += 1
                on_error()
                continue
            if ok:
                res.latencies.append(time.perf_counter() - start)
                first = False
            elif status == 503:
                res.busy += 1
                if not rate:  # a closed-loop client backs off; an open-loop one keeps its schedule
                    await asyncio.sleep(min(_retry_after(headers), max(0.0, deadline - time.perf_counter())))
            else:
                res.errors += 1

    failures: tuple = (OSError, ValueError, KeyError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
    cpu0, begin = time.process_time(), time.perf_counter()
    deadline = begin + seconds
    if client == "raw":
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n").encode()

        conns = [RawConnection(host, port, head) for _ in range(clients)]
        # Connected before the clock starts: N connects in a burst are not what the load test measures.
        await asyncio.gather(*(c.connect() for c in conns))
        cpu0, begin = time.process_time(), time.perf_counter()
        deadline = begin + seconds

        async def raw_worker(index: int) -> None:
            conn = conns[index]
            try:
                await loop(lambda: conn.post(body), conn.close, failures, index)
            finally:
                conn.close()
                res.finished += 1

        try:  # bounded even if the server stops answering (no per-request timer: it would cost a task each)
            await asyncio.wait_for(asyncio.gather(*(raw_worker(i) for i in range(clients))), seconds + 30)
        except asyncio.TimeoutError:
            res.errors += clients - res.finished
    else:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers, limits=limits,
                                     timeout=30.0) as http:
            async def send():  # noqa: ANN202
                r = await http.post("/v1/predict", content=body)
                return r.status_code, r.headers, r.content

            fails = (*failures, httpx.HTTPError)
            await asyncio.gather(*(loop(send, lambda: None, fails, i) for i in range(clients)))
    res.elapsed = time.perf_counter() - begin
    res.client_cpu = time.process_time() - cpu0
    return res


def run_load(client: str, host: str, port: int, token: str, body: bytes, *, clients: int, seconds: float,
             rows: int, rate: float = 0.0) -> LoadResult:
    """Load for ``seconds``. Closed loop (``rate`` 0): each client sends, waits for the answer, sends again.
    Open loop: ``rate`` requests/s in all, due at fixed times spread over the clients (one connection each, so at
    most ``clients`` in flight); what the server cannot absorb shows as latency or as 503s."""
    try:
        import uvloop  # the generator's own event-loop cost is CPU the server does not get

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_run(client, host, port, token, body, clients, seconds, rows, rate))
