"""Benchmarks (`splitshield bench NAME ...`): commands that measure, never timed tests.

Each benchmark module registers ``BENCHMARKS.register("name")`` on a function ``(argv: list[str]) -> int`` that
parses its own arguments and prints its headline figure on the last line.
"""
from splitshield.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")

__all__ = ["BENCHMARKS"]
