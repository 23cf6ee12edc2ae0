"""`splitshield bench list`: the registered benchmarks."""
from __future__ import annotations

from splitshield.bench import BENCHMARKS


@BENCHMARKS.register("list")
def list_benchmarks(argv: list[str]) -> int:
    """List the registered benchmarks."""
    for name in BENCHMARKS.names():
        doc = (BENCHMARKS.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}".rstrip())
    return 0
