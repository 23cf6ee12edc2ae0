"""Inversion attacks: protocols, victim safety, strength sanity checks, stored results and the CLI."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from torch import nn

from splitshield.attacks import ATTACKS
from splitshield.evaluation.attacking import run_attack
from splitshield.attacks._protocols import split_protocol
from splitshield.attacks.base import Attack, victim_guard
from splitshield.cli.main import main
from splitshield.config import load_config
from splitshield.resolve import load_experiment
from splitshield.data.synthetic import Synthetic
from splitshield.defenses import DefenseStack
from splitshield.errors import ConfigError
from splitshield.models.base import Edge, SplitModel, SplitSpec
from splitshield.train.build import LoadedRun, load_run
from splitshield.train import train

# cut=1 keeps 8x8x8 features of the 1x16x16 images: enough information for a decoder to beat the mean image.
# 3 epochs at lr 0.02: the victim is above chance in eval mode (0.54 on 4 classes), so attack results count.
RAW = {"name": "tiny-attack", "seed": 0,
       "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64, "augment": False},
       "model": {"name": "vgg11_bn", "cut": 1, "width": 0.125},
       "train": {"epochs": 3, "lr": 0.02, "schedule": "constant", "progress": False, "precision": "fp32"},
       "defenses": [{"name": "gaussian_noise", "sigma": 0.01}],
       "attacks": [{"name": "decoder", "epochs": 2, "blocks": 1, "channels": 16, "batch_size": 64}]}
# Tiny budgets per attack for the behavioural tests (each a second or two).
TINY = {"decoder": {"epochs": 1, "blocks": 1, "channels": 8, "batch_size": 64},
        "gan": {"epochs": 1, "decoder_epochs": 1, "blocks": 1, "channels": 8, "critic_channels": 8,
                "batch_size": 64, "reuse_decoder": False},
        "rmle": {"steps": 5, "score_size": 16, "batch_size": 16}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("attack-run") / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITSHIELD_RESULTS_DB", str(tmp_path_factory.mktemp("db") / "results.sqlite"))
        train(load_config(RAW), out=out)
    return out


def test_registry_has_the_three_attacks_with_paper_budgets() -> None:
    assert {"decoder", "gan", "rmle"} <= set(ATTACKS.names())
    dec, gan = ATTACKS.get("decoder").Config(), ATTACKS.get("gan").Config()
    assert (dec.epochs, dec.blocks, dec.channels, dec.batch_size, dec.weight_decay) == (50, 8, 64, 256, 1e-4)
    assert (gan.epochs, gan.critic_lr, gan.generator_lr, gan.betas, gan.gp_weight, gan.mse_weight) == \
        (150, 5e-3, 5e-4, (0.5, 0.999), 10.0, 1500.0)


@pytest.mark.parametrize("protocol", ["train", "infer"])
def test_protocol_splits_are_disjoint_and_deterministic(protocol: str) -> None:
    a = split_protocol(protocol, 1000, 300, seed=3, val_fraction=0.1)
    b = split_protocol(protocol, 1000, 300, seed=3, val_fraction=0.1)
    c = split_protocol(protocol, 1000, 300, seed=4, val_fraction=0.1)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("fit", "val", "score"))
    assert not torch.equal(a.score, c.score)
    fit, val, score = (set(t.tolist()) for t in (a.fit, a.val, a.score))
    assert not fit & val
    if protocol == "infer":  # attacker's images and scored images all come from the test set
        assert a.fit_source == "test" and len(score) == 30 and not (fit | val) & score
        assert len(fit) + len(val) + len(score) == 300
    else:
        assert a.fit_source == "train" and len(score) == 300 and len(fit) + len(val) == 1000
    # Caps take prefixes, so the first scored images (the figure's) are the same under both protocols.
    capped = split_protocol(protocol, 1000, 300, seed=3, val_fraction=0.1, train_size=50, score_size=7)
    assert len(capped.fit) == 50 and torch.equal(capped.score, a.score[:7])
    other = split_protocol("infer" if protocol == "train" else "train", 1000, 300, seed=3)
    assert torch.equal(other.score[:7], a.score[:7])


def test_unknown_protocol_and_bad_params_are_config_errors(run_dir: str) -> None:
    with pytest.raises(ConfigError, match="valid: train, infer"):
        split_protocol("test", 10, 10)
    with pytest.raises(ConfigError, match="valid keys"):
        run_attack(run_dir, "decoder", "train", {"epochz": 1}, store=False)
    with pytest.raises(ConfigError, match="valid: decoder, gan, knn, rmle"):
        run_attack(run_dir, "deconder", "train", store=False)


def test_rmle_inverts_an_identity_encoder() -> None:
    run = _identity_run()
    result = run_attack(run, "rmle", "infer", {"steps": 300, "lr": 0.05, "tv_weight": 1e-3}, store=False)
    assert result["n"] == 13 and result["psnr"] > 30.0


def _identity_run() -> LoadedRun:
    info = Synthetic.info
    model = SplitModel(Edge(nn.Identity()), nn.Flatten(), SplitSpec(info.input_shape, info.input_shape, 4))
    raw = {k: v for k, v in RAW.items() if k not in ("defenses", "attacks")}
    return LoadedRun("", load_config(raw), model, DefenseStack([]), info, 0, torch.device("cpu"))


def test_knn_on_an_identity_encoder_recovers_the_images_exactly() -> None:
    run = _identity_run()
    images = (torch.rand(40, *run.info.input_shape, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    attack = ATTACKS.get("knn")(ATTACKS.get("knn").Config(k=1), run, image_shape=run.info.input_shape)
    recon = attack.attack(images, images[:2], images[5:15])  # scored images are in the attacker's database
    assert torch.equal(recon.mul(255).round().to(torch.uint8), images[5:15])
    # k = 3: the mean of the image itself and its two nearest others, so no longer exact
    three = ATTACKS.get("knn")(ATTACKS.get("knn").Config(k=3), run, image_shape=run.info.input_shape)
    assert not torch.equal(three.attack(images, images[:2], images[5:15]), recon)


def test_knn_runs_under_both_protocols_and_beats_the_mean_image(run_dir: str) -> None:
    for protocol in ("train", "infer"):
        result = run_attack(run_dir, "knn", protocol, {"k": 3}, store=False)
        assert result["info"]["converged"] and result["learned"] and result["mse"] < result["baseline"]["mse"]


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_epoch() -> None:
    from splitshield.attacks._fitting import EarlyStopping

    stop = EarlyStopping(patience=2, min_delta=0.01)
    for value in (1.0, 0.5, 0.45, 0.449, 0.4485):  # 0.449 and 0.4485 improve by less than 1%
        assert not stop.stop
        stop.update(value)
    assert stop.stop and stop.best == 0.4485 and stop.best_epoch == 5  # the lowest is kept, progress or not
    assert stop.summary(10) | {"val_history": None} == {"val_mse": 0.4485, "best_epoch": 5, "epochs_run": 5,
                                                         "max_epochs": 10, "converged": True, "val_history": None}
    budget = EarlyStopping(patience=2)
    for value in (1.0, 0.9, 0.8):
        budget.update(value)
    assert not budget.stop and not budget.summary(3)["converged"]  # still improving when the budget ran out


def test_decoder_stops_early_and_keeps_its_best_epoch(run_dir: str) -> None:
    params = {"epochs": 40, "blocks": 1, "channels": 32, "lr": 3e-3, "batch_size": 16, "patience": 2,
              "min_delta": 0.02}
    result = run_attack(run_dir, "decoder", "infer", params, store=False)
    info = result["info"]
    assert info["converged"] and info["epochs_run"] < 40
    assert info["best_epoch"] == info["val_history"].index(min(info["val_history"])) + 1
    assert info["val_mse"] == min(info["val_history"]) and result["status"] == "ok"


def test_a_constant_decoder_is_marked_did_not_learn(run_dir: str, monkeypatch) -> None:
    decoder = ATTACKS.get("decoder")
    monkeypatch.setattr(decoder, "invert", lambda self, z: torch.zeros(len(z), *self.image_shape))
    result = run_attack(run_dir, "decoder", "infer", TINY["decoder"], store=False)
    assert result["mse"] > result["baseline"]["mse"]
    assert not result["learned"] and not result["counts"] and result["status"] == "did not learn"


def test_decoder_beats_the_mean_image_and_is_stored(run_dir: str) -> None:
    params = {"epochs": 12, "blocks": 1, "channels": 32, "lr": 3e-3, "batch_size": 16, "patience": None}
    result = run_attack(run_dir, "decoder", "train", params)
    assert result["n"] == 128 and result["psnr"] > result["baseline"]["psnr"] + 3.0
    with open(os.path.join(run_dir, "results", "attack-decoder-train.json")) as fh:
        stored = json.load(fh)
    assert stored["config"]["epochs"] == 12 and stored["config"]["batch_size"] == 16  # override on the run's spec
    assert stored["psnr"] == pytest.approx(result["psnr"]) and 0 <= stored["victim_accuracy"] <= 1
    recon = torch.load(os.path.join(run_dir, "results", "attack-decoder-train.recon.pt"), weights_only=True)
    assert recon["reconstruction"].dtype == torch.uint8 and recon["reconstruction"].shape == (8, 1, 16, 16)
    # the 8 figure images only, not the storage of every scored image they were sliced from
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in recon.values())
    # The GAN starts from this saved decoder (same protocol and seed, same architecture).
    gan = run_attack(run_dir, "gan", "train", {"epochs": 1, "blocks": 1, "channels": 32, "batch_size": 64,
                                               "critic_channels": 8}, store=False)
    assert gan["info"]["decoder"]["source"].endswith("attack-train-s0-decoder.pt")
    # Same decoder; only the defense's noise draws on the validation images differ.
    assert gan["info"]["decoder_val_mse"] == pytest.approx(result["info"]["val_mse"], rel=2e-2)


def test_run_spec_is_used_when_no_params_given(run_dir: str) -> None:
    result = run_attack(run_dir, "decoder", "infer", store=False)
    assert result["config"]["epochs"] == 2 and result["config"]["channels"] == 16
    assert len(result["info"]["val_history"]) == 2 and result["split"]["n_fit"] + result["split"]["n_val"] == 115


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_leaves_victim_bit_identical(run_dir: str, name: str) -> None:
    run = load_run(run_dir)
    run.model.train()
    run.model.edge[1].eval()  # a mixed state must come back exactly as it was
    run.defenses.train()
    params = list(run.model.parameters())
    params[0].grad = torch.ones_like(params[0])
    grad_obj = params[0].grad
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run_attack(run, name, "infer", TINY.get(name, {}), store=False)
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert params[0].grad is grad_obj and torch.equal(grad_obj, torch.ones_like(grad_obj))
    assert all(p.grad is None for p in params[1:]) and all(p.requires_grad for p in params)
    assert run.model.training and run.model.cloud.training and not run.model.edge[1].training
    assert all(m.training for m in run.defenses.modules())


def test_attack_results_are_deterministic_for_a_seed(run_dir: str) -> None:
    a = run_attack(run_dir, "decoder", "infer", TINY["decoder"], store=False, seed=5)
    b = run_attack(run_dir, "decoder", "infer", TINY["decoder"], store=False, seed=5)
    assert a["mse"] == b["mse"] and a["split"] == b["split"]


def test_guard_restores_and_reports_a_tampering_attack() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="modified"):
        with victim_guard(model):
            assert not model.training and not model[0].weight.requires_grad
            with torch.no_grad():
                model[0].weight.add_(1.0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert model.training and model[0].weight.requires_grad
    assert issubclass(ATTACKS.get("rmle"), Attack)


def test_cli_attack_and_figure(run_dir: str, tmp_path, capsys) -> None:
    assert main(["-q", "attack", run_dir, "--attack", "rmle", "--protocol", "infer", "--set", "steps=3",
                 "--set", "score_size=4"]) == 0
    out = capsys.readouterr().out
    assert "psnr" in out and "mean-image baseline" in out
    assert os.path.isfile(os.path.join(run_dir, "results", "attack-rmle-infer.json"))
    assert main(["-q", "attack", run_dir, "--attack", "rmle", "--protocol", "infer", "--set", "stepz=3"]) == 2
    assert "valid keys" in capsys.readouterr().err
    png = str(tmp_path / "fig.png")
    assert main(["-q", "figure", run_dir, "--attacks", "rmle", "--protocol", "infer", "--out", png]) == 0
    width, height = Image.open(png).size
    assert height == 2 * (16 * 3 + 2) + 2 and width > 4 * 16 * 3  # originals + one attack row, 4 images each
    assert main(["-q", "figure", run_dir, "--attacks", "gan", "--protocol", "train", "--out", png]) == 2
    assert "run 'splitshield attack" in capsys.readouterr().err


def test_presets_carry_attack_budgets() -> None:
    here = os.path.join(os.path.dirname(__file__), "..", "configs")
    for preset in ("paper-cifar10", "paper-tinyimagenet"):
        specs = {s.name: s.params for s in load_config(os.path.join(here, f"{preset}.yaml")).attacks}
        assert specs["decoder"]["epochs"] == 50 and specs["gan"]["epochs"] == 150 and specs["rmle"]["steps"] == 5000
    quick = {s.name: s for s in load_experiment(os.path.join(here, "quick-fmnist.yaml")).attacks}
    # the quick decoder trains to a plateau of its own validation MSE: epochs is a maximum, not the budget
    assert quick["decoder"].params["patience"] is not None and quick["decoder"].params["epochs"] >= 20
    assert "knn" in quick  # the training-free floor every learned attack must beat


def test_tapered_decoder_halves_its_width_at_each_upsampling_and_keeps_the_image_shape() -> None:
    from splitshield.nets.decoder import ResidualDecoder

    plain = ResidualDecoder((8, 7, 7), (1, 28, 28), blocks=2, channels=32)
    tapered = ResidualDecoder((8, 7, 7), (1, 28, 28), blocks=2, channels=32, taper=True)
    ups = [m.out_channels for m in tapered.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert ups == [16, 8] and [m.out_channels for m in plain.modules() if isinstance(m, nn.ConvTranspose2d)] == [32, 32]
    z = torch.rand(3, 8, 7, 7)
    assert tapered(z).shape == plain(z).shape == (3, 1, 28, 28)
    assert sum(p.numel() for p in tapered.parameters()) < sum(p.numel() for p in plain.parameters())
