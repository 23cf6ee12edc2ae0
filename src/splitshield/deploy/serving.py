"""How the server runs the cloud: the serving knobs of one process (``ServingConfig``), all reported by
GET /v1/model. The replica factory that rebuilds a server from them is in replicas.py."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from splitshield.errors import UserError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class ServingConfig:
    """Batching, backpressure and the cloud runtime of one server process (all reported by GET /v1/model)."""

    backend: str = "auto"  # auto (onnxruntime when available, else torch) | onnx | torch
    threads: int = 0  # intra-op threads of the cloud forward; 0 = auto (see resolved)
    # Extra wait for rows once requests queue up (a lone request never waits). 0 by measurement: requests that
    # arrive during a forward already form the next batch, and waiting only idled the CPU (docs/benchmarks.md).
    batch_window_ms: float = 0.0
    max_batch_rows: int = 64  # rows in one forward (a larger single request runs alone, never split)
    max_queue: int = 64  # requests waiting for a forward; beyond it 503 + Retry-After at once
    retry_after_s: int = 1  # the Retry-After a 503 sends (HTTP counts in whole seconds)

    def check(self) -> None:
        from splitshield.deploy.cloud import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise UserError(f"--batch-window-ms must be 0..1000, got {self.batch_window_ms:g}")
        for name in ("max_batch_rows", "max_queue", "retry_after_s"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise UserError(f"--threads must be 0 (auto) or positive, got {self.threads}")

    def resolved(self, workers: int = 1) -> "ServingConfig":
        """Threads fixed for this machine: one core per worker is left to its event loop (HTTP and JSON cost more
        CPU per request than the batched forward), the rest is split among the workers' forwards."""
        workers = max(1, workers)
        threads = self.threads or max(1, (available_cores() - workers) // workers)
        return ServingConfig(**{**asdict(self), "threads": threads})
