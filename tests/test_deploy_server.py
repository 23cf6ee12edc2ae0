"""A real server on loopback (uvicorn in a thread, started and stopped here): end-to-end predictions, the
client CLI, and malformed requests (each a 4xx, after which the server still serves)."""
import json
import logging
import os

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from splitshield.cli.main import main
from splitshield.config import load_config
from splitshield.deploy import wire
from splitshield.deploy.auth import TOKEN_ENV
from splitshield.deploy.client import run_client
from splitshield.deploy.edge import EdgeEncoder, device_noise
from splitshield.deploy.export import check_images, export_run
from splitshield.deploy.server import BackgroundServer, CloudModel, Limits, create_app
from splitshield.errors import UserError
from splitshield.train.build import load_run
from splitshield.train import train

TOKEN = "test-token-0123456789abcdef"
SIGMA = 0.1
LIMITS = Limits(max_batch=32, max_body_bytes=64 << 10, max_json_batch=4)


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    yield  # main() points the root logger at this test's captured stderr, closed after the test
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(h)


def tiny_run(path, defenses=(), epochs=1):
    # 16 steps (2 epochs of batch 32) move the cloud far enough from init that noise visibly changes its output.
    cfg = load_config({"name": "t", "data": {"name": "synthetic", "batch_size": 32}, "model": {"width": 0.125},
                       "defenses": list(defenses), "train": {"epochs": epochs, "progress": False,
                                                             "max_steps_per_epoch": 8}})
    return train(cfg, out=str(path)).run_dir


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run_dir = tiny_run(tmp_path_factory.mktemp("run"), [{"name": "gaussian_noise", "sigma": SIGMA}], 2)
    export_run(run_dir, "onnx", check_count=16)
    with BackgroundServer(create_app(CloudModel.from_run(run_dir), TOKEN, LIMITS)) as server:
        yield run_dir, server.url


@pytest.fixture()
def http(served):
    with httpx.Client(base_url=served[1], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20) as client:
        yield client


def post_features(http, z, dtype="float32"):
    return http.post("/v1/predict", content=wire.encode(z, dtype), headers={"Content-Type": wire.CONTENT_TYPE})


def reference_probs(run_dir, x, seed):
    """The in-process model with the same device noise: edge -> + N(0, sigma^2) from the seed -> cloud."""
    run = load_run(run_dir)
    with torch.no_grad():
        z = run.model.edge(x)
        z = z + torch.from_numpy(device_noise(tuple(z.shape), run.defenses.noise_std(), np.random.default_rng(seed)))
        return torch.softmax(run.model.cloud(z), dim=1).numpy()


def test_end_to_end_equals_in_process_model_for_the_same_noise_seed(served, http):
    run_dir, _ = served
    x = check_images(load_run(run_dir), 24)
    z = EdgeEncoder(run_dir, seed=11).encode(x.numpy())
    r = post_features(http, z)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["probabilities"])
    ref = reference_probs(run_dir, x, 11)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # Log space too: the softmax saturates, and the small probabilities carry the noise's effect.
    np.testing.assert_allclose(np.log(got), np.log(ref), atol=1e-3)
    assert r.json()["predictions"] == ref.argmax(1).tolist()
    other_seed = reference_probs(run_dir, x, 12)
    assert np.abs(np.log(ref) - np.log(other_seed)).max() > 0.1  # the noise really enters the result
    # float16 on the wire halves the bytes and barely moves the probabilities.
    half = post_features(http, z, "float16")
    assert half.status_code == 200 and np.abs(np.array(half.json()["probabilities"]) - got).max() < 5e-3


def test_json_lists_give_the_same_answer_as_binary(http):
    z = np.random.default_rng(0).random((3, 8, 4, 4), dtype=np.float32)
    a = post_features(http, z).json()
    b = http.post("/v1/predict", json={"features": z.tolist()}).json()
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    assert a["labels"] == b["labels"] and set(a["labels"]) <= {"a", "b", "c", "d"}


def test_model_info_health_and_openapi(served, http):
    run_dir, url = served
    info = http.get("/v1/model").json()
    manifest = EdgeEncoder(run_dir).manifest
    assert info["feature_shape"] == [8, 4, 4] and info["dtype"] == "float32"
    assert info["sigma"] == pytest.approx(SIGMA) and info["class_names"] == ["a", "b", "c", "d"]
    assert info["model_hash"] == manifest.model_hash and info["limits"]["max_batch"] == 32
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # no token needed
    schema = httpx.get(f"{url}/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {wire.CONTENT_TYPE, "application/json"}
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def _chunks(total):
    for _ in range(total // 4096):
        yield b"\0" * 4096


BIN = {"Content-Type": wire.CONTENT_TYPE}
Z1 = np.zeros((1, 8, 4, 4), np.float32)
NAN = Z1.copy()
NAN[0, 0, 0, 0] = np.nan
INF16 = Z1.astype(np.float16)
INF16[0, 1, 1, 1] = np.inf
CASES = {
    "wrong shape": (wire.encode(np.zeros((2, 8, 4, 3), np.float32)), BIN, 422, "must have shape (N, 8, 4, 4)"),
    "no batch dim": (wire.encode(np.zeros((8, 4, 4), np.float32)), BIN, 422, "missing batch dimension"),
    "raw images": (wire.encode(np.zeros((2, 1, 16, 16), np.float32)), BIN, 422, "raw images"),
    "png image": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, BIN, 400, "PNG image"),
    "garbage bytes": (os.urandom(64), BIN, 400, "not a splitshield feature message"),
    "empty body": (b"", BIN, 400, "(empty)"),
    "uint8 dtype": (b"SSF1\x03\x04\x00\x00" + wire.encode(Z1)[8:], BIN, 400, "dtype code 3"),
    "truncated": (wire.encode(Z1)[:-3], BIN, 400, "payload is"),
    "NaN": (wire.encode(NAN), BIN, 422, "NaN/Inf"),
    "Inf float16": (wire.encode(INF16, "float16"), BIN, 422, "NaN/Inf"),
    "empty batch": (wire.encode(np.zeros((0, 8, 4, 4), np.float32)), BIN, 422, "empty batch"),
    "batch over limit": (wire.encode(np.zeros((33, 8, 4, 4), np.float32)), BIN, 413, "exceeds the limit of 32"),
    "body over limit": (b"\0" * (65 << 10), BIN, 413, "exceeds the limit"),
    "chunked over limit": (_chunks(80 << 10), BIN, 413, "exceeds the limit"),
    "json NaN": (json.dumps({"features": NAN.tolist()}).encode(), {"Content-Type": "application/json"}, 422, "NaN/Inf"),
    "json strings": (b'{"features": [[[["x"]]]]}', {"Content-Type": "application/json"}, 422, "invalid JSON"),
    "json not json": (b"{features", {"Content-Type": "application/json"}, 422, "invalid JSON"),
    "json ragged": (b'{"features": [[[[1, 2], [3]]]]}', {"Content-Type": "application/json"}, 422, "ragged"),
    "json batch over limit": (('{"features": %s}' % np.zeros((5, 8, 4, 4)).tolist()).encode(),
                              {"Content-Type": "application/json"}, 413, "binary encoding"),
    "text/plain": (b"hello", {"Content-Type": "text/plain"}, 415, "unsupported content type"),
    "no content type": (wire.encode(Z1), {"Content-Type": ""}, 415, "unsupported content type"),
    "missing token": (wire.encode(Z1), {**BIN, "Authorization": ""}, 401, "bearer token"),
    "wrong token": (wire.encode(Z1), {**BIN, "Authorization": f"Bearer {TOKEN}x"}, 401, "bearer token"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(http, case):
    body, headers, status, needle = CASES[case]
    r = http.post("/v1/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail
    assert post_features(http, Z1).status_code == 200


def test_wrong_method_and_path(http):
    assert http.get("/v1/predict").status_code == 405
    assert http.get("/v1/nothing").status_code == 404


def test_client_cli_sends_only_features_and_matches_in_process(served, tmp_path, capsys, monkeypatch):
    run_dir, url = served
    x = check_images(load_run(run_dir), 3)
    paths = []
    for i, img in enumerate(x):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8), mode="L").save(paths[-1])
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["client", run_dir, *paths, "--server", url, "--noise-seed", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "bytes sent per image" in lines[-1]
    feature_bytes = 8 + 4 * 4 + 8 * 4 * 4 * 4
    assert all(line.split("\t")[4] == f"{feature_bytes} B sent" for line in lines[:3])
    # The same images through the same path in process: one request per image, one noise stream.
    rng = np.random.default_rng(5)
    run = load_run(run_dir)
    with torch.no_grad():
        want = []
        for img in x:
            z = run.model.edge(img[None])
            z = z + torch.from_numpy(device_noise(tuple(z.shape), SIGMA, rng))
            want.append(["a", "b", "c", "d"][int(run.model.cloud(z).argmax())])
    assert [line.split("\t")[1] for line in lines[:3]] == want


def test_client_refuses_a_server_with_another_model(served, tmp_path):
    other = tiny_run(tmp_path / "other")
    export_run(other, "torchscript", check_count=4)
    with pytest.raises(UserError, match="not the one this export came from"):
        run_client(other, served[1], [], token=TOKEN)
    with pytest.raises(UserError, match="401"):
        run_client(served[0], served[1], [], token="not-the-token-xxxxxxxx")


def test_serve_refuses_public_bind_without_token(served, monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve", served[0], "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refusing to serve on non-loopback address 0.0.0.0 without a token" in err


def test_no_defense_plain_cut_exports_and_serves_with_its_own_feature_shape(tmp_path):
    from splitshield.models.base import Bottleneck

    cfg = load_config({"name": "plain", "data": {"name": "synthetic", "batch_size": 32},
                       "model": {"width": 0.125, "bottleneck_channels": None},
                       "train": {"epochs": 1, "progress": False, "max_steps_per_epoch": 4}})
    run_dir = train(cfg, out=str(tmp_path / "plain")).run_dir
    run = load_run(run_dir)
    assert not any(isinstance(m, Bottleneck) for m in run.model.edge.modules())  # the plain cut: no bottleneck
    shape = tuple(run.model.feature_shape)
    assert shape[0] == 16 and shape != (8, 4, 4)  # the cut layer's own channels (128 x 0.125), not 8
    manifest, _ = export_run(run_dir, "onnx", check_count=8)
    assert manifest.check["max_abs_diff"] < 1e-4 and tuple(manifest.feature_shape) == shape
    x = check_images(run, 6)
    z = EdgeEncoder(run_dir).encode(x.numpy())
    assert z.shape == (6,) + shape and z.min() >= 0  # ReLU features, not a sigmoid's [0, 1]
    with BackgroundServer(create_app(CloudModel.from_run(run_dir), TOKEN, LIMITS)) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20) as http:
            info = http.get("/v1/model").json()
            assert tuple(info["feature_shape"]) == shape
            r = post_features(http, z)
            assert r.status_code == 200, r.text
            with torch.no_grad():
                ref = torch.softmax(run.model.cloud(torch.from_numpy(z)), dim=1).numpy()
            np.testing.assert_allclose(np.array(r.json()["probabilities"]), ref, atol=1e-5)
            wrong = post_features(http, np.zeros((2, 8, 4, 4), np.float32))  # a bottleneck-shaped feature
            assert wrong.status_code == 422
