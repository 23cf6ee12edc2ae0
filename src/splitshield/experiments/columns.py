"""What a table or curve column measures: accuracy, one attack's MSE under one protocol, or the worst case over
several attacks (per run, the lowest MSE among those that count: ``RunResult.worst_mse``), and a run's value in it.
Shared by the tables (tables.py), the sweep curves (sweep.py) and the frontier (frontier.py)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

from splitshield.experiments.results import RunResult, status

PROTOCOL_NAMES = {"train": "Train", "infer": "Infer"}
ATTACK_NAMES = {"decoder": "Dec.", "gan": "GAN", "rmle": "rMLE", "knn": "kNN"}


@dataclass
class Column:
    key: str  # "accuracy", "attack:<name>:<protocol>", "worst:<protocol>", "edge_params", "edge_macs"
    title: str
    fmt: str  # format spec of the mean
    attacks: tuple[str, ...] = ()  # a worst column: the attacks it takes the worst case over

    @property
    def attack(self) -> Optional[tuple[str, str]]:
        if not self.key.startswith("attack:"):
            return None
        _, name, protocol = self.key.split(":")
        return name, protocol

    @property
    def worst(self) -> Optional[str]:
        """The protocol of a worst-case column, else None."""
        return self.key.split(":", 1)[1] if self.key.startswith("worst:") else None


WORST = "worst"  # in place of an attack name: the worst case over the grid's attacks


def worst_column(attacks: Sequence[str], protocol: str) -> Column:
    return Column(f"worst:{protocol}", f"Worst MSE {PROTOCOL_NAMES.get(protocol, protocol)}", ".4f", tuple(attacks))


def measure_column(name: str, protocol: str, attacks: Sequence[str]) -> Column:
    """The MSE column of one attack, or of the worst case over ``attacks`` when ``name`` is WORST."""
    if name == WORST:
        return worst_column(attacks, protocol)
    return Column(f"attack:{name}:{protocol}", f"{ATTACK_NAMES.get(name, name)} MSE {PROTOCOL_NAMES[protocol]}",
                  ".4f")


def measures(attacks: Sequence[str]) -> list[str]:
    """The attacks, then WORST when there are two or more (with one, the worst case is that attack)."""
    return list(attacks) + ([WORST] if len(attacks) > 1 else [])


def by_attack(sources: Sequence[str]) -> str:
    """Which attacks gave a worst-case cell's values: "GAN", or "Dec. 2, GAN 1" (seeds each) when they differ."""
    counts = Counter(sources).most_common()
    if len(counts) == 1:
        return ATTACK_NAMES.get(counts[0][0], counts[0][0])
    return ", ".join(f"{ATTACK_NAMES.get(name, name)} {n}" for name, n in counts)


def columns_for(attacks: Sequence[str], protocols: Sequence[str], efficiency: bool) -> list[Column]:
    cols = [Column("accuracy", "Acc. (%)", ".2f")]
    for name in measures(attacks):  # each attack under each protocol, then the worst case under each
        cols += [measure_column(name, protocol, attacks) for protocol in protocols]
    if efficiency:
        cols += [Column("edge_params", "Edge params", ",.0f"), Column("edge_macs", "Edge MMACs", ".2f")]
    return cols


def value_of(result: RunResult, col: Column) -> tuple[Optional[float], str]:
    """A run's value in a column and why there is none: "" (not run yet) or the attack's status."""
    if not result.ok:
        return None, ""
    if col.key == "accuracy":
        return result.accuracy, ""
    if col.worst is not None:
        worst = result.worst_mse(col.worst, col.attacks)
        if worst is not None:
            return worst.mse, ""
        records = [result.attack(name, col.worst) for name in col.attacks]
        return None, "" if None in records else " / ".join(sorted({status(r) for r in records}))
    if col.key in ("edge_params", "edge_macs"):
        eff = result.efficiency
        return (None, "") if col.key not in eff else (float(eff[col.key]) / (1e6 if col.key == "edge_macs" else 1),
                                                       "")
    name, protocol = col.attack  # type: ignore[misc]
    value = result.mse(name, protocol)
    return value, "" if value is not None else status(result.attack(name, protocol)).replace("missing", "")
