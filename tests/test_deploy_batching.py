"""Dynamic batching and backpressure: the batcher on its own (a row-wise fake forward, batches forced by a gate,
never by timing), then the real server (batched answers equal unbatched ones row for row; a full queue gives
503 with Retry-After and the server keeps serving), the serving flags and the replica factory."""
import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from splitshield.cli.main import main
from splitshield.config import load_config
from splitshield.deploy import wire
from splitshield.deploy.batcher import MicroBatcher, QueueFull
from splitshield.deploy.cloud import CloudModel
from splitshield.deploy.server import BackgroundServer, create_app
from splitshield.deploy.replicas import SPEC_ENV, ServeSpec, app_from_env
from splitshield.deploy.serving import ServingConfig
from splitshield.errors import UserError
from splitshield.train import train

TOKEN = "batch-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    yield  # main() points the root logger at this test's captured stderr, closed after the test
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(h)


class Gated:
    """A row-wise forward that records its batch sizes and can be held shut (to make requests queue up)."""

    def __init__(self, fn=None):
        self.fn = fn or (lambda z: z.reshape(len(z), -1).sum(1, keepdims=True) * np.arange(1, 4))
        self.sizes = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __call__(self, z):
        self.entered.set()
        assert self.open.wait(20), "test gate never opened"
        self.sizes.append(len(z))
        return self.fn(z)


def rows(n, seed):
    return np.random.default_rng(seed).random((n, 2, 2, 2), dtype=np.float32)


def test_requests_waiting_together_run_as_one_forward_and_get_their_own_rows():
    fwd = Gated()
    batcher = MicroBatcher(fwd, window_ms=0, max_rows=64, max_queue=8)
    inputs = [rows(n, i) for i, n in enumerate([1, 3, 2, 5])]  # mixed batch sizes in one window

    async def scenario():
        return await asyncio.gather(*(batcher.submit(z) for z in inputs))

    outs = asyncio.run(scenario())
    assert fwd.sizes == [11]  # all four were queued before the consumer ran: one forward
    for z, out in zip(inputs, outs):
        np.testing.assert_array_equal(out, fwd.fn(z))  # row for row, as if sent alone
    stats = batcher.stats.as_dict()
    assert stats["requests"] == 4 and stats["rows"] == 11 and stats["batch_rows_histogram"] == {"11": 1}
    batcher.close()


def test_window_waits_only_under_load_and_stops_when_the_batch_is_full():
    fwd = Gated()
    batcher = MicroBatcher(fwd, window_ms=60_000, max_rows=6, max_queue=8)

    async def scenario():
        alone = await asyncio.wait_for(batcher.submit(rows(1, 0)), 10)  # nothing else pending: no window wait
        first = asyncio.gather(batcher.submit(rows(2, 1)), batcher.submit(rows(2, 2)))
        await asyncio.sleep(0.05)  # the consumer now waits in its (one-minute) window for more rows
        third = batcher.submit(rows(2, 3))  # fills the 6 rows: the window ends at once
        return alone, await asyncio.wait_for(asyncio.gather(first, third), 10)

    alone, (pair, last) = asyncio.run(scenario())
    assert fwd.sizes == [1, 6]
    np.testing.assert_array_equal(last, fwd.fn(rows(2, 3)))
    batcher.close()


def test_max_rows_splits_between_requests_never_inside_one_and_keeps_order():
    fwd = Gated()
    fwd.open.clear()
    batcher = MicroBatcher(fwd, window_ms=0, max_rows=4, max_queue=8)
    inputs = [rows(1, 0), rows(3, 1), rows(2, 2), rows(9, 3), rows(1, 4)]

    async def scenario():
        tasks = [asyncio.ensure_future(batcher.submit(inputs[0]))]
        while not fwd.entered.is_set():  # the first request is inside the (held) forward
            await asyncio.sleep(0.001)
        tasks += [asyncio.ensure_future(batcher.submit(z)) for z in inputs[1:]]
        await asyncio.sleep(0.01)
        fwd.open.set()
        return await asyncio.gather(*tasks)

    outs = asyncio.run(scenario())
    assert fwd.sizes == [1, 3, 2, 9, 1]  # 3+2 > 4 rows; the 9-row request runs alone, unsplit
    for z, out in zip(inputs, outs):
        np.testing.assert_array_equal(out, fwd.fn(z))
    batcher.close()


def test_full_queue_raises_at_once_and_a_failed_forward_fails_only_its_batch():
    fwd = Gated()
    fwd.open.clear()
    batcher = MicroBatcher(fwd, window_ms=0, max_rows=64, max_queue=2)

    async def scenario():
        held = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        while not fwd.entered.is_set():
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(batcher.submit(rows(1, i))) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.waiting == 2
        with pytest.raises(QueueFull, match="limit 2"):
            await batcher.submit(rows(1, 3))
        fwd.open.set()
        await asyncio.gather(held, *queued)
        fwd.fn = lambda z: 1 / 0
        with pytest.raises(ZeroDivisionError):
            await batcher.submit(rows(1, 4))
        fwd.fn = Gated().fn
        return await batcher.submit(rows(2, 5))

    out = asyncio.run(scenario())
    np.testing.assert_array_equal(out, Gated().fn(rows(2, 5)))  # the batcher lives on after a failure
    assert batcher.stats.rejected == 1 and batcher.stats.failed == 1
    batcher.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = load_config({"name": "t", "data": {"name": "synthetic"}, "model": {"width": 0.125},
                       "defenses": [{"name": "gaussian_noise", "sigma": 0.05}],
                       "train": {"epochs": 1, "progress": False, "max_steps_per_epoch": 4}})
    return train(cfg, out=str(tmp_path_factory.mktemp("run") / "run")).run_dir


def _post(url, z):
    return httpx.post(f"{url}/v1/predict", content=wire.encode(z), timeout=30,
                      headers={**AUTH, "Content-Type": wire.CONTENT_TYPE})


def _wait_queued(url, n):
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/v1/stats", headers=AUTH).json()["batching"]["waiting"] < n:
        assert time.monotonic() < deadline, f"{n} requests never queued"
        time.sleep(0.01)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_served_batches_equal_unbatched_answers_row_for_row(run_dir, backend):
    model = CloudModel.from_run(run_dir, backend=backend)
    assert model.backend == backend
    gate = Gated(model.predict)
    gated = CloudModel(gate, model.feature_shape, model.input_shape, model.sigma, model.class_names,
                       model.model_hash, model.dataset)
    sizes = [1, 4, 2, 7, 1, 3]
    inputs = [np.random.default_rng(i).random((n, *model.feature_shape), dtype=np.float32)
              for i, n in enumerate(sizes)]
    gate.open.clear()
    app = create_app(gated, TOKEN, serving=ServingConfig(batch_window_ms=0, max_batch_rows=64, max_queue=16))
    with BackgroundServer(app) as server, ThreadPoolExecutor(len(sizes)) as pool:
        futures = [pool.submit(_post, server.url, inputs[0])]
        assert gate.entered.wait(20)
        futures += [pool.submit(_post, server.url, z) for z in inputs[1:]]
        _wait_queued(server.url, len(sizes) - 1)
        gate.open.set()
        answers = [f.result() for f in futures]
        stats = httpx.get(f"{server.url}/v1/stats", headers=AUTH).json()["batching"]
    assert gate.sizes == [1, sum(sizes[1:])]  # five requests of mixed sizes in one forward
    assert stats["batch_rows_histogram"] == {"1": 1, str(sum(sizes[1:])): 1}
    for z, r in zip(inputs, answers):
        assert r.status_code == 200, r.text
        got = np.array(r.json()["probabilities"])
        assert got.shape == (len(z), 4)
        # onnxruntime gives identical bits; oneDNN's convolutions can differ in the last float32 digit by batch.
        np.testing.assert_allclose(got, model.predict(z), rtol=0, atol=1e-6)
        assert r.json()["predictions"] == model.predict(z).argmax(1).tolist()


def test_full_queue_answers_503_with_retry_after_and_the_server_keeps_serving(run_dir):
    model = CloudModel.from_run(run_dir, backend="torch")
    gate = Gated(model.predict)
    gated = CloudModel(gate, model.feature_shape, model.input_shape, model.sigma, model.class_names,
                       model.model_hash, model.dataset)
    z = np.zeros((1, *model.feature_shape), np.float32)
    gate.open.clear()
    app = create_app(gated, TOKEN, serving=ServingConfig(max_queue=2, retry_after_s=3))
    with BackgroundServer(app) as server, ThreadPoolExecutor(3) as pool:
        info = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
        assert info["serving"]["max_queue"] == 2 and info["serving"]["backend"] == "custom"
        held = [pool.submit(_post, server.url, z)]
        assert gate.entered.wait(20)
        held += [pool.submit(_post, server.url, z) for _ in range(2)]
        _wait_queued(server.url, 2)
        busy = _post(server.url, z)  # answered at once, while the forward is still held
        assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
        detail = busy.json()["detail"]
        assert "server busy" in detail and "retry after 3 s" in detail and "\n" not in detail
        assert httpx.post(f"{server.url}/v1/predict", content=wire.encode(z)).status_code == 401  # busy or not
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        gate.open.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
        assert _post(server.url, z).status_code == 200
        stats = httpx.get(f"{server.url}/v1/stats", headers=AUTH).json()["batching"]
    assert stats["rejected"] == 1 and stats["requests"] == 4 and stats["waiting"] == 0
    assert "503" in app.openapi()["paths"]["/v1/predict"]["post"]["responses"]


def test_model_info_reports_the_serving_knobs(run_dir):
    app = create_app(CloudModel.from_run(run_dir, backend="onnx", threads=1), TOKEN,
                     serving=ServingConfig(batch_window_ms=2.5, max_batch_rows=32, max_queue=7))
    with BackgroundServer(app) as server:
        serving = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()["serving"]
    assert serving == {"backend": "onnx", "threads": 1, "batch_window_ms": 2.5, "max_batch_rows": 32,
                       "max_queue": 7, "retry_after_s": 1}


@pytest.mark.parametrize("flags, needle", [
    (["--max-queue", "0"], "--max-queue must be at least 1"),
    (["--max-batch-rows", "0"], "--max-batch-rows must be at least 1"),
    (["--batch-window-ms", "-1"], "--batch-window-ms must be 0..1000"),
    (["--threads", "-2"], "--threads must be 0 (auto) or positive"),
    (["--workers", "0"], "--workers must be positive"),
])
def test_serve_refuses_bad_serving_flags_in_one_line(tmp_path, capsys, flags, needle):
    assert main(["serve", str(tmp_path), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_replica_factory_rebuilds_the_app_from_the_spec(run_dir, monkeypatch):
    from splitshield.deploy.server import Limits

    spec = ServeSpec(run_dir, ServingConfig(backend="torch", max_queue=5), vars(Limits(max_batch=8)))
    monkeypatch.setenv(SPEC_ENV, spec.to_env())
    monkeypatch.setenv("SPLITSHIELD_TOKEN", TOKEN)
    with BackgroundServer(app_from_env()) as server:
        info = httpx.get(f"{server.url}/v1/model", headers=AUTH).json()
        assert info["serving"]["max_queue"] == 5 and info["limits"]["max_batch"] == 8
        assert info["serving"]["threads"] == 1  # "auto" means 1 in a factory: it cannot see the other workers
        assert _post(server.url, np.zeros((2, *info["feature_shape"]), np.float32)).status_code == 200
        assert httpx.post(f"{server.url}/v1/predict", content=b"").status_code == 401  # the token is enforced
    monkeypatch.delenv(SPEC_ENV)
    with pytest.raises(UserError, match="splitshield serve RUN_DIR --workers N"):
        app_from_env()


def test_serving_config_resolves_threads_for_the_machine(monkeypatch):
    import splitshield.deploy.serving as serving

    monkeypatch.setattr(serving, "available_cores", lambda: 8)
    cfg = ServingConfig(threads=0)
    assert cfg.resolved(workers=1).threads == 7 and cfg.threads == 0  # one core left to the event loop
    assert cfg.resolved(workers=4).threads == 1 and cfg.resolved(workers=16).threads == 1
    assert ServingConfig(threads=3).resolved(workers=2).threads == 3  # explicit wins
