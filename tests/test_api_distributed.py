"""The API's defense in a user's own data-parallel loop (2 gloo processes, each with a DistributedSampler shard) fits
CEM's mixture exactly as one process does on the whole batch: the CLI's DDP path, reached through
``splitshield.defense``."""
from __future__ import annotations

import faulthandler
import os
import socket
import sys

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
N, BATCH = 37, 8  # an odd count: the sampler pads one row, which the fit must drop


def _data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(5)
    return torch.utils.data.TensorDataset(torch.rand(N, 1, 4, 4, generator=g), torch.randint(0, 4, (N,), generator=g))


def _encoder() -> torch.nn.Module:
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))


def _fit(loader: torch.utils.data.DataLoader) -> dict:
    """Two epochs of the user's loop (no optimiser: the features stay fixed) and CEM's mixture after them."""
    import splitshield

    encoder = _encoder()
    cem = splitshield.defense("cem", num_classes=4, epochs=2, loader=loader, encoder=encoder, seed=3,
                              kmeans_iters=4)
    penalties = []
    for _ in range(2):
        for x, y in loader:
            z = cem(encoder(x))
            penalties.append(float(cem.penalty(x, y, torch.zeros(len(x), 4)).detach()))
            cem.step()
        cem.end_epoch()
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in cem.state_dict().items()}
    return {"state": state, "penalties": penalties, "batch": cem.env.batch_size, "train_size": cem.env.train_size}


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    faulthandler.dump_traceback_later(120, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    data = _data()
    sampler = torch.utils.data.distributed.DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH // world, sampler=sampler)
    out = _fit(loader)
    torch.distributed.destroy_process_group()
    torch.save(out, f"{tmp}/rank{rank}.pt")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cem_in_a_users_ddp_loop_fits_the_single_process_mixture(tmp_path) -> None:
    sys.path.insert(0, HERE)
    mp.spawn(_worker, args=(2, _port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _fit(torch.utils.data.DataLoader(_data(), batch_size=BATCH))
    assert ranks[0]["batch"] == BATCH and ranks[0]["train_size"] == N  # the job's batch and data, not a rank's
    assert int(single["state"]["stack.members.1.fits"]) == 2
    for rank in ranks:
        for key, want in single["state"].items():
            same = torch.equal(rank["state"][key], want) if torch.is_tensor(want) else rank["state"][key] == want
            assert same, key  # the same rows in the same order as one process
    assert any(p != 0 for p in ranks[0]["penalties"])  # epoch 2 applied the term, with statistics over ranks
