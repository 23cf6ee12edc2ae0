"""Data-parallel training under torchrun (gloo, 2 CPU processes) against the single-process loop.

N processes with per-rank batch B/N must train the model one process trains with batch B: same batches (rows r::N),
same augmentation, gradients averaged, batch norm over the global batch. Tolerances:
- float64 runs (torch.set_default_dtype) isolate the algorithm from float32 rounding: max |DDP - single| <= 1e-8
  without defenses (measured 8e-11) and <= 1e-5 with CEM (lambda 16; CEM computes in float32, measured 2e-7).
- float32 (the torchrun CLI test, no augmentation): <= 1e-5 after 2 steps (measured 3e-7). Longer float32 runs of
  this tiny net are chaotic: one process at 2 threads instead of 1 already differs from itself by 2e-4 after 3 steps,
  and with augmentation a 2e-7 difference after step 1 moved the step-2 gradient by 3% (docs/scale.md).
Between ranks the models, the CEM mixtures and the simulated attackers are identical, bit for bit.
"""
from __future__ import annotations

import copy
import faulthandler
import os
from types import SimpleNamespace
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from splitshield.config import load_config
from splitshield.train.checkpoint import CHECKPOINT, load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))


def scenario(name: str) -> tuple[dict, bool]:
    """(raw config, float64) of each end-to-end scenario; the tiny config of conftest.TINY with changes."""
    from conftest import TINY

    raw = copy.deepcopy(TINY)
    raw["train"].update(epochs=2, milestones=[2])
    if name == "plain":  # whole epochs (the last one partial: 250 = 7 x 32 + 26), augmentation on
        raw["data"]["train_size"] = 250
        raw["train"]["max_steps_per_epoch"] = None
        return raw, True
    if name == "cem":  # the fit after epoch 1, then 2 steps with the CEM term; no noise (ranks draw their own)
        raw["defenses"] = [{"name": "cem", "lam": 16, "add_noise": False, "separation": 0}]
        raw["train"]["max_steps_per_epoch"] = 2
        return raw, True
    # resume: per-rank noise streams and the CEM mixture, interrupted in epoch 3 then resumed
    raw["defenses"] = [{"name": "gaussian_noise", "sigma": 0.1}, {"name": "cem", "lam": 1}]
    raw["train"].update(epochs=3, max_steps_per_epoch=2)
    return raw, False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def states(session) -> dict:  # noqa: ANN001 - a loop.TrainingSession
    return {"model": session.model.state_dict(), "defenses": session.defenses.state_dict()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()), default=0.0)


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- what each of the two processes runs (spawned: fresh interpreters, one thread each) ---
def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a rank stuck in a collective: its stack, then it ends
    sys.path.insert(0, HERE)
    import conftest  # noqa: F401  (first: importing it points the results database elsewhere)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo", SPLITSHIELD_RESULTS_DB=f"{tmp}/db.sqlite")
    torch.set_num_threads(1)
    import splitshield.train.loop as loop
    from splitshield import parallel
    from splitshield.resultsdb import ResultsDB

    sessions = []
    real_setup = loop.setup_training
    loop.setup_training = lambda *a, **k: sessions.append(real_setup(*a, **k)) or sessions[-1]  # keep each rank's
    out: dict = {"world": None}
    for name in ("plain", "cem", "resume"):
        raw, f64 = scenario(name)
        torch.set_default_dtype(torch.float64 if f64 else torch.float32)
        cfg = load_config(raw)
        loop.train(cfg, out=f"{tmp}/{name}", sink=ResultsDB(f"{tmp}/db.sqlite"))
        out[name] = states(sessions[-1])
        out["world"] = parallel.world_size()
        if name == "resume":  # the same run, stopped at the start of epoch 3 on every rank, then resumed
            real_epoch, calls = loop.train_epoch, {"n": 0}

            def dies_in_epoch_3(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise KeyboardInterrupt
                return real_epoch(*args, **kwargs)

            loop.train_epoch = dies_in_epoch_3
            try:
                loop.train(cfg, out=f"{tmp}/cut")
            except KeyboardInterrupt:
                pass
            loop.train_epoch = real_epoch
            parallel.barrier()  # rank 0 may still be writing the last checkpoint when another rank gets here
            out["cut_epoch"] = load_checkpoint(f"{tmp}/cut/{CHECKPOINT}")["epoch"]
            loop.train(cfg, resume_dir=f"{tmp}/cut")
            out["resumed"] = states(sessions[-1])
    torch.set_default_dtype(torch.float32)
    out.update(_units())
    torch.save(out, f"{tmp}/rank{rank}.pt")


def cem_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """37 captured features (D = 8) over 4 classes: an odd count, so the 2-rank sampler pads one row."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(37, 8, generator=g), torch.randint(0, 4, (37,), generator=g)


def cem_defense():  # noqa: ANN201
    from splitshield.defenses.base import DefenseEnv
    from splitshield.defenses.cem import CEM, CEMConfig

    env = DefenseEnv(num_classes=4, input_shape=(1, 16, 16), feature_shape=(2, 2, 2), train_size=37, epochs=2,
                     batch_size=8, seed=3)
    return CEM(CEMConfig(lam=16.0, kmeans_iters=4), env)


def fit_epochs(cem, feats: torch.Tensor, labels: torch.Tensor, batch: int) -> list[dict]:  # noqa: ANN001
    """Two epochs of capture (in steps of ``batch`` rows) and fit; the mixture after each."""
    fits = []
    for epoch in range(2):
        cem.on_epoch_start(epoch)
        for s in range(0, len(feats), batch):
            cem.observe(SimpleNamespace(features=feats[s:s + batch], y=labels[s:s + batch]))
        cem.on_epoch_end(epoch)
        fits.append({k: v.clone() for k, v in cem.state_dict().items()})
    return fits


def batch_step_inputs() -> dict:
    """A float64 global batch of 12 for the per-batch CEM updates, with a fitted mixture to update."""
    from splitshield.defenses import _mixture as mx

    g = torch.Generator().manual_seed(9)
    z, y = torch.rand(12, 6, generator=g, dtype=torch.float64), torch.arange(12) % 3
    feats, labels = torch.rand(60, 6, generator=g, dtype=torch.float64), torch.arange(60) % 3
    fit = mx.fit_mixture(feats, labels, 3, 2, "diagonal", 3, generator=g)
    full = mx.fit_mixture(feats, labels, 3, 2, "full", 3, init_means=fit.means)
    return {"z": z, "y": y, "fit": fit, "full": full}


def cem_batch_steps(rows: slice, reduce) -> dict:  # noqa: ANN001
    """Loss, updated statistics and input gradient of the paper and official steps on ``rows`` of the batch."""
    from splitshield.defenses import _mixture as mx

    b = batch_step_inputs()
    fit, out = b["fit"], {}
    for variant in ("paper", "full", "official"):  # "full": the paper step with full covariances
        z = b["z"][rows].clone().requires_grad_(True)
        y = b["y"][rows]
        comp = mx.assign_batch(z, y, fit.means)
        means = fit.means.flatten(0, 1)
        if variant == "paper":
            loss, w, cov = mx.paper_step(z, comp, means, fit.weights.flatten(), fit.cov.flatten(0, 1), 60, 0.01,
                                         "diagonal", reduce=reduce)
            out.update(paper_w=w, paper_cov=cov)
        elif variant == "full":
            full = b["full"]
            loss, w, cov = mx.paper_step(z, comp, means, full.weights.flatten(), full.cov.flatten(0, 1), 60, 0.01,
                                         "full", reduce=reduce)
            out.update(full_cov=cov)
        else:
            loss = mx.official_step(z, comp, means, fit.counts.flatten(), fit.cov.mean(-1).flatten(), 3, 0.01,
                                    0.01, 0.125, reduce=reduce)
        loss.backward()
        out[f"{variant}_loss"], out[f"{variant}_grad"] = loss.detach(), z.grad
    return out


def attacker_step(rows: slice, sync: bool) -> dict:
    """Gradients of one simulated-attacker step on ``rows`` of a fixed global batch of 8."""
    from splitshield.defenses._attacker import SimulatedAttacker
    from splitshield.train import distributed

    attacker = SimulatedAttacker((2, 4, 4), (1, 16, 16), blocks=1, channels=8, lr=1e-3, seed=0)
    if sync:
        distributed.sync_batchnorm(attacker, torch.device("cpu"))
    g = torch.Generator().manual_seed(11)
    z, x = torch.rand(8, 2, 4, 4, generator=g), torch.rand(8, 1, 16, 16, generator=g)
    attacker.step(z[rows], x[rows])
    return {name: p.grad.clone() for name, p in attacker.decoder.named_parameters()}


def _units() -> dict:
    """Unit checks run inside the process group: CEM's gathered fit, its per-batch updates, the attacker."""
    from splitshield import parallel

    rank, world = parallel.rank(), parallel.world_size()
    feats, labels = cem_inputs()
    total = -(-len(feats) // world) * world
    padded = torch.cat([feats, feats[:total - len(feats)]]), torch.cat([labels, labels[:total - len(labels)]])
    rows = slice(rank, None, world)
    return {"cem_fits": fit_epochs(cem_defense(), padded[0][rows], padded[1][rows], batch=4),
            "cem_steps": cem_batch_steps(rows, parallel.global_sum),
            "attacker_grads": attacker_step(rows, sync=True)}


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """Both ranks' dumps (one spawn of 2 gloo processes runs every scenario) and the single-process runs."""
    from splitshield.train import loop

    tmp = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_worker, args=(2, free_port(), tmp), nprocs=2, join=True)
    ranks = [torch.load(f"{tmp}/rank{r}.pt", weights_only=False) for r in range(2)]
    single = {}
    real_setup, sessions = loop.setup_training, []
    loop.setup_training = lambda *a, **k: sessions.append(real_setup(*a, **k)) or sessions[-1]
    try:
        for name in ("plain", "cem"):
            raw, f64 = scenario(name)
            torch.set_default_dtype(torch.float64 if f64 else torch.float32)
            loop.train(load_config(raw), out=f"{tmp}/single-{name}")
            single[name] = states(sessions[-1])
    finally:
        loop.setup_training = real_setup
        torch.set_default_dtype(torch.float32)
    return {"tmp": tmp, "ranks": ranks, "single": single}


def test_two_processes_train_the_single_process_model_with_the_same_global_batch(ddp) -> None:
    r0, r1 = ddp["ranks"]
    assert r0["world"] == 2
    for part in ("model", "defenses"):
        assert_equal(r0["plain"][part], r1["plain"][part])
    diff = max_diff(r0["plain"]["model"], ddp["single"]["plain"]["model"])
    print(f"\nplain, float64: max |DDP - single| over model parameters and buffers = {diff:.1e}")  # for docs/scale.md
    assert diff <= 1e-8
    # batch norm statistics too: synchronised batch norm saw the global batch
    assert any(k.endswith("running_var") for k in r0["plain"]["model"])


def test_cem_mixture_is_identical_on_both_ranks_and_matches_the_single_process_run(ddp) -> None:
    r0, r1 = ddp["ranks"]
    assert_equal(r0["cem"]["defenses"], r1["cem"]["defenses"])
    assert_equal(r0["cem"]["model"], r1["cem"]["model"])
    assert int(r0["cem"]["defenses"]["members.0.fits"]) == 2
    mixture = max_diff(r0["cem"]["defenses"], ddp["single"]["cem"]["defenses"])
    model = max_diff(r0["cem"]["model"], ddp["single"]["cem"]["model"])
    print(f"\ncem, float64: max |DDP - single| mixture {mixture:.1e}, model {model:.1e}")
    assert mixture <= 1e-5 and model <= 1e-5


def test_cem_fit_gathers_all_ranks_in_order_and_drops_the_sampler_padding(ddp) -> None:
    feats, labels = cem_inputs()
    single = fit_epochs(cem_defense(), feats, labels, batch=8)
    for rank in ddp["ranks"]:
        for got, want in zip(rank["cem_fits"], single):
            assert_equal(got, want)  # bit for bit: the same rows in the same order as one process


def test_cem_batch_statistics_are_summed_over_ranks_with_the_single_process_gradient(ddp) -> None:
    whole = cem_batch_steps(slice(None), None)
    for r, rank in enumerate(ddp["ranks"]):
        got = rank["cem_steps"]
        for key in ("paper_loss", "paper_w", "paper_cov", "full_loss", "full_cov", "official_loss"):
            torch.testing.assert_close(got[key], whole[key], rtol=0, atol=1e-12)
        for variant in ("paper", "full", "official"):  # this rank's rows; DDP divides the gradient by the 2 ranks
            torch.testing.assert_close(got[f"{variant}_grad"] / 2, whole[f"{variant}_grad"][r::2], rtol=0, atol=1e-12)


def test_simulated_attacker_steps_on_the_global_batch(ddp) -> None:
    r0, r1 = ddp["ranks"]
    assert_equal(r0["attacker_grads"], r1["attacker_grads"])
    whole = attacker_step(slice(None), sync=False)
    diff = max_diff(r0["attacker_grads"], whole)
    print(f"\nattacker, float32: max |DDP - single| over decoder gradients = {diff:.1e}")
    assert diff <= 1e-6


def test_resume_under_ddp_continues_to_the_uninterrupted_result(ddp) -> None:
    r0, r1 = ddp["ranks"]
    assert r0["cut_epoch"] == 2
    for rank in (r0, r1):
        for part in ("model", "defenses"):
            assert_equal(rank["resumed"][part], rank["resume"][part])
    full = load_checkpoint(os.path.join(ddp["tmp"], "resume", CHECKPOINT))
    resumed = load_checkpoint(os.path.join(ddp["tmp"], "cut", CHECKPOINT))
    assert_equal(full["model"], resumed["model"])
    assert len(full["rng_ranks"]) == 2  # each rank's random streams (the noise differs per rank)
    assert not torch.equal(full["rng_ranks"][0]["torch"], full["rng_ranks"][1]["torch"])


def test_only_rank_zero_writes_the_run_folder(ddp) -> None:
    from splitshield import resultsdb
    from splitshield.runs import read_metrics

    run = os.path.join(ddp["tmp"], "plain")
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]  # one line per epoch, not one per rank
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "config.yaml", "metrics.jsonl", "results"]
    rows = resultsdb.query(os.path.join(ddp["tmp"], "db.sqlite"), run_dir=os.path.abspath(run))
    assert [r["kind"] for r in rows] == ["train"]


def test_torchrun_cli_trains_with_ddp(tiny_raw, tmp_path) -> None:
    from splitshield.runs import read_metrics
    from splitshield.train import train

    # float32 and no augmentation (covered in float64 above): 2 steps stay well inside the tolerance here
    raw = dict(tiny_raw, data=dict(tiny_raw["data"], augment=False),
               train=dict(tiny_raw["train"], max_steps_per_epoch=2))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "splitshield", "train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(str(tmp_path / "ddp" / CHECKPOINT))
    assert len(state["rng_ranks"]) == 2 and len(read_metrics(str(tmp_path / "ddp"))) == 1
    single = train(load_config(raw), out=str(tmp_path / "single"))
    diff = max_diff(state["model"], load_checkpoint(os.path.join(single.run_dir, CHECKPOINT))["model"])
    print(f"\ntorchrun CLI, float32: max |DDP - single| = {diff:.1e}")
    assert diff <= 1e-5
