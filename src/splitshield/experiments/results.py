"""``RunResult``: what one run produced, the one result type of the pipeline, the grid executors, stored grids and
reports (a run folder read back gives the same object the pipeline returned)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

from splitshield.config import ExperimentConfig
from splitshield.runs import AUDIT, EFFICIENCY, TRAIN, AttackKey, RunFolder

if TYPE_CHECKING:
    from splitshield.experiments.spec import Task


class Worst(NamedTuple):
    """The worst case over a list of attacks: the lowest MSE that counts, and the attack that scored it."""

    mse: float
    attack: str


@dataclass
class RunResult:
    run_dir: str
    train: dict[str, Any] = field(default_factory=dict)  # results/train.json ({} until training finished)
    attacks: dict[AttackKey, dict[str, Any]] = field(default_factory=dict)
    audit: Optional[dict[str, Any]] = None
    efficiency: dict[str, Any] = field(default_factory=dict)  # parameters, MACs (flop_counter) of edge and cloud
    config: Optional[ExperimentConfig] = None
    computed: list[str] = field(default_factory=list)  # the steps this call ran (the rest were reused)
    seconds: float = 0.0
    error: str = ""  # why the run failed, if it did
    task: Optional["Task"] = None  # the grid task it answers, in a grid

    @property
    def ok(self) -> bool:
        return bool(self.train) and not self.error

    @classmethod
    def from_folder(cls, folder: RunFolder, task: Optional["Task"] = None) -> "RunResult":
        """The stored results of a folder; one that has not finished training has ``ok`` False."""
        stored = folder.results()
        cfg = folder.config if folder.exists else None
        result = cls(folder.path, stored.get(TRAIN, {}), dict(folder.attacks()), stored.get(AUDIT),
                     stored.get(EFFICIENCY, {}), cfg, task=task)
        if not result.train:
            result.error = "not run yet"
        return result

    @property
    def accuracy(self) -> Optional[float]:
        """Test accuracy in percent, or None for an unfinished run."""
        return 100.0 * float(self.train["test_accuracy"]) if self.ok else None

    def attack(self, name: str, protocol: str) -> Optional[dict[str, Any]]:
        return self.attacks.get(AttackKey(name, protocol))

    def mse(self, name: str, protocol: str) -> Optional[float]:
        """The attack's MSE if it counts as evidence (learned, converged, victim above chance), else None."""
        record = self.attack(name, protocol)
        if not self.ok or record is None or not counts(record):
            return None
        return float(record["mse"])

    def worst_mse(self, protocol: str, attacks: Sequence[str]) -> Optional[Worst]:
        """The worst case for the defense over ``attacks`` under ``protocol``: the lowest MSE among those that count
        (``mse``), and which attack scored it (the first listed on a tie). None when none counts, or when one of
        them has no record yet: the minimum over the attacks run so far would flatter the defense. An attack that
        ran and does not count (did not learn, not converged, victim at chance) is left out, as in every table."""
        if not self.ok or any(self.attack(name, protocol) is None for name in attacks):
            return None
        scored = [(value, name) for name in attacks if (value := self.mse(name, protocol)) is not None]
        if not scored:
            return None
        value, name = min(scored, key=lambda pair: pair[0])  # min keeps the first of equal values
        return Worst(value, name)


def counts(record: dict[str, Any]) -> bool:
    """Whether an attack record counts as evidence (evaluation/attacking.py ``assess``); records stored before the
    flags existed are judged by their MSE against the mean-image baseline."""
    if "counts" in record:
        return bool(record["counts"])
    return float(record["mse"]) < float(record.get("baseline", {}).get("mse", float("inf")))


def status(record: Optional[dict[str, Any]]) -> str:
    """"ok", "did not learn", "not converged", "victim at chance", or "missing"."""
    if record is None:
        return "missing"
    return str(record.get("status", "ok" if counts(record) else "did not learn"))
