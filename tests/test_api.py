"""The public Python API: a defense in a user's own loop, attacks and audits of a user's encoder, the Run handle.

The reference for the loop is ``splitshield train`` itself: the same config trained through the API in a plain loop
must give the same accuracy and the same attack MSE for the same seed."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import splitshield
from splitshield.errors import CheckpointError, ConfigError, UsageError

SMALL_DECODER = {"epochs": 2, "blocks": 1, "channels": 8, "patience": None, "min_epochs": 1}


def _cfg(tiny_raw: dict, defenses: list) -> dict:
    raw = copy.deepcopy(tiny_raw)
    raw["data"].update(augment=False, batch_size=16)
    raw["train"].update(epochs=4, lr=0.01, max_steps_per_epoch=None, milestones=[3])
    raw["defenses"] = defenses
    return raw


def _api_loop(raw: dict) -> tuple[float, torch.nn.Module, splitshield.LoopDefense, object]:
    """The config's run as a user's plain loop: our data and model builders, the user's loop with the API."""
    from splitshield.data import build_data, to_unit
    from splitshield.models import build_model
    from splitshield.train.checkpoint import seed_everything
    from splitshield.train.optim import build_optimizer, build_scheduler

    cfg = splitshield.load_experiment(raw)
    seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.info)
    defense = splitshield.defense([{"name": s.name, **s.params} for s in cfg.defenses], num_classes=4,
                                  epochs=cfg.train.epochs, loader=data.train_loader, encoder=model.edge,
                                  seed=cfg.seed)
    optimizer, = [build_optimizer(cfg.train, model.parameters())]
    scheduler = build_scheduler(cfg.train, optimizer)
    accuracy = 0.0
    for _ in range(cfg.train.epochs):
        model.train()
        defense.train()
        for images, y in data.train_loader:
            x = to_unit(images)
            z = defense(model.edge(x))
            logits = model.cloud(z)
            loss = F.cross_entropy(logits, y) + defense.penalty(x, y, logits, lr=optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            defense.step()
        defense.end_epoch()
        model.eval()
        defense.eval()
        correct = 0
        with torch.no_grad():
            for images, y in data.test_loader:
                correct += int((model.cloud(defense(model.edge(to_unit(images)))).argmax(1) == y).sum())
        accuracy = correct / len(data.test)
        scheduler.step()
    return accuracy, model, defense, data


def test_api_loop_trains_and_attacks_exactly_as_the_cli(tiny_raw, tmp_path) -> None:
    raw = _cfg(tiny_raw, [{"name": "cem", "lam": 0.5}])
    accuracy, model, defense, data = _api_loop(raw)
    assert defense.names == ["gaussian_noise", "cem"]  # CEM's own noise written out, as the CLI resolves it
    assert int(defense.stack.members[1].fits) == 4  # the term was on from epoch 2: the equality below tests it
    assert accuracy > 0.9  # a model that learned: the equality is not one of two chance-level runs
    api = splitshield.attack(model.edge, data.train, data.test, "decoder", defense=defense, params=SMALL_DECODER,
                             progress=False)

    from splitshield.cli.main import main

    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(raw))
    out = str(tmp_path / "cli")
    assert main(["--results-db", "none", "train", str(cfg_path), "--out", out]) == 0
    run = splitshield.Run.open(out)
    assert run.accuracy == pytest.approx(accuracy, abs=0)
    cli = run.attack("decoder", "train", params=SMALL_DECODER)
    assert cli.mse == api.mse and cli.ssim == api.ssim and cli.n == api.n
    assert api.reconstructions is not None and api.reconstructions.shape == (api.n, 1, 16, 16)


class MLPEncoder(nn.Module):
    """A user's own model, not in any registry: flat features."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 16), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _user_data(n: int = 192) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    templates = torch.rand(4, 1, 16, 16, generator=g)
    images = (templates[labels] + 0.2 * torch.randn(n, 1, 16, 16, generator=g)).clamp(0, 1)
    return torch.utils.data.TensorDataset(images, labels)


def test_cem_on_a_user_model_with_flat_features_attack_knn_and_audit() -> None:
    torch.manual_seed(0)
    encoder, head = MLPEncoder(), nn.Linear(16, 4)
    train_set, test_set = _user_data(), _user_data(96)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    cem = splitshield.defense("cem", num_classes=4, epochs=3, loader=loader, encoder=encoder, lam=0.5)
    assert cem.env.feature_shape == (16, 1, 1) and cem.env.train_size == 192 and cem.env.batch_size == 32
    opt = torch.optim.SGD(list(encoder.parameters()) + list(head.parameters()), lr=0.1)
    penalties = []
    for _ in range(3):
        for x, y in loader:
            z = cem(encoder(x))
            assert z.shape == (len(x), 16)  # flat in, flat out
            logits = head(z)
            loss = F.cross_entropy(logits, y) + cem.penalty(x, y, logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            cem.step()
            penalties.append(cem.logs.get("penalty/cem", 0.0))
        cem.end_epoch()
    assert penalties[0] == 0.0 and penalties[-1] != 0.0  # no fit in epoch 1; the term acts from epoch 2
    results = [splitshield.attack(encoder, train_set, test_set, name, defense=cem, params=params, progress=False)
               for name, params in (("decoder", SMALL_DECODER), ("knn", {"k": 3}))]
    for r in results:
        assert isinstance(r, splitshield.AttackResult) and r.n == 96 and 0 < r.mse < 1
        assert r.learned == (r.mse < r.baseline_mse) and r.counts == (r.learned and r.converged is not False)
    assert results[1].converged is True and results[0].converged is None  # fixed budget: unknown, not held
    bound = splitshield.audit(encoder, train_set, defense=cem)
    assert bound["degenerate"] is False and bound["feature_dim"] == 16 and bound["noise_std"] == pytest.approx(0.025)
    assert splitshield.audit(encoder, train_set)["degenerate"] is True  # no noise: nothing bounds I(x; z)


def test_infer_protocol_needs_no_fit_data_and_the_figure_is_written(tmp_path) -> None:
    torch.manual_seed(0)
    encoder = MLPEncoder()
    test_images = _user_data(96).tensors[0]
    r = splitshield.attack(encoder, None, test_images, "knn", protocol="infer", progress=False)
    assert r.n == 10 and r.record["split"]["n_fit"] + r.record["split"]["n_val"] == 86
    path = splitshield.save_reconstructions([r], str(tmp_path / "recon.png"))
    assert os.path.getsize(path) > 0


def test_api_errors_are_one_clear_exception() -> None:
    encoder = MLPEncoder()
    loader = torch.utils.data.DataLoader(_user_data(), batch_size=32)
    with pytest.raises(ConfigError, match="valid keys|lam"):
        splitshield.defense("cem", num_classes=4, epochs=2, loader=loader, encoder=encoder, lamda=0.1)
    with pytest.raises(ConfigError, match="unknown defense 'cme'"):
        splitshield.defense("cme", num_classes=4, epochs=2, loader=loader, encoder=encoder)
    with pytest.raises(ConfigError, match="architecture"):
        splitshield.defense("patrol", num_classes=4, epochs=2, loader=loader, encoder=encoder)
    with pytest.raises(UsageError, match="loader="):
        splitshield.defense("cem", num_classes=4, epochs=2, encoder=encoder)
    cem = splitshield.defense("cem", num_classes=4, epochs=2, loader=loader, encoder=encoder)
    with pytest.raises(UsageError, match=r"expected features of shape \(B, 16, 1, 1\)"):
        cem(torch.zeros(2, 8))
    with pytest.raises(UsageError, match="call defense.to"):
        cem(torch.zeros(2, 16, device="meta"))
    x, y = next(iter(loader))
    z = cem(encoder(x))
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 3\]"):
        cem.penalty(x, y + 4, z)
    with pytest.raises(UsageError, match="pixels must lie in"):
        splitshield.attack(encoder, x * 255, x, "knn", progress=False)
    with pytest.raises(UsageError, match=r"expected \(images, labels\) items"):
        splitshield.attack(encoder, [("a", "b")] * 4, x, "knn", progress=False)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="expected features of shape"):
        splitshield.attack(nn.Flatten(0), x, x, "knn", progress=False)  # 1-D output
    with pytest.raises(UsageError, match="needs labels"):
        splitshield.audit(encoder, x)


def test_run_handle_and_the_pipeline_reads_the_config_once(tiny_raw, tmp_path, monkeypatch) -> None:
    import splitshield.runs as runs

    with pytest.raises(CheckpointError, match="not a run directory"):
        splitshield.Run.open(str(tmp_path))
    reads = []
    real = runs.load_config
    monkeypatch.setattr(runs, "load_config", lambda *a, **k: reads.append(a) or real(*a, **k))
    raw = copy.deepcopy(tiny_raw)
    raw["attacks"] = [{"name": "knn"}]
    run = splitshield.experiment(raw, out=str(tmp_path / "run"))
    assert isinstance(run, splitshield.Run) and run.trained and 0 <= run.accuracy <= 1
    assert len(reads) == 1  # Run.open's own read; the pipeline itself read nothing back (it wrote it)
    reads.clear()
    splitshield.experiment(raw, out=str(tmp_path / "run"))  # all reused: one read (the digest check) + Run.open
    assert len(reads) == 2
    stored = run.attack_result("knn", "train")
    assert stored is not None and stored.mse == run.result("attack-knn-train")["mse"]
    assert run.transmit(torch.zeros(2, 1, 16, 16)).shape == (2, *run.model.feature_shape)
    assert run.audit(store=False)["epoch"] == 1
    manifest = run.export("onnx")
    assert os.path.isfile(manifest) and run.result("export")["format"] == "onnx"
    with pytest.raises(ConfigError, match="edge' or 'cloud"):
        run.export("onnx", part="both")


def test_the_public_names_exist_and_are_documented() -> None:
    for name in splitshield.__all__:
        obj = getattr(splitshield, name)
        assert name == "__version__" or (getattr(obj, "__doc__", None) or "").strip(), name


def test_under_torchrun_the_defense_is_built_for_the_global_batch(monkeypatch) -> None:
    import splitshield.api.loop as loop

    monkeypatch.setattr(loop.parallel, "world_size", lambda: 2)  # as under torchrun with 2 ranks
    loader = torch.utils.data.DataLoader(_user_data(), batch_size=16)
    cem = splitshield.defense("cem", num_classes=4, epochs=2, loader=loader, encoder=MLPEncoder())
    assert cem.env.batch_size == 32 and cem.env.train_size == 192  # CEM's N and B are the job's, not a rank's


def test_ressfl_in_a_user_loop_and_the_state_dict_resumes_the_schedule() -> None:
    torch.manual_seed(0)
    encoder, head = MLPEncoder(), nn.Linear(16, 4)
    loader = torch.utils.data.DataLoader(_user_data(64), batch_size=32)
    arl = splitshield.defense([{"name": "gaussian_noise", "sigma": 0.05}, {"name": "ressfl", "pretrain_epochs": 0,
                                                                           "blocks": 1, "channels": 8}],
                              num_classes=4, epochs=2, loader=loader, encoder=encoder)
    before = [p.detach().clone() for p in arl.stack.members[1].attacker.parameters()]
    for x, y in loader:
        logits = head(arl(encoder(x)))
        (F.cross_entropy(logits, y) + arl.penalty(x, y, logits)).backward()
        arl.step()
    arl.end_epoch()
    assert "ressfl/attacker_mse" in arl.logs and "penalty/ressfl" in arl.logs
    after = list(arl.stack.members[1].attacker.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # step() trained the simulated attacker
    again = splitshield.defense([{"name": "gaussian_noise", "sigma": 0.05}, {"name": "ressfl", "pretrain_epochs": 0,
                                                                             "blocks": 1, "channels": 8}],
                                num_classes=4, epochs=2, loader=loader, encoder=encoder)
    again.load_state_dict(arl.state_dict())
    assert (again.epoch, again.steps) == (1, 2)
