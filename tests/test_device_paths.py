"""CPU-side checks of the code paths a GPU run takes: reduced-precision autocast around the forward pass with the
losses in float32, a gradient-scaler state missing from a checkpoint, no host synchronisation in CEM's step, the
per-rank batch of data-parallel jobs, and the numerics each device resolves to."""
from __future__ import annotations

import math

import pytest
import torch

from splitshield.config import DataConfig, load_config
from splitshield.data import build_data
from splitshield.defenses import _mixture as mx
from splitshield.precision import resolve_numerics
from splitshield.train import train
from splitshield.train.loop import load_scaler_state


def test_numerics_per_device_and_setting() -> None:
    assert resolve_numerics("auto", "auto", "cuda").dtype == torch.float16  # AMP on CUDA, as before
    assert resolve_numerics("auto", "auto", "cuda").scaled and resolve_numerics("auto", "auto", "cuda").channels_last
    assert resolve_numerics("fp32", "auto", "cpu").dtype is None and not resolve_numerics("fp32", "auto", "cpu").scaled
    assert resolve_numerics("bf16", "contiguous", "cpu").dtype == torch.bfloat16
    assert not resolve_numerics("bf16", "contiguous", "cpu").channels_last
    assert resolve_numerics("fp16", "auto", "cpu").dtype is None  # no float16 autocast on the CPU path
    assert resolve_numerics("auto", "auto", "mps").dtype is None
    with pytest.raises(ValueError, match="valid: auto, fp32"):
        resolve_numerics("fp8", "auto", "cpu")


DEFENSES = [[{"name": "bido", "measure": "hsic", "form": "authors"}],
            [{"name": "bido", "measure": "coco", "form": "paper"}],
            [{"name": "ressfl", "measure": "ssim", "pretrain_epochs": 1, "pretrain_max_steps": 2, "channels": 8,
              "blocks": 1}],
            [{"name": "patrol", "pretrain_epochs": 0, "channels": 8, "blocks": 1}],
            [{"name": "siftfunnel", "channels": 4}],
            [{"name": "gaussian_noise", "sigma": 0.05}, {"name": "nopeek"}, {"name": "cem", "separation": 0}]]


@pytest.mark.parametrize("defenses", DEFENSES, ids=lambda d: "+".join(x["name"] for x in d))
def test_losses_are_float32_and_finite_under_reduced_precision_autocast(tiny_raw, tmp_path, monkeypatch,
                                                                         defenses) -> None:
    # bfloat16 stands in for the GPU's float16: the forward pass under autocast, every penalty outside it.
    from splitshield.defenses.stack import DefenseStack

    seen = []
    real = DefenseStack.penalties

    def spy(self, ctx):  # noqa: ANN001, ANN202
        seen.append((torch.is_autocast_enabled("cpu"), ctx.z.dtype, ctx.z_hat.dtype, ctx.logits.dtype))
        out = real(self, ctx)
        assert out is None or (out.dtype == torch.float32 and torch.isfinite(out))
        return out

    monkeypatch.setattr(DefenseStack, "penalties", spy)
    raw = dict(tiny_raw, defenses=defenses, train=dict(tiny_raw["train"], epochs=2, precision="bf16",
                                                       memory_format="channels_last"))
    result = train(load_config(raw), out=str(tmp_path / "r"))
    assert seen and all(s == (False, torch.float32, torch.float32, torch.float32) for s in seen)
    assert math.isfinite(result.test_accuracy)


def test_a_checkpoint_without_scaler_state_resumes_with_an_enabled_scaler(caplog) -> None:
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError):  # what resuming a CPU run with float16 AMP did before
        scaler.load_state_dict({})
    with caplog.at_level("WARNING"):
        load_scaler_state(scaler, {})
    assert "loss scale starts afresh" in caplog.text
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    load_scaler_state(disabled, {})  # nothing to do, nothing said


def test_cem_counts_members_without_bincount() -> None:
    comp = torch.tensor([3, 0, 3, 5, 5, 5])
    assert torch.equal(mx.member_counts(comp, 7, torch.float64),
                       torch.bincount(comp, minlength=7).double())


@pytest.mark.parametrize("mode,rows", [("global", 16), ("per_rank", 32)])
def test_ddp_batch_is_global_or_per_rank(mode: str, rows: int) -> None:
    cfg = DataConfig(name="synthetic", batch_size=32, ddp_batch=mode)  # type: ignore[arg-type]
    bundle = build_data(cfg, 0, rank=1, world=2)
    assert bundle.train_loader.batch_size == rows
