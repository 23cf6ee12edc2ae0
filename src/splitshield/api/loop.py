"""Defenses in your own training loop: ``splitshield.defense(...)`` wraps the same defense stack the CLI trains
with around a user's encoder, head, optimizer and loader, instead of replacing them (as Opacus wraps a model).

Four calls, in the order ``splitshield train`` makes them (train/loop.py), so a plain loop with them trains
exactly what the CLI trains for the same seed (tests/test_api.py checks it)::

    cem = splitshield.defense("cem", num_classes=10, epochs=EPOCHS, loader=train_loader, encoder=edge)
    for epoch in range(EPOCHS):
        for x, y in train_loader:
            z = cem(edge(x))                                 # what leaves the device (CEM's noise)
            logits = head(z)
            loss = F.cross_entropy(logits, y) + cem.penalty(x, y, logits)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            cem.step()                                       # helpers' updates (ResSFL's attacker); CEM: none
        cem.end_epoch()                                      # CEM's mixture fit on the epoch's features

In eval mode (``cem.eval()``) the call still adds the noise (the deployed device does) and ``penalty`` is 0.
Under torchrun, build it after ``init_process_group`` with each rank's loader: the batch is the global one
(loader batch x world size), CEM gathers every rank's features for its fit, as in the CLI path.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from splitshield import parallel
from splitshield.api.inputs import check_labels, images_and_labels, module_device
from splitshield.config import ComponentSpec
from splitshield.data.base import TensorImageDataset
from splitshield.defenses import DEFENSES, DefenseEnv, DefenseStack, StepContext
from splitshield.defenses.base import NoiseModel, Stage
from splitshield.errors import ConfigError, UsageError
from splitshield.resolve import resolve_defenses

Spec = Union[str, dict[str, Any]]


class LoopDefense(nn.Module):
    """A defense stack for a user's loop (see the module docstring). Build it with ``splitshield.defense``.

    ``stack`` is the ``DefenseStack`` itself (``stack.transform`` is what the device sends); ``env`` the
    ``DefenseEnv`` it was built for. Flat features (B, D) are handled as (B, D, 1, 1) inside and returned flat."""

    def __init__(self, stack: DefenseStack, env: DefenseEnv) -> None:
        super().__init__()
        self.stack = stack
        self.env = env
        self.epoch = 0
        self.steps = 0
        self.register_buffer("_where", torch.zeros(0), persistent=False)  # follows .to(device)
        self._step: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # (z_hat, pre-noise, z)
        self._ctx: Optional[StepContext] = None
        self._logs: dict[str, torch.Tensor] = {}
        self._checked = False
        self.stack.on_epoch_start(0)

    def get_extra_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "steps": self.steps}  # in state_dict(): a resumed loop continues its schedule

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.stack.on_epoch_start(self.epoch)

    def extra_repr(self) -> str:
        return f"defenses={self.stack.names()}, feature_shape={self.env.feature_shape}"

    @property
    def names(self) -> list[str]:
        return self.stack.names()

    def noise(self) -> NoiseModel:
        """The additive noise the stack puts on the features (what the audit's bound is for)."""
        return self.stack.noise_model()

    @property
    def logs(self) -> dict[str, float]:
        """The last finished step's logged scalars (each penalty, ResSFL's attacker MSE, ...); reading them
        synchronises with the device, so read them per epoch, not per step, on a GPU."""
        return {k: float(v) for k, v in self._logs.items()}

    def _as_map(self, z_hat: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.env.feature_shape)
        if z_hat.ndim == 2 and shape[1:] == (1, 1) and z_hat.shape[1] == shape[0]:
            return z_hat[:, :, None, None]
        if tuple(z_hat.shape[1:]) != shape:
            raise UsageError(f"defense: expected features of shape (B, {', '.join(map(str, shape))}) as the "
                             f"encoder gave when it was built, got {tuple(z_hat.shape)}")
        return z_hat

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        """The encoder's output z_hat -> what leaves the device (noise, dropout, top-k as configured)."""
        if z_hat.device != self._where.device:
            raise UsageError(f"defense: the features are on {z_hat.device} but the defense is on "
                             f"{self._where.device}; call defense.to({str(z_hat.device)!r})")
        flat = z_hat.ndim == 2
        z_map = self._as_map(z_hat)
        pre, z = self.stack.transform_parts(z_map)
        if self.training:
            self._step = (z_map, pre, z)
        return z.flatten(1) if flat else z

    def penalty(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, *, lr: float = 0.0,
                blocks: Optional[list[torch.Tensor]] = None, model: Optional[nn.Module] = None) -> torch.Tensor:
        """The defenses' loss terms for this step, already weighted (add it to the task loss); 0 in eval mode.

        ``x``: the step's images in [0, 1]; ``y``: labels (B,); ``logits``: the head's output on ``defense(z)``;
        ``lr``: the current learning rate (CEM's ``official`` variant scales by it); ``blocks``: the encoder's
        intermediate outputs for BiDO (else it uses the features alone)."""
        if not self.training:
            return logits.new_zeros(())
        if self._step is None:
            raise UsageError("defense.penalty: call defense(z_hat) on this step's features first (in train mode)")
        z_hat, pre, z = self._step
        if not self._checked:
            check_labels(y, self.env.num_classes, "defense.penalty")
            if len(x) != len(z_hat) or len(y) != len(z_hat) or len(logits) != len(z_hat):
                raise UsageError(f"defense.penalty: x, y and logits must have the batch's {len(z_hat)} rows, got "
                                 f"{len(x)}, {len(y)} and {len(logits)}")
            self._checked = True
        ctx = StepContext(x=x, y=y, z_hat=z_hat.float(), z=z.float(), logits=logits.float(), model=model,  # type: ignore[arg-type]
                          epoch=self.epoch, step=self.steps, lr=lr, z_pre_noise=pre.float(),
                          blocks=None if blocks is None else [b.float() for b in blocks])
        self.stack.observe(ctx)
        total = self.stack.penalties(ctx)
        self._ctx = ctx
        return total if total is not None else logits.new_zeros(())

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, unless a defense of the stack replaces the task loss."""
        return self.stack.task_loss(logits.float(), y)

    def step(self) -> None:
        """After ``optimizer.step()``: the defenses' own helper updates (ResSFL trains its simulated attacker)."""
        if self._ctx is not None:
            self.stack.update(self._ctx)
            self._logs = self._ctx.logs
        self.steps += 1
        self._step = self._ctx = None

    def end_epoch(self) -> None:
        """At the end of every epoch: CEM fits its mixture to the epoch's features (used from the next epoch)."""
        self.stack.on_epoch_end(self.epoch)
        self.epoch += 1
        self.stack.on_epoch_start(self.epoch)

    def setup(self, encoder: nn.Module, loader: DataLoader) -> None:
        """Once before training, for defenses with a warm-up of their own (ResSFL pre-trains its simulated
        attacker on the initial encoder); a no-op for the others."""
        images, labels = images_and_labels(loader, "defense.setup")
        bundle = _SetupData(TensorImageDataset(images, labels if labels is not None else torch.zeros(len(images))),
                            loader)
        self.stack.setup(_Holder(encoder, self.env.feature_shape), bundle, module_device(encoder))


class _Holder(nn.Module):
    """A user's encoder where the stack expects ``model.edge`` (and ``model.feature_shape``)."""

    def __init__(self, edge: nn.Module, feature_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.edge = edge
        self.feature_shape = feature_shape


def feature_shape_of(encoder: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one encoder output, from a zero image in eval mode on the encoder's device (modes restored)."""
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(1, *input_shape, device=module_device(encoder)))
    except RuntimeError as exc:
        raise UsageError(f"defense: the encoder fails on a {tuple(input_shape)} image "
                         f"({str(exc).splitlines()[0][:120]}); pass input_shape= as (C, H, W)") from None
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"defense: the encoder must return one feature tensor, got {type(out).__name__}")
    return tuple(out.shape[1:])


class _SetupData:
    def __init__(self, train: TensorImageDataset, train_loader: DataLoader) -> None:
        self.train, self.train_loader = train, train_loader


def _specs(spec: Union[Spec, Sequence[Spec]], params: dict[str, Any]) -> list[ComponentSpec]:
    if isinstance(spec, (str, dict)):
        items: list[Spec] = [spec]
    else:
        items = list(spec)
    if params and len(items) != 1:
        raise ConfigError("defense: keyword hyper-parameters go with one defense; for a stack give each its own "
                          "dict, e.g. [{'name': 'gaussian_noise', 'sigma': 0.05}, 'cem']")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(ComponentSpec(item, dict(params)))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append(ComponentSpec(item["name"], {**{k: v for k, v in item.items() if k != "name"}, **params}))
        else:
            raise ConfigError(f"defense: expected a defense name or {{'name': ..., <hyper-parameters>}}, got {item!r}"
                              f"; valid names: {', '.join(DEFENSES.names())}")
    return out


def defense(spec: Union[Spec, Sequence[Spec]], *, num_classes: int, epochs: int,
            loader: Optional[DataLoader] = None, encoder: Optional[nn.Module] = None,
            train_size: Optional[int] = None, batch_size: Optional[int] = None,
            input_shape: Optional[Sequence[int]] = None, feature_shape: Optional[Sequence[int]] = None,
            seed: int = 0, **params: Any) -> LoopDefense:
    """A defense (or a stack of them) for your own training loop, e.g. ``defense("cem", num_classes=10,
    epochs=20, loader=train_loader, encoder=edge, lam=0.2)``.

    Args:
        spec: a registered name (``splitshield.list_defenses()``), a dict ``{"name": ..., <hyper-parameters>}``,
            or a list of them (a stack, listed architecture -> transform -> noise -> objective).
        num_classes: classes of the task (CEM fits its mixture per class).
        epochs: the training length (CEM's strength and warm-up are defined over it).
        loader: the training loader; gives ``train_size`` (its dataset's length), ``batch_size`` (its batch x the
            world size under torchrun) and ``input_shape`` (its first item) unless given.
        encoder: the edge module, images in [0, 1] -> features (B, C, H, W) or (B, D); gives ``feature_shape``
            (one zero image through it in eval mode) and the device the defense is put on.
        seed: the run's seed (CEM's first k-means initialisation; helper networks' initialisation).
        **params: the defense's hyper-parameters (its ``Config``; unknown keys are errors that list the valid
            ones), for a single ``spec``.
    Returns: a ``LoopDefense`` on the encoder's device.
    """
    specs = resolve_defenses(_specs(spec, params), "defense")
    for s in specs:
        if DEFENSES.get(s.name).stage == Stage.ARCHITECTURE:
            raise ConfigError(f"defense {s.name!r} changes the model's architecture (the edge/cloud layers), so it "
                              "cannot wrap an encoder of your own; train it on a built-in model with a config "
                              "(splitshield train), or use a defense that acts on the features")
    if loader is not None:
        train_size = len(loader.dataset) if train_size is None else train_size  # type: ignore[arg-type]
        if batch_size is None and loader.batch_size is not None:
            batch_size = loader.batch_size * parallel.world_size()
        if input_shape is None:
            first = loader.dataset[0]  # one item, not a batch: the loader's generator is left untouched
            image = first[0] if isinstance(first, (tuple, list)) else first
            input_shape = tuple(image.shape)
    missing = [n for n, v in (("train_size", train_size), ("batch_size", batch_size), ("input_shape", input_shape))
               if v is None]
    if missing:
        raise UsageError(f"defense: pass loader= (your training DataLoader) or {', '.join(missing)}")
    if feature_shape is None:
        if encoder is None:
            raise UsageError("defense: pass encoder= (your edge module) or feature_shape=")
        feature_shape = feature_shape_of(encoder, tuple(input_shape))  # type: ignore[arg-type]
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) == 1:
        shape = (shape[0], 1, 1)  # flat features: handled as D channels of 1 x 1
    if len(shape) != 3 or len(tuple(input_shape)) != 3:  # type: ignore[arg-type]
        raise UsageError(f"defense: expected images (C, H, W) and features (C, H, W) or (D,), got input_shape "
                         f"{tuple(input_shape)} and feature_shape {tuple(feature_shape)}")  # type: ignore[arg-type]
    env = DefenseEnv(num_classes=int(num_classes), input_shape=tuple(input_shape),  # type: ignore[arg-type]
                     feature_shape=shape, train_size=int(train_size), epochs=int(epochs),  # type: ignore[arg-type]
                     batch_size=int(batch_size), seed=seed)  # type: ignore[arg-type]
    stack, _ = DefenseStack.build(specs, env, _Holder(nn.Identity(), shape))
    wrapped = LoopDefense(stack, env)
    return wrapped.to(module_device(encoder)) if encoder is not None else wrapped
