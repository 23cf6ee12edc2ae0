"""CEM: the per-class mixture fit, Eq. 5-7, the official variant, and CEM as a defense in the training loop."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from splitshield.config import load_config
from splitshield.resolve import load_experiment
from splitshield.defenses import DEFENSES, DefenseEnv, DefenseStack, StepContext
from splitshield.defenses import _mixture as mx
from splitshield.defenses.cem import CEM, CEMConfig
from splitshield.errors import ConfigError
from splitshield.data.synthetic import Synthetic
from splitshield.models import build_model
from splitshield.train import train
from splitshield.train.checkpoint import CHECKPOINT, load_checkpoint


def blobs(weights, means, stds, n, seed=0):
    """Samples of one class's mixture: weights (K,), means (K, D), diagonal stds (K, D)."""
    g = torch.Generator().manual_seed(seed)
    counts = [round(w * n) for w in weights]
    parts = [means[k] + stds[k] * torch.randn(c, means.shape[1], generator=g) for k, c in enumerate(counts)]
    return torch.cat(parts), torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])


def known_mixture(d=6, seed=0):
    """Two classes x two components, well separated, known weights and diagonal covariances."""
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(2, 2, d, generator=g)
    stds = 0.2 + 0.5 * torch.rand(2, 2, d, generator=g)
    weights = [[0.3, 0.7], [0.6, 0.4]]
    feats, labels, comps = [], [], []
    for c in range(2):
        x, k = blobs(weights[c], means[c], stds[c], 4000, seed=seed + c)
        feats.append(x)
        labels.append(torch.full((len(x),), c))
        comps.append(k)
    return torch.cat(feats), torch.cat(labels), torch.cat(comps), means, stds, torch.tensor(weights) / 2


def matched(fit_means, true_means):
    """Order fitted components like the true ones (nearest true mean), per class."""
    d = torch.cdist(true_means, fit_means)  # (C, K, K)
    return d.argmin(-1)


def test_fit_recovers_weights_and_covariances_and_lc_matches_eq7_closed_form() -> None:
    feats, labels, _, means, stds, weights = known_mixture()
    gen = torch.Generator().manual_seed(0)
    sigma2 = 0.05 ** 2
    for mode in ("diagonal", "full", "isotropic"):
        fit = mx.fit_mixture(feats, labels, 2, 2, mode, 20, generator=gen)
        order = matched(fit.means, means)
        w = torch.take_along_dim(fit.weights, order, 1)
        assert torch.allclose(w, weights, atol=0.01), mode
        cov = torch.stack([fit.cov[c, order[c]] for c in range(2)]).float()
        var = stds ** 2
        if mode == "diagonal":
            assert torch.allclose(cov, var, rtol=0.15)
        elif mode == "full":
            assert torch.allclose(torch.diagonal(cov, dim1=-2, dim2=-1), var, rtol=0.15)
            off = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
            assert off.abs().max() < 0.03
        else:
            assert torch.allclose(cov, var.mean(-1), rtol=0.1)
    # Eq. 7 closed form from the true parameters (numpy, slogdet) vs. the fitted full mixture.
    fit = mx.fit_mixture(feats, labels, 2, 2, "full", 20, generator=gen)
    expected = 0.0
    for c in range(2):
        for k in range(2):
            p = float(weights[c, k])
            cov = np.diag(stds[c, k].numpy().astype(np.float64) ** 2)
            _, num = np.linalg.slogdet(cov + sigma2 * np.eye(6))
            expected += p * (-math.log(p) + 0.5 * (num - 6 * math.log(sigma2)))
    got = mx.entropy_loss(fit.weights.flatten(), mx.log_det_ratio(fit.cov.flatten(0, 1), sigma2, "full", 6))
    assert got.item() == pytest.approx(expected, rel=0.01)
    got_diag = mx.entropy_loss(torch.take_along_dim(fit.weights, matched(fit.means, means), 1).flatten(),
                               mx.log_det_ratio((stds ** 2).flatten(0, 1), sigma2, "diagonal", 6))
    assert got_diag.item() == pytest.approx(expected, rel=1e-5)


def test_clustering_agrees_with_sklearn_kmeans_and_gaussian_mixture() -> None:
    g = torch.Generator().manual_seed(3)
    centers = 3.0 * torch.randn(3, 5, generator=g)
    x = torch.cat([c + 0.6 * torch.randn(150, 5, generator=g) for c in centers])
    labels = torch.zeros(len(x), dtype=torch.long)
    fit = mx.fit_mixture(x, labels, 1, 3, "diagonal", 30, generator=torch.Generator().manual_seed(0))
    ours = mx.assign_batch(x, labels, fit.means)
    km = KMeans(3, n_init=10, random_state=0).fit(x.numpy())
    assert adjusted_rand_score(km.labels_, ours.numpy()) > 0.99
    inertia = ((x - fit.means[0, ours]) ** 2).sum().item()
    assert inertia == pytest.approx(km.inertia_, rel=1e-3)
    gm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(x.numpy())
    order = torch.cdist(torch.tensor(gm.means_, dtype=torch.float32), fit.means[0]).argmin(1)
    assert np.allclose(fit.weights[0, order].numpy(), gm.weights_, atol=0.01)
    assert np.allclose(fit.cov[0, order].numpy(), gm.covariances_, rtol=0.1)


def reference_step(z, y, means, weights, cov, n_train, sigma2):
    """Obviously-correct loop version of Eq. 5-7 (diagonal covariances) for one batch."""
    c_, k_, d = means.shape
    loss = 0.0
    new_w, new_cov = weights.clone(), cov.clone()
    assign = [int(torch.cdist(z[i:i + 1], means[int(y[i])]).argmin()) for i in range(len(z))]
    for c in range(c_):
        for k in range(k_):
            members = [i for i in range(len(z)) if int(y[i]) == c and assign[i] == k]
            n = len(members)
            w = (weights[c, k] * (n_train - len(z)) + n) / n_train
            s = cov[c, k]
            if n:
                delta = sum((z[i] - means[c, k]) ** 2 for i in members) / n
                rate = n / (w * n_train)
                s = (1 - rate) * s + rate * delta
            new_w[c, k], new_cov[c, k] = w, s
            if w > 0:
                loss = loss + w * (-torch.log(w) + 0.5 * torch.log(1 + s / sigma2).sum())
    return loss, new_w, new_cov


def test_batch_update_matches_loop_reference_including_empty_and_single_member_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    means = torch.randn(2, 3, 4, generator=g)
    weights = torch.tensor([[0.2, 0.2, 0.1], [0.3, 0.2, 0.0]])  # one component with zero weight
    cov = 0.1 + torch.rand(2, 3, 4, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1])
    z = torch.stack([means[0, 0] + 0.1, means[0, 0] - 0.2, means[0, 1] + 0.05, means[1, 0], means[1, 0] + 0.3])
    ref, ref_w, ref_cov = reference_step(z, y, means, weights, cov, 50, 0.01)
    comp = mx.assign_batch(z, y, means)
    loss, w, s = mx.paper_step(z, comp, means.flatten(0, 1), weights.flatten(), cov.flatten(0, 1), 50, 0.01,
                               "diagonal")
    assert loss.item() == pytest.approx(float(ref), rel=1e-5)
    assert torch.allclose(w, ref_w.flatten()) and torch.allclose(s, ref_cov.flatten(0, 1), atol=1e-6)
    assert torch.bincount(comp, minlength=6).tolist() == [2, 1, 0, 2, 0, 0]  # single-member and empty clusters


def autograd_full_step(z, comp, means, weights, cov, n_train, sigma2, jitter=1e-6):
    """Eq. 5-7 with full covariances written directly (one-hot scatter, logdet), differentiated by autograd."""
    k, d = weights.shape[0], z.shape[1]
    n = torch.bincount(comp, minlength=k).double()
    xc = (z - means[comp]).double()
    scatter = torch.einsum("bk,bi,bj->kij", F.one_hot(comp, k).double(), xc, xc)
    w = (weights.double() * (n_train - len(z)) + n) / n_train
    rate = torch.where(n > 0, n / (w * n_train), torch.zeros_like(n))
    new_cov = (1 - rate)[:, None, None] * cov.double() + (rate / n.clamp_min(1))[:, None, None] * scatter
    half_log_det = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) * (1 + jitter) + new_cov / sigma2)
    return (-torch.special.xlogy(w, w) + w * half_log_det).sum(), new_cov


@pytest.mark.parametrize("d,sigma", [(6, 0.1), (40, 0.025), (40, 1e-3)])
def test_full_covariance_step_has_the_autograd_value_and_gradient(d, sigma) -> None:
    # The full mode computes dL_C/dz in closed form (a Cholesky solve); autograd through logdet is the oracle.
    g = torch.Generator().manual_seed(d)
    fit = mx.fit_mixture(torch.rand(300, d, generator=g, dtype=torch.float64), torch.arange(300) % 3, 3, 2, "full",
                         5, generator=g)
    z = torch.rand(13, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(13) % 3
    comp = mx.assign_batch(z, y, fit.means)
    args = (z, comp, fit.means.flatten(0, 1), fit.weights.flatten(), fit.cov.flatten(0, 1), 300, sigma ** 2)
    loss, _, cov = mx.paper_step(*args, "full")
    want, want_cov = autograd_full_step(*args)
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(cov, want_cov, rtol=1e-10, atol=1e-14)
    got_grad, = torch.autograd.grad(loss, z)
    want_grad, = torch.autograd.grad(want, z)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-8, atol=1e-12)
    assert got_grad.abs().sum() > 0


@pytest.mark.parametrize("mode,d", [("diagonal", 4096), ("isotropic", 4096), ("full", 512)])
@pytest.mark.parametrize("sigma", [1e-4, 0.025])
def test_loss_and_gradients_are_finite_for_tiny_sigma_large_d_and_degenerate_clusters(mode, d, sigma) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(64, d, generator=g)
    labels = torch.arange(64) % 2
    feats[labels == 1] = feats[1].clone()  # class 1: all members identical (zero-variance clusters)
    fit = mx.fit_mixture(feats, labels, 2, 3, mode, 5, generator=g)
    z = torch.rand(5, d, generator=g, requires_grad=True)
    y = torch.tensor([0, 0, 0, 0, 1])  # some clusters empty, one class single-member
    comp = mx.assign_batch(z, y, fit.means)
    loss, _, cov = mx.paper_step(z, comp, fit.means.flatten(0, 1), fit.weights.flatten(),
                                 fit.cov.flatten(0, 1), 64, sigma ** 2, mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert torch.isfinite(cov).all()
    var = {"isotropic": fit.cov, "diagonal": fit.cov.mean(-1) if fit.cov.dim() == 3 else fit.cov,
           "full": torch.diagonal(fit.cov, dim1=-2, dim2=-1).mean(-1)}[mode]
    off = mx.official_step(z, comp, fit.means.flatten(0, 1), fit.counts.flatten(), var.flatten(), 2, sigma ** 2,
                           0.01, 0.125)
    assert torch.isfinite(off)


def test_official_loss_equals_hand_computed_value() -> None:
    # 2 classes x 2 clusters in D = 2; stored sizes 10, 30 | 20, 20; stored v 0.5, 0.2 | 0.1, 0.3.
    means = torch.tensor([[0.0, 0.0], [4.0, 4.0], [0.0, 4.0], [4.0, 0.0]])
    counts = torch.tensor([10.0, 30.0, 20.0, 20.0])
    var = torch.tensor([0.5, 0.2, 0.1, 0.3])
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 1.0]])  # class 0 cluster 0 (x2), class 1 cluster 1
    y = torch.tensor([0, 0, 1])
    comp = mx.assign_batch(z, y, means.view(2, 2, 2))
    assert comp.tolist() == [0, 0, 3]
    got = mx.official_step(z, comp, means, counts, var, 2, 0.1 ** 2, gamma=0.01, tau=0.125)
    thr = math.log(0.125 * 0.01 + 0.01)
    # class 0, cluster 0: n=2, v_batch = (1 + 4) / (2 * 2) = 1.25, a = min(.99, 20/10) = .99, pi = 10/40
    v0 = 0.99 * 1.25 + 0.01 * 0.5
    c0 = 0.25 * max(0.0, math.log(v0 + 0.01) - thr)
    # class 1, cluster 1: n=1, v_batch = 1/2, a = 10/20 = .5, pi = 20/40
    v1 = 0.5 * 0.5 + 0.5 * 0.3
    c1 = 0.5 * max(0.0, math.log(v1 + 0.01) - thr)
    assert got.item() == pytest.approx((c0 + c1) / 2, rel=1e-6)
    assert mx.official_lambda_scale(0.05) == pytest.approx(0.02) and mx.official_lambda_scale(4e-4) == 1.0


def tiny(tiny_raw, defenses, epochs=3):
    raw = dict(tiny_raw, defenses=defenses, train=dict(tiny_raw["train"], epochs=epochs, max_steps_per_epoch=4))
    return load_config(raw)


def state(run_dir):
    return load_checkpoint(os.path.join(run_dir, CHECKPOINT))


def test_lambda_zero_reproduces_the_run_without_cem_bit_for_bit(tiny_raw, tmp_path) -> None:
    noise = {"name": "gaussian_noise", "sigma": 0.05}
    base = train(tiny(tiny_raw, [noise]), out=str(tmp_path / "base"))
    zero = train(tiny(tiny_raw, [noise, {"name": "cem", "lam": 0.0}]), out=str(tmp_path / "zero"))
    # separation 0: the tiny model's class means sit closer than D sigma^2, where the guard would switch CEM off
    on = train(tiny(tiny_raw, [noise, {"name": "cem", "lam": 16.0, "separation": 0}]), out=str(tmp_path / "on"))
    a, b, c = state(base.run_dir), state(zero.run_dir), state(on.run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert int(b["defenses"]["members.1.fits"]) == 3  # lam 0 still captured and fitted: without side effects
    assert not torch.equal(a["model"]["edge.1.0.weight"], c["model"]["edge.1.0.weight"])


def test_cem_gradient_reaches_only_the_encoder_and_uses_the_stack_noise() -> None:
    info = Synthetic.info
    model = build_model(load_config({"model": {"width": 0.125}}).model, info)
    env = DefenseEnv(4, info.input_shape, model.feature_shape, 64, 2, 16, seed=0)
    noise = DEFENSES.get("gaussian_noise")(DEFENSES.get("gaussian_noise").Config(sigma=0.07), env)
    cem = CEM(CEMConfig(lam=16.0, separation=0), env)
    stack = DefenseStack([noise, cem])
    assert cem.sigma2() == pytest.approx(0.07 ** 2) and cem.noise().variance == 0  # the stack's noise, none added
    alone = CEM(CEMConfig(sigma=0.03), env)
    DefenseStack([alone])
    assert alone.sigma2() == pytest.approx(0.03 ** 2) and alone.noise().std == pytest.approx(0.03)  # adds its own
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 16, 16, generator=g), torch.arange(16) % 4
    cem.on_epoch_start(0)
    ctx = lambda: StepContext(x=x, y=y, z_hat=(zh := model.edge(x)), z=zh, logits=model.cloud(zh), model=model,
                              epoch=0, step=0, lr=0.05)
    first = ctx()
    stack.observe(first)  # the capture the fit needs
    assert stack.penalties(first) is None  # epoch 1: no fit yet
    cem.on_epoch_end(0)
    model.zero_grad()
    penalty = stack.penalties(ctx())
    penalty.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.cloud.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.edge.parameters())


def test_official_variant_trains_and_resume_restores_the_mixture_exactly(tiny_raw, tmp_path) -> None:
    cfg = tiny(tiny_raw, [{"name": "cem", "variant": "official"}])
    run = train(cfg, out=str(tmp_path / "o"))
    st = state(run.run_dir)["defenses"]
    # members.1: CEM's own noise is written out before it (resolve.py)
    assert st["members.1.means"].shape == (4, 5, 128) and st["members.1.cov"].shape == (4, 5)
    from splitshield.train.build import load_run
    loaded = load_run(run.run_dir)
    cem = loaded.defenses.members[1]
    assert cem._ready and torch.equal(cem.means, st["members.1.means"])


@pytest.mark.parametrize("params,needle", [({"sigma": 0}, "sigma"), ({"lam": -1}, "lam"),
                                           ({"variant": "official", "covariance": "full"}, "covariance"),
                                           ({"covariance": "spherical"}, "valid"), ({"min_steps": -1}, "min_steps"),
                                           ({"max_boost": 0.5}, "max_boost"),
                                           ({"variant": "official", "noise_matched": True}, "noise_matched")])
def test_bad_cem_settings_are_one_line_config_errors(tiny_raw, params, needle) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        load_experiment(dict(tiny_raw, defenses=[{"name": "cem", **params}]))
    assert "\n" not in str(info.value)


def test_interrupted_then_resumed_cem_run_equals_the_uninterrupted_one(tiny_raw, tmp_path, monkeypatch) -> None:
    import splitshield.train.loop as loop

    cfg = tiny(tiny_raw, [{"name": "gaussian_noise", "sigma": 0.05}, {"name": "cem", "covariance": "full"}])
    full = train(cfg, out=str(tmp_path / "full"))
    real = loop.train_epoch
    calls = {"n": 0}

    def dies_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=str(tmp_path / "cut"))
    monkeypatch.setattr(loop, "train_epoch", real)
    resumed = train(cfg, resume_dir=str(tmp_path / "cut"))
    a, b = state(full.run_dir), state(resumed.run_dir)
    for part in ("model", "defenses"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key
    assert a["defenses"]["members.1.cov"].shape == (4, 3, 128, 128)


def test_cem_own_noise_is_written_out_so_equal_stacks_are_one_run(tiny_raw: dict) -> None:
    from splitshield.resolve import run_name

    def cfg(defenses: list) -> object:
        return load_experiment({**tiny_raw, "defenses": defenses})

    implicit = cfg([{"name": "nopeek", "alpha": 0.5}, {"name": "cem", "sigma": 0.04}])
    explicit = cfg([{"name": "gaussian_noise", "sigma": 0.04}, {"name": "nopeek", "alpha": 0.5},
                    {"name": "cem", "sigma": 0.04}])
    assert [s.name for s in implicit.defenses] == ["gaussian_noise", "nopeek", "cem"]  # the noise stage's place
    assert implicit.defenses[0].params["sigma"] == 0.04
    assert implicit.digest() == explicit.digest() and run_name(implicit) == run_name(explicit)
    assert load_experiment(implicit.to_dict()).digest() == implicit.digest()  # idempotent (training resolves again)
    dropout = cfg([{"name": "dropout", "p": 0.2}, {"name": "cem"}])
    assert [s.name for s in dropout.defenses] == ["dropout", "gaussian_noise", "cem"]  # after the transform stage
    for kept in ([{"name": "laplace_noise", "scale": 0.02}, {"name": "cem"}], [{"name": "cem", "add_noise": False}]):
        assert [s.name for s in cfg(kept).defenses] == [s["name"] for s in kept]  # noise already there / not wanted


def test_cem_own_noise_draws_what_the_gaussian_noise_defense_draws() -> None:
    """What makes writing the noise out a renaming: both stacks transmit the same z for the same seed."""
    info = Synthetic.info
    model = build_model(load_config({"model": {"width": 0.125}}).model, info)
    env = DefenseEnv(4, info.input_shape, model.feature_shape, 64, 2, 16, seed=0)
    implicit = DefenseStack([CEM(CEMConfig(sigma=0.04), env)])
    explicit = DefenseStack([DEFENSES.get("gaussian_noise")(DEFENSES.get("gaussian_noise").Config(sigma=0.04), env),
                             CEM(CEMConfig(sigma=0.04), env)])
    z = torch.randn(8, *model.feature_shape)
    torch.manual_seed(3)
    a = implicit.transform(z)
    torch.manual_seed(3)
    b = explicit.transform(z)
    assert not torch.equal(a, z) and torch.equal(a, b)
    assert implicit.noise_std() == pytest.approx(explicit.noise_std())


def test_short_runs_scale_lambda_by_the_missing_steps_and_long_runs_keep_it_exactly() -> None:
    # 10 epochs of batch 128: 5k images have 9 x 40 = 360 steps with the term on (lam x 1000/360), 15k images
    # 9 x 118 = 1,062 (lam as given, bit for bit: the quick table's runs); 2 epochs of 5k hit the 3x cap
    def cem(train_size: int, epochs: int = 10, **params) -> CEM:
        env = DefenseEnv(10, (1, 28, 28), (8, 7, 7), train_size, epochs, 128, seed=0)
        return CEM(CEMConfig(**params), env)

    assert cem(5000).length_factor() == pytest.approx(1000 / 360)
    assert cem(15000).length_factor() == 1.0 and cem(5000, min_steps=0).length_factor() == 1.0
    assert cem(5000, epochs=2).length_factor() == 3.0 and cem(5000, epochs=2, max_boost=5).length_factor() == 5.0
    long, off = cem(15000), cem(15000, min_steps=0)
    assert long.weight(128, 392) == off.weight(128, 392)
    assert cem(5000).weight(128, 392) == pytest.approx(cem(5000, min_steps=0).weight(128, 392) * 1000 / 360)


@pytest.mark.parametrize("mode", ["diagonal", "isotropic", "full"])
def test_noise_matched_scales_lambda_by_the_fitted_variance_and_is_exactly_one_at_cems_own_sigma(mode) -> None:
    info = Synthetic.info
    model = build_model(load_config({"model": {"width": 0.125}}).model, info)
    env = DefenseEnv(4, info.input_shape, model.feature_shape, 64, 2, 16, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 16, 16, generator=g), torch.arange(64) % 4

    def fitted(noise_sigma: float, **params) -> CEM:  # noqa: ANN003
        noise = DEFENSES.get("gaussian_noise")(DEFENSES.get("gaussian_noise").Config(sigma=noise_sigma), env)
        cem = CEM(CEMConfig(covariance=mode, **params), env)
        DefenseStack([noise, cem])
        cem.on_epoch_start(0)
        with torch.no_grad():
            zh = model.edge(x)
        cem.observe(StepContext(x=x, y=y, z_hat=zh, z=zh, logits=None, model=model, epoch=0, step=0, lr=0.05))
        cem.on_epoch_end(0)
        return cem

    at_own, off = fitted(0.025, noise_matched=True), fitted(0.025)
    assert at_own.weight(16, 392) == off.weight(16, 392)  # s = sigma: the factor is exactly 1
    strong, plain = fitted(0.25, noise_matched=True), fitted(0.25)
    # V by hand from the fit: the pi-weighted mean of the per-dimension component variances
    cov = strong.cov.double()
    per = {"diagonal": cov.mean(-1), "isotropic": cov, "full": torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)}[mode]
    v = float((strong.weights.double() * per).sum() / strong.weights.double().sum())
    expected = (v + 0.25 ** 2) / (v + 0.025 ** 2)
    assert expected > 1.5 and strong.weight(16, 392) == pytest.approx(plain.weight(16, 392) * expected, rel=1e-9)
    saved = {k: t.clone() for k, t in strong.state_dict().items()}
    again = CEM(CEMConfig(covariance=mode, noise_matched=True), env)
    DefenseStack([DEFENSES.get("gaussian_noise")(DEFENSES.get("gaussian_noise").Config(sigma=0.25), env), again])
    again.load_state_dict(saved)  # a resumed run keeps the factor of its last fit
    assert again.weight(16, 392) == strong.weight(16, 392)
    saved.pop("noise_factor")  # a checkpoint from before the option existed: factor 1
    old = CEM(CEMConfig(covariance=mode), env)
    DefenseStack([DEFENSES.get("gaussian_noise")(DEFENSES.get("gaussian_noise").Config(sigma=0.25), env), old])
    old.load_state_dict(saved)
    assert old.weight(16, 392) == plain.weight(16, 392)


def test_noise_matched_off_keeps_the_identity_of_runs_made_before_it_existed() -> None:
    from splitshield.resolve import resolve

    base = ["data.train_size=15000", "train.epochs=10"]
    cfg = resolve(load_config("configs/quick-fmnist.yaml", base + [
        "defenses=[{name: gaussian_noise, sigma: 0.25}, {name: cem}]"]))
    spec = cfg.identity()["defenses"][1]
    assert spec["name"] == "cem" and "noise_matched" not in spec and "lam" in spec
    # the folder name of this run in evidence/ (trained before the option existed), i.e. the same experiment
    assert cfg.digest()[:8] == "8061161f"
    on = resolve(load_config("configs/quick-fmnist.yaml", base + [
        "defenses=[{name: gaussian_noise, sigma: 0.25}, {name: cem, noise_matched: true}]"]))
    assert on.identity()["defenses"][1]["noise_matched"] is True and on.digest() != cfg.digest()
