#!/usr/bin/env bash
# GPU check, for a machine with CUDA (nothing in CI needs one): every defense stack of the table for one epoch of
# the paper-cifar10 preset on synthetic CIFAR-shaped data (no download) with AMP, an interrupted run resumed, the
# decoder, GAN, rMLE and kNN attacks and the audit, torchrun with one process, and a host-synchronisation scan of
# one training step. Prints images/s, peak memory and the syncs seen; the last line is PASS or FAIL (exit 1).
#   scripts/gpu-check.sh [--steps N]      (from the repository root, after `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" -m splitshield -q --results-db none bench gpu-check --device cuda "$@"
