"""Export of the edge encoder: how the defense stack is handled, the check against PyTorch, the manifest,
and the device runtime (onnxruntime + numpy noise)."""
import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from splitshield.cli.main import main
from splitshield.config import load_config
from splitshield.defenses import DEFENSES, DefenseEnv
from splitshield.deploy.edge import EdgeEncoder, device_noise
from splitshield.deploy.export import check_images, export_run, plan_transforms
from splitshield.deploy.manifest import read_manifest, state_hash
from splitshield.errors import UserError
from splitshield.runs import read_results
from splitshield.train.build import load_run
from splitshield.train import train

ENV = DefenseEnv(num_classes=4, input_shape=(1, 16, 16), feature_shape=(8, 4, 4), train_size=256, epochs=1,
                 batch_size=32)


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    """main() points the root logger at this test's captured stderr, which is closed after the test."""
    yield
    root = logging.getLogger()
    for h in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(h)


def tiny_run(path, defenses=()):
    cfg = load_config({"name": "t", "data": {"name": "synthetic"}, "model": {"width": 0.125},
                       "defenses": list(defenses),
                       "train": {"epochs": 1, "progress": False, "max_steps_per_epoch": 2}})
    return train(cfg, out=str(path)).run_dir


def member(name, **params):
    d = DEFENSES.get(name)(DEFENSES.get(name).Config(**params), ENV)
    return d.eval()


Z = torch.rand(5, 8, 4, 4, generator=torch.Generator().manual_seed(0))


def test_plan_reads_noise_std_and_keeps_noise_out_of_the_graph():
    plan = plan_transforms([member("gaussian_noise", sigma=0.1)], Z)
    assert plan.sigma == pytest.approx(0.1) and plan.graph == []
    plan = plan_transforms([member("gaussian_noise", sigma=0.1), member("gaussian_noise", sigma=0.2)], Z)
    assert plan.sigma == pytest.approx(math.sqrt(0.05))  # independent sources add in variance
    assert plan_transforms([member("gaussian_noise", sigma=0.0)], Z).sigma == 0.0


def test_plan_traces_deterministic_transforms_and_skips_identities():
    plan = plan_transforms([member("topk", ratio=0.5), member("dropout", p=0.0), member("gaussian_noise", sigma=0.1)],
                           Z)
    assert plan.graph_names == ["topk"] and plan.skipped == ["dropout"] and plan.sigma == pytest.approx(0.1)


@pytest.mark.parametrize("members, needle", [
    (lambda: [member("dropout", p=0.5)], "random at inference"),
    (lambda: [member("laplace_noise", scale=0.1)], "non-Gaussian noise"),
    (lambda: [member("gaussian_noise", sigma=0.1), member("topk", ratio=0.5)], "after the noise"),
])
def test_plan_refuses_what_the_graph_cannot_reproduce(members, needle):
    with pytest.raises(UserError, match=needle):
        plan_transforms(members(), Z)


def test_plan_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    plan_transforms([member("topk", ratio=0.5)], Z)
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """topk (deterministic, goes in the graph) then Gaussian noise (drawn on the device)."""
    run_dir = tiny_run(tmp_path_factory.mktemp("noisy"), [{"name": "topk", "ratio": 0.25},
                                                         {"name": "gaussian_noise", "sigma": 0.05}])
    manifest, path = export_run(run_dir, "onnx", check_count=16)
    return run_dir, manifest, path


def test_onnx_export_matches_pytorch_and_writes_manifest(noisy_run):
    run_dir, manifest, path = noisy_run
    run = load_run(run_dir)
    assert manifest.sigma == pytest.approx(run.defenses.noise_std()) == pytest.approx(0.05)
    assert manifest.transforms == ["topk"] and manifest.feature_shape == [8, 4, 4]
    assert manifest.input_shape == [1, 16, 16] and manifest.class_names == ["a", "b", "c", "d"]
    assert manifest.model_hash == state_hash(run.model)
    assert 0 <= manifest.check["max_abs_diff"] < 1e-4 and manifest.check["images"] == 16
    stored = read_results(run_dir)["export"]
    assert stored["max_abs_diff"] == manifest.check["max_abs_diff"] and stored["transforms"] == ["topk"]
    with open(path, encoding="utf-8") as fh:
        assert json.load(fh)["sigma"] == manifest.sigma
    # The device runtime (onnxruntime, batch size not seen at export) against edge + top-k in PyTorch.
    x = check_images(run, 7)
    with torch.no_grad():
        ref = run.defenses.members[0].transform(run.model.edge(x)).numpy()
    got = EdgeEncoder(run_dir, noise=False).features(x.numpy())
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert (got == 0).mean() >= 0.25  # top-k zeroes really are in the graph


def test_device_noise_is_the_trained_sigma_and_seedable(noisy_run, caplog):
    run_dir = noisy_run[0]
    x = np.random.default_rng(1).random((64, 1, 16, 16), dtype=np.float32)
    clean = EdgeEncoder(run_dir, noise=False).features(x)
    noisy = EdgeEncoder(run_dir, seed=3).encode(x)
    expected = device_noise(clean.shape, 0.05, np.random.default_rng(3))
    np.testing.assert_allclose(noisy - clean, expected, atol=1e-6)
    assert float((noisy - clean).std()) == pytest.approx(0.05, rel=0.1)
    assert not np.array_equal(EdgeEncoder(run_dir).encode(x), EdgeEncoder(run_dir).encode(x))  # fresh entropy
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(EdgeEncoder(run_dir, noise=False).encode(x), clean)
    assert "device noise is OFF" in caplog.text


def test_tampered_model_is_refused(noisy_run, tmp_path):
    run_dir = noisy_run[0]
    export_dir = os.path.join(run_dir, "export")
    manifest, model = read_manifest(export_dir)
    with open(model, "rb") as fh:
        data = bytearray(fh.read())
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    data[-1] ^= 0xFF
    (copy_dir / manifest.model_file).write_bytes(bytes(data))
    (copy_dir / "edge.json").write_text(manifest.to_json())
    with pytest.raises(UserError, match="does not match the sha256"):
        EdgeEncoder(str(copy_dir))


def test_cli_torchscript_export_and_errors(tmp_path, capsys):
    run_dir = tiny_run(tmp_path / "plain")
    out = tmp_path / "ts"
    assert main(["export", run_dir, "--format", "torchscript", "--out", str(out), "--check-images", "8"]) == 0
    text = capsys.readouterr().out
    assert "max abs diff" in text and "sigma: 0" in text
    manifest, _ = read_manifest(str(out))
    assert manifest.format == "torchscript" and manifest.check["max_abs_diff"] < 1e-4
    enc = EdgeEncoder(str(out))
    x = check_images(load_run(run_dir), 4)
    with torch.no_grad():
        np.testing.assert_allclose(enc.encode(x.numpy()), load_run(run_dir).model.edge(x).numpy(), atol=1e-5)
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2  # not a run directory
    assert "not a run directory" in capsys.readouterr().err


def test_cli_refuses_random_dropout_in_one_line(tmp_path, capsys):
    run_dir = tiny_run(tmp_path / "drop", [{"name": "dropout", "p": 0.5}])
    assert main(["export", run_dir]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'dropout' is random at inference" in err
    assert not os.path.exists(os.path.join(run_dir, "export", "edge.onnx"))


def test_cloud_export_matches_pytorch_on_real_features_and_is_served(noisy_run, capsys):
    from splitshield.deploy.cloud import CloudModel, OnnxCloud, TorchCloud
    from splitshield.deploy.cloud_export import fresh_cloud_export, served_features

    run_dir = noisy_run[0]
    assert main(["export", run_dir, "--part", "cloud", "--check-images", "16"]) == 0
    out = capsys.readouterr().out
    assert "cloud.onnx" in out and "in the logits vs PyTorch on 16 real features" in out
    manifest, model_file = read_manifest(os.path.join(run_dir, "export", "cloud.json"))
    run = load_run(run_dir)
    assert manifest.part == "cloud" and manifest.model_hash == state_hash(run.model)
    assert manifest.check["max_abs_diff"] < 1e-4 and manifest.check["agree_top1"] == 1.0
    assert read_results(run_dir)["export-cloud"]["features"] == 16
    # The features of the check are what the server receives: the device noise is in them.
    z = served_features(run, 8)
    assert not torch.equal(z, served_features(run, 8, seed=1))
    onnx_model = CloudModel.from_run(run_dir, backend="onnx", threads=1)
    torch_model = CloudModel.from_run(run_dir, backend="torch", threads=1)
    assert isinstance(onnx_model.forward, OnnxCloud) and isinstance(torch_model.forward, TorchCloud)
    np.testing.assert_allclose(onnx_model.predict(z.numpy()), torch_model.predict(z.numpy()), atol=1e-5)
    assert fresh_cloud_export(run_dir, manifest.model_hash) == model_file
    assert fresh_cloud_export(run_dir, "0" * 64) is None  # another checkpoint: the server re-exports
    with pytest.raises(UserError, match="cloud part of the model, not the edge encoder"):
        EdgeEncoder(os.path.join(run_dir, "export", "cloud.json"))
    EdgeEncoder(run_dir)  # the edge export beside it still loads


def test_cloud_export_check_fails_loudly_and_auto_falls_back_to_torch(tmp_path, monkeypatch, capsys):
    import splitshield.deploy.cloud_export as ce
    from splitshield.deploy.cloud import CloudModel

    run_dir = tiny_run(tmp_path / "plain")
    real = ce.onnx_session

    class Off:  # an exported graph whose answers are off by 0.01
        def __init__(self, path, *, threads):
            self.session = real(path, threads=threads)

        def run(self, names, feeds):
            return [self.session.run(names, feeds)[0] + 0.01]

    monkeypatch.setattr(ce, "onnx_session", Off)
    assert main(["export", run_dir, "--part", "cloud"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from PyTorch by 0.01" in err and "--backend torch" in err
    assert not os.path.exists(os.path.join(run_dir, "export", "cloud.onnx"))
    assert CloudModel.from_run(run_dir, backend="auto").backend == "torch"  # a warning, then PyTorch
    with pytest.raises(UserError, match="differs from PyTorch"):
        CloudModel.from_run(run_dir, backend="onnx")
    assert main(["export", run_dir, "--part", "cloud", "--format", "torchscript"]) == 2
    assert "exports to onnx only" in capsys.readouterr().err
